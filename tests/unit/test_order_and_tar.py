"""Pure logic of the iterable datasets: the seeded epoch order and its split across consumers
(s3torch._order), and the streaming tar parser against archives made by Python's tarfile
(s3torch._tar): byte-exact members in every format, truncation and corruption named."""

from __future__ import annotations

import io
import itertools
import random
import tarfile
from typing import Dict, List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3torch import _order, _tar
from s3torch._tar import TarShardError

# --- order ------------------------------------------------------------------------------------


def test_epoch_order_depends_on_seed_and_epoch_alone() -> None:
    random.seed(1)
    a = _order.epoch_order(100, 5, 3, True)
    random.seed(2)  # global random state plays no part
    assert _order.epoch_order(100, 5, 3, True) == a
    assert sorted(a) == list(range(100)) and a != list(range(100))
    assert _order.epoch_order(100, 5, 4, True) != a
    assert _order.epoch_order(100, 6, 3, True) != a
    assert list(_order.epoch_order(5, 5, 3, False)) == [0, 1, 2, 3, 4]
    assert list(_order.epoch_order(0, 5, 3, True)) == []
    # pinned: the order must not change between releases (or resumed runs would diverge)
    assert _order.epoch_order(10, 0, 0, True) == [2, 7, 3, 6, 4, 0, 1, 9, 8, 5]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 60), consumers=st.integers(1, 8), seed=st.integers(-5, 5), start=st.integers(0, 10))
def test_consumers_split_the_epoch_and_round_robin_gives_it_back(n: int, consumers: int, seed: int, start: int) -> None:
    order = _order.epoch_order(n, seed, 1, True)
    streams = [list(_order.consumer_positions(order, k, consumers)) for k in range(consumers)]
    merged = [s[i] for i in range(max(map(len, streams), default=0)) for s in streams if i < len(s)]
    assert merged == list(order)
    for k in range(consumers):  # resuming by index = the same stream past its first `start` items
        assert list(_order.consumer_positions(order, k, consumers, start)) == streams[k][start:]


def test_bad_seed_epoch_and_states() -> None:
    for bad in ("1", 1.0, None, True):
        with pytest.raises(ValueError, match="seed"):
            _order.check_seed(bad)
        with pytest.raises(ValueError, match="epoch"):
            _order.check_epoch(bad)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        _order.check_epoch(-1)
    good = _order.make_state(
        kind="objects", source="s3://b/p/", count=3, shuffle=True, seed=1, epoch=0, consumer=0, consumers=1, position=2
    )
    expected = dict(kind="objects", source="s3://b/p/", shuffle=True, seed=1)
    assert _order.check_state(good, expected) == good
    with pytest.raises(ValueError, match=r"source \(prefix or object list\) is 's3://b/p/' in the state, 's3://b/q/'"):
        _order.check_state(good, dict(expected, source="s3://b/q/"))
    with pytest.raises(ValueError, match="position must be an int"):
        _order.check_state(dict(good, position="2"), expected)
    with pytest.raises(ValueError, match="must be a dict"):
        _order.check_state([1], expected)
    with pytest.raises(ValueError, match="had 3 items when it was saved, 4 now"):
        _order.check_count(good, 4, "s3://b/p/")


# --- tar --------------------------------------------------------------------------------------


def _make_tar(files: List[Tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT, extra: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        if extra:
            d = tarfile.TarInfo("somedir")
            d.type = tarfile.DIRTYPE
            tf.addfile(d)
            link = tarfile.TarInfo("somedir/link.txt")
            link.type = tarfile.SYMTYPE
            link.linkname = "x" * 150  # a long link name: a GNU K or a pax linkpath header
            tf.addfile(link)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _chunks(data: bytes, size: int) -> List[memoryview]:
    mv = memoryview(data)
    return [mv[i : i + size] for i in range(0, len(data), size)] or [mv[:0]]


def _files(rng: random.Random) -> List[Tuple[str, bytes]]:
    out = []
    for i in range(7):
        key = f"{i:06d}" if i != 3 else "deep/" + "d" * 120 + f"/{i:06d}"  # > 100 chars: long name
        for ext in ("jpg", "cls", "seg.png")[: 1 + i % 3]:
            out.append((f"{key}.{ext}", rng.randbytes(rng.choice([0, 1, 511, 512, 513, 5000]))))
    out.append(("README", b"not a sample"))
    return out


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("chunk", [1, 7, 512, 1000, 1 << 20])
def test_members_and_samples_are_byte_exact(fmt: int, chunk: int) -> None:
    rng = random.Random(fmt * 10 + chunk)
    files = _files(rng)
    if fmt == tarfile.USTAR_FORMAT:  # ustar stores long names in its prefix field (<= 155 + 100)
        files = [(n.replace("d" * 120, "d" * 60), d) for n, d in files]
    data = _make_tar(files, fmt, extra=fmt != tarfile.USTAR_FORMAT)
    got = [(n, d) for n, d, _ in _tar.members(_chunks(data, chunk), "s3://b/s.tar", size=len(data))]
    assert got == files
    samples = list(_tar.samples(_chunks(data, chunk), "s3://b/s.tar", size=len(data)))
    expect: Dict[str, Dict[str, object]] = {}
    for name, blob in files:
        parts = _tar.split_name(name)
        if parts:
            expect.setdefault(parts[0], {"__key__": parts[0], "__url__": "s3://b/s.tar"})[parts[1]] = blob
    assert [s for s, _ in samples] == list(expect.values())
    # each sample's end offset resumes the rest of the shard exactly
    for i, (_, after) in enumerate(samples):
        rest = list(_tar.samples(_chunks(data[after:], chunk), "s3://b/s.tar", offset=after, size=len(data)))
        assert [s for s, _ in rest] == [s for s, _ in samples[i + 1 :]]


def test_truncated_and_corrupt_shards_name_the_shard_and_member() -> None:
    files = [("000001.jpg", b"a" * 1000), ("000001.cls", b"1"), ("000002.jpg", b"b" * 700)]
    data = _make_tar(files, tarfile.GNU_FORMAT)
    end_of_members = 512 + 1024 + 512 + 512 + 512 + 1024
    cases = {
        100: ("inside a header", ""),
        512 + 300: ("inside the member", "000001.jpg"),
        1536 + 512 + 512 + 512 + 200: ("inside the member", "000002.jpg"),
        end_of_members: ("without the end-of-archive block", "000002.jpg"),
        end_of_members + 100: ("inside a header", "000002.jpg"),
    }
    for cut, (reason, member) in cases.items():
        with pytest.raises(TarShardError, match=reason) as ei:
            list(_tar.samples([memoryview(data[:cut])], "s3://b/t.tar"))
        assert ei.value.shard == "s3://b/t.tar" and ei.value.member == member, cut
        assert "s3://b/t.tar" in str(ei.value)
    # a flipped byte in the second header: checksum mismatch, naming the member before it
    bad = bytearray(data)
    bad[1536 + 5] ^= 0x01
    with pytest.raises(TarShardError, match="checksum") as ei:
        list(_tar.samples([memoryview(bytes(bad))], "s3://b/t.tar"))
    assert ei.value.member == "000001.jpg" and ei.value.offset == 1536 + 512
    # a size that runs past the shard's end (known from the listing) is refused before reading
    with pytest.raises(TarShardError, match="runs past the shard's end"):
        list(_tar.members([memoryview(data)], "s3://b/t.tar", size=1000))
    # not a tar at all
    with pytest.raises(TarShardError, match="checksum"):
        list(_tar.members([memoryview(b"x" * 2048)], "s3://b/t.tar"))
    # two members for one field of a sample
    dup = _make_tar([("a.jpg", b"1"), ("a.jpg", b"2")])
    with pytest.raises(TarShardError, match="two members for 'jpg'"):
        list(_tar.samples([memoryview(dup)], "s3://b/d.tar"))


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + 1  # a record's length counts its own digits, in bytes
    while len(str(n)) + len(body) != n:
        n += 1
    return str(n).encode() + body


def _header(name: str, size: int, type_: bytes = tarfile.REGTYPE) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, type_
    return info.tobuf(tarfile.USTAR_FORMAT)


@pytest.mark.parametrize("value", ["-2048", "-1", "+5", " 5", "5_0", "0x10", "\u0665", ""])
def test_a_pax_size_that_is_not_decimal_digits_is_refused(value: str) -> None:
    """A pax ``size`` record, as a shard's writer controls it. Before, it went through
    int(): "-2048" moved the reader backwards, and a dataset epoch over the shard yielded
    its samples again and again, never ending."""
    record = _pax_record("size", value)
    pax = _header("PaxHeader/b.txt", len(record), tarfile.XHDTYPE) + record + b"\0" * (-len(record) % 512)
    shard = _header("a.txt", 0) + pax + _header("b.txt", 0) + b"\0" * 1024
    with pytest.raises(TarShardError, match="invalid pax size") as ei:
        list(itertools.islice(_tar.samples([memoryview(shard)], "s3://b/p.tar", size=len(shard)), 10))
    assert ei.value.member == "b.txt"


def test_split_name() -> None:
    assert _tar.split_name("a/b/000123.seg.png") == ("a/b/000123", "seg.png")
    assert _tar.split_name("000123.jpg") == ("000123", "jpg")
    for none in ("README", ".hidden", "dir.d/file", "x."):
        assert _tar.split_name(none) is None, none
