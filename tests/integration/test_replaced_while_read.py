"""An object replaced while it is read. A DCP load or a safetensors load whose file is
overwritten between its first GET (probe, header) and the GETs of the bytes it located fails
naming the file (_versions.py), instead of filling tensors from the other version. A reader
(S3Reader) holds every GET after its first to the first's version (If-Match), and the core's
whole-object read holds its second GET to its first's: a whole read starts over on the new
version, a reader that served bytes fails with S3ObjectChangedError. Both returned a mix of
the two versions before."""

from __future__ import annotations

import io
import os
from typing import Dict

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3torch import S3ObjectChangedError, S3ReaderConstructor
from s3torch._servers import REGION
from s3torch.dcp import CheckpointCorruptError, S3StorageReader, S3StorageWriter, _parallel_load
from s3torch.safetensors import FileChangedError, safe_open, save
from tests.conftest import BUCKET, make_client

MiB = 1 << 20
PART = 8 * MiB  # S3ClientConfig's default part_size: a whole-object read's probe

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def model(seed: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"big": torch.randn(500, 1000, generator=g), "small": torch.randn(10, generator=g)}


@pytest.mark.parametrize("staged", [False, True])
def test_a_checkpoint_file_replaced_after_the_probe(seaweed, prefix: str, monkeypatch, staged: bool) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    cfg = client.s3client_config
    for name, seed in (("ck", 1), ("other", 2)):  # the same layout, other values
        w = S3StorageWriter(REGION, f"s3://{BUCKET}/{prefix}{name}", s3client_config=cfg, endpoint=seaweed.endpoint)
        dcp.save(model(seed), storage_writer=w)
    replacement = client.get_object(BUCKET, f"{prefix}other/__0_0.distcp").read()
    real_plan = _parallel_load.ParallelLoader._plan_tensor

    def plan_after_a_writer(self, it, planner):  # type: ignore[no-untyped-def]
        # The probe (records located, save marks checked) is done: now the file is replaced.
        client.put(BUCKET, f"{prefix}ck/__0_0.distcp", replacement)
        return real_plan(self, it, planner)

    monkeypatch.setattr(_parallel_load.ParallelLoader, "_plan_tensor", plan_after_a_writer)
    reader = S3StorageReader(REGION, f"s3://{BUCKET}/{prefix}ck", s3client_config=cfg, endpoint=seaweed.endpoint)
    reader._force_staging = staged
    out = {k: torch.zeros_like(v) for k, v in model(0).items()}
    with pytest.raises(CheckpointException) as ei:
        dcp.load(out, storage_reader=reader)
    err = ei.value.failures[0][0]
    assert isinstance(err, CheckpointCorruptError), err
    assert f"s3://{BUCKET}/{prefix}ck/__0_0.distcp item big" in str(err)
    assert "was replaced while this load read it" in str(err)


@pytest.mark.parametrize("cast", [None, torch.bfloat16])  # direct GETs / through the staging ring
def test_a_safetensors_file_replaced_after_its_header(seaweed, prefix: str, monkeypatch, cast) -> None:  # type: ignore[no-untyped-def]
    """The replacement's header is longer (its metadata): every offset the first header gave
    now points elsewhere, and safetensors files carry no checksum of their own."""
    client = make_client(seaweed)
    key = f"{prefix}m.safetensors"
    client.put(BUCKET, key, save(model(1)))
    f = safe_open(f"s3://{BUCKET}/{key}", "pt", dtype=cast, client=client, verify_checksums=False)
    client.put(BUCKET, key, save(model(2), {"note": "x" * 100}))
    with pytest.raises(FileChangedError, match=rf"s3://{BUCKET}/{key} tensor '\w+': the object was replaced"):
        f.get_tensors()
    # Opened afresh, it loads the new version whole.
    got = safe_open(f"s3://{BUCKET}/{key}", "pt", client=client).get_tensors()
    assert all(torch.equal(got[k], v) for k, v in model(2).items())


def versions(size: int) -> "tuple[bytes, bytes]":
    """Two versions of an object, of one size, every byte different."""
    a = os.urandom(size)
    return a, bytes(x ^ 0xFF for x in a)


def test_a_whole_read_starts_over_when_the_object_is_replaced_after_its_probe(seaweed, proxy, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """The whole-object read (get_bytes, a reader's read()) is a probe of the first part and a
    GET of the rest: the object replaced between them made the result the probe's 8 MiB of
    one version and the rest of the other."""
    key = f"{prefix}whole.bin"
    old, new = versions(PART + 3 * MiB)
    direct = make_client(seaweed)
    direct.put(BUCKET, key, old)
    replace = proxy.replace_before_get(direct, BUCKET, key, new, range=rf"^bytes={PART}-")
    client = make_client(proxy)
    got = client.get_object(BUCKET, key).read()
    assert replace.injected == 1
    assert got == new  # all of the new version: read again from its probe
    assert proxy.requests_to(key, "GET") == 4  # probe, rest refused (412), probe, rest


def test_the_pieces_of_one_get_are_of_one_version(seaweed, proxy, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """One GET larger than a part is several pieces, all started at once (get.h): the object
    replaced as one of them goes to the server, the pieces answered before it and after it are
    of different versions, raised as S3ObjectChangedError; where every piece was answered after
    it, the bytes are all the new version's. Never a mix (test_split_gets.py makes the
    different answers deterministic)."""
    key = f"{prefix}parts.bin"
    old, new = versions(3 * PART)
    direct = make_client(seaweed)
    direct.put(BUCKET, key, old)
    replace = proxy.replace_before_get(direct, BUCKET, key, new, range=rf"^bytes={PART}-")
    client = make_client(proxy)
    buf = bytearray(3 * PART)
    try:
        got = client.get_into(BUCKET, key, buf, 0, 3 * PART)  # a range: its pieces, no probe of ours
    except S3ObjectChangedError as e:
        assert "replaced while it was being read" in str(e)
    else:
        assert got == 3 * PART and bytes(buf) == new
    assert replace.injected == 1
    assert len([t for t in proxy.targets("GET") if key in t]) == 3  # the three pieces, once each


@pytest.mark.parametrize(
    "constructor",
    [S3ReaderConstructor.sequential(), S3ReaderConstructor.range_based(), S3ReaderConstructor.range_based(0)],
    ids=["sequential", "range_based", "range_based_unbuffered"],
)
def test_a_reader_fails_on_an_object_replaced_between_its_reads(seaweed, prefix: str, constructor) -> None:  # type: ignore[no-untyped-def]
    """Two reads of one reader, each a GET of its own (a sequential reader's large readinto
    goes straight into the caller's memory; a range-based reader's reads past its buffer):
    the object replaced between them. Before, the second read returned the new version's
    bytes at the old version's offsets."""
    client = make_client(seaweed)
    key = f"{prefix}r.bin"
    old, new = versions(12 * MiB)
    client.put(BUCKET, key, old)
    reader = client.get_object(BUCKET, key, reader_constructor=constructor)
    first = bytearray(2 * MiB)
    assert reader.readinto(first) == len(first)
    assert bytes(first) == old[: 2 * MiB]
    client.put(BUCKET, key, new)
    reader.seek(9 * MiB)  # past a range-based reader's 8 MiB buffer
    with pytest.raises(S3ObjectChangedError, match=rf"GetObject s3://{BUCKET}/{key}: .*the object was replaced") as ei:
        reader.read(2 * MiB)
    assert ei.value.http_status == 412 and ei.value.key == key
    # A new reader reads the new version.
    assert client.get_object(BUCKET, key, reader_constructor=constructor).read() == new


def test_the_dcp_optimized_reader_holds_its_groups_to_one_version(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    from s3torch.s3reader.dcp_optimized import ItemRange

    client = make_client(seaweed)
    key = f"{prefix}d.distcp"
    old, new = versions(4 * MiB)
    client.put(BUCKET, key, old)
    constructor = S3ReaderConstructor.dcp_optimized(max_gap_size=0)
    constructor.set_item_ranges_by_file({key: [ItemRange(0, MiB), ItemRange(3 * MiB, 4 * MiB)]})
    reader = client.get_object(BUCKET, key, reader_constructor=constructor)
    assert reader.read(MiB) == old[:MiB]
    client.put(BUCKET, key, new)
    reader.seek(3 * MiB)
    with pytest.raises(S3ObjectChangedError):
        reader.read(MiB)


@pytest.mark.parametrize("listed,now", [(3 * MiB, 10 * MiB + 5), (3 * MiB, 2 * MiB + 5), (0, 3 * MiB + 5)])
@pytest.mark.parametrize(
    "constructor",
    [S3ReaderConstructor.sequential(), S3ReaderConstructor.range_based()],
    ids=["sequential", "range_based"],
)
@pytest.mark.parametrize("how", ["read", "readinto", "seek_end"])
def test_a_reader_given_a_stale_listing_reads_the_object_as_it_is(
    seaweed, prefix: str, constructor, listed: int, now: int, how: str
) -> None:  # type: ignore[no-untyped-def]
    """A listing older than the object (a dataset listed at the start of an epoch): its size
    no longer the object's. Before, a sequential read() returned the new version cut at the
    listed size, and a range-based one that as well (grown) or failed on a range past the end;
    an object listed empty was read as empty by both, whatever it held by then."""
    client = make_client(seaweed)
    key = f"{prefix}s.bin"
    client.put(BUCKET, key, os.urandom(listed))
    (info,) = [o for page in client.list_objects(BUCKET, key) for o in page.object_info]
    assert info.size == listed
    new = os.urandom(now)
    client.put(BUCKET, key, new)
    reader = client.get_object(BUCKET, key, object_info=info, reader_constructor=constructor)
    if how == "read":
        assert reader.read() == new
    elif how == "readinto":
        buf = bytearray(len(new) + 100)
        got = 0
        while n := reader.readinto(memoryview(buf)[got:]):
            got += n
        assert buf[:got] == new
    else:  # before any read, a size costs no request: the listing's, unless that says empty
        assert reader.seek(0, io.SEEK_END) == (listed or len(new))
        reader.seek(0)
        assert reader.read() == new
    assert reader.seek(0, io.SEEK_END) == len(new)


def test_a_prefetched_item_is_all_of_one_version(seaweed, proxy, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """A dataset's prefetch window fetches an object of unknown size as a probe and a rest: the
    object replaced between them is fetched again, whole, from its new version."""
    from s3torch import S3IterableDataset
    from s3torch._prefetch import INITIAL_PROBE_BYTES

    key = f"{prefix}item.bin"
    old, new = versions(3 * MiB)
    direct = make_client(seaweed)
    direct.put(BUCKET, key, old)
    replace = proxy.replace_before_get(direct, BUCKET, key, new, range=rf"^bytes={INITIAL_PROBE_BYTES}-")
    ds = S3IterableDataset.from_objects(
        [f"s3://{BUCKET}/{key}"],
        region=REGION,
        endpoint=proxy.endpoint,
        s3client_config=make_client(proxy).s3client_config,
    )
    (item,) = [r.read() for r in ds]
    assert replace.injected == 1
    assert item == new


@pytest.mark.parametrize("listed,grown", [(MiB, True), (MiB, False), (0, True)])
def test_items_listed_before_their_objects_were_replaced_are_read_as_they_are(
    seaweed, prefix: str, listed: int, grown: bool
) -> None:  # type: ignore[no-untyped-def]
    """The listing's sizes are stale when the items are reached: before, an item grown since
    failed ("destination buffer holds ..."), one shrunk failed "expected N bytes, got M", one
    listed empty was read as empty."""
    from s3torch import S3MapDataset

    client = make_client(seaweed)
    keys = [f"{prefix}m/{i}.bin" for i in range(3)]
    for k in keys:
        client.put(BUCKET, k, os.urandom(listed))
    ds = S3MapDataset.from_prefix(
        f"s3://{BUCKET}/{prefix}m/", region=REGION, endpoint=seaweed.endpoint, s3client_config=client.s3client_config
    )
    assert len(ds) == 3  # listed
    new = {k: os.urandom((9 if grown else 0) * MiB + 1000 * (i + 1)) for i, k in enumerate(keys)}
    for k, v in new.items():
        client.put(BUCKET, k, v)
    got = ds.__getitems__([0, 1, 2])  # through the prefetch window
    assert [r.read() for r in got] == [new[k] for k in keys]
    assert ds[1].read() == new[keys[1]]  # one reader (get_object with the listing's info)


def test_a_safetensors_header_read_in_two_gets_is_of_one_version(seaweed, proxy, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """A header longer than the first GET's guess is read to its end by a second GET: of the
    first one's version. Before, a file replaced between them gave a header spliced from both."""
    from s3torch.safetensors._source import HEAD_GUESS

    key = f"{prefix}long.safetensors"
    direct = make_client(seaweed)
    meta = {"note": "x" * (HEAD_GUESS + 1000)}
    direct.put(BUCKET, key, save(model(1), meta))
    replacement = save(model(2), {"note": "y" * (HEAD_GUESS + 1000)})
    replace = proxy.replace_before_get(direct, BUCKET, key, replacement, range=rf"^bytes={HEAD_GUESS}-")
    with pytest.raises(
        FileChangedError, match=rf"s3://{BUCKET}/{key}: the object was replaced while this load read it"
    ):
        safe_open(f"s3://{BUCKET}/{key}", "pt", client=make_client(proxy))
    assert replace.injected == 1


def test_if_match_takes_only_an_etag(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """What the GETs hold a version with comes from a server's answer or a listing: it must never
    add a header line of its own to a request. A weak ETag (no If-Match can match one) holds
    nothing; a bare one gets its quotes."""
    from s3torch import S3InvalidArgumentError

    client = make_client(seaweed)
    native = client._get_native()
    key = f"{prefix}e.bin"
    client.put(BUCKET, key, b"abc")
    buf = bytearray(3)
    with pytest.raises(S3InvalidArgumentError, match="if_match is not an ETag"):
        native.get_into(BUCKET, key, buf, 0, 3, '"x"\r\nX-Injected: 1')
    assert native.get_into(BUCKET, key, buf, 0, 3, 'W/"not-its-etag"') == 3
    etag = client.head_object(BUCKET, key).etag
    assert native.get_into(BUCKET, key, buf, 0, 3, etag.strip('"')) == 3 and bytes(buf) == b"abc"
    with pytest.raises(S3ObjectChangedError, match="HTTP 412"):
        native.get_into(BUCKET, key, buf, 0, 3, '"0123456789abcdef0123456789abcdef"')
    with pytest.raises(S3ObjectChangedError):  # a whole read held to a version it is not
        native.get_bytes(BUCKET, key, 0, None, None, '"0123456789abcdef0123456789abcdef"')


def test_any_if_match_is_held_or_refused_before_a_request(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """Hostile ETags (a state file, a listing, a server's answer can carry any text): every one
    is refused before a request (not printable ASCII) or sent as one If-Match value, whose
    answer is the object (its own ETag, bare or quoted; none or a weak one holds nothing) or a
    412.
    Never a header of its own, never another error."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from s3torch import S3InvalidArgumentError

    client = make_client(seaweed)
    native = client._get_native()
    key = f"{prefix}h.bin"
    client.put(BUCKET, key, b"abc")
    own = client.head_object(BUCKET, key).etag
    printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)

    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        st.one_of(
            st.text(max_size=40),
            printable,
            printable.map(lambda s: f'"{s}"'),
            printable.map(lambda s: f"W/{s}"),
            st.sampled_from([own, own.strip('"'), '"', '""', "W/", own + "\r\nX-Injected: 1"]),
        )
    )
    def check(etag: str) -> None:
        buf = bytearray(3)
        if any(not 0x21 <= ord(c) <= 0x7E for c in etag):
            with pytest.raises(S3InvalidArgumentError, match="if_match is not an ETag"):
                native.get_into(BUCKET, key, buf, 0, 3, etag)
            return
        try:
            assert native.get_into(BUCKET, key, buf, 0, 3, etag) == 3 and bytes(buf) == b"abc"
        except S3ObjectChangedError as e:
            assert e.http_status == 412
            assert etag not in (own, own.strip('"'), "") and not etag.startswith("W/")
            return
        assert etag in (own, own.strip('"'), "") or etag.startswith("W/")  # held; none or a weak one holds nothing

    check()
