"""The sequential reader's read-ahead segments (s3reader/readahead.py): an object larger than
``WHOLE_MAX``, or of a size nobody told the reader, is read in bounded memory. The segment
sizes are shrunk here so that small objects take every path: segments, streams and their
read-ahead, direct GETs into the caller's memory, eviction. Before, a sequential reader held
the whole object once anything but one whole read() was asked of it: a ``torch.load`` of a
checkpoint took the checkpoint twice over."""

from __future__ import annotations

import io
from typing import Iterator, List, Tuple

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3torch import S3Checkpoint, S3ClientConfig, S3PermissionError, S3ReaderConstructor
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch.s3reader import readahead
from s3torch.s3reader.sequential import SequentialS3Reader
from tests.conftest import BUCKET, make_client
from tests.faults.proxy import Fault, FaultProxy
from tests.integration.test_readers_writers import same_as_bytesio

KiB = 1024
SMALL = dict(
    SEGMENT=64 * KiB + 3,
    FIRST_SEGMENT=5000,
    READ_AHEAD_MAX=256 * KiB,
    HELD_MAX=448 * KiB,
    DIRECT_MIN=100_000,
    SEQUENTIAL_GAP=1000,
)
SIZE = 3 * 1024 * KiB + 11


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in SMALL.items():
        monkeypatch.setattr(readahead, name, value)
    monkeypatch.setattr(readahead, "WHOLE_MAX", 0)  # objects of known size are segmented too
    yield


def held(reader: SequentialS3Reader) -> int:
    return 0 if reader._ahead is None else reader._ahead.held_bytes


ops = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.one_of(st.none(), st.integers(-1, 300 * KiB))),
        st.tuples(st.just("readinto"), st.integers(0, 400 * KiB)),
        st.tuples(st.just("peek"), st.integers(0, 20_000)),
        st.tuples(st.just("seek"), st.integers(0, SIZE + 100)),
        st.tuples(st.just("back"), st.integers(0, 200 * KiB)),
        st.tuples(st.just("stream"), st.integers(1, 20_000), st.integers(1, 40)),
    ),
    min_size=1,
    max_size=10,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=ops, listed=st.booleans())
def test_segmented_reads_match_bytesio_in_bounded_memory(seaweed, small_segments, script, listed: bool) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    key = "readahead/obj"
    data = _object(client, key)
    info = next(o for page in client.list_objects(BUCKET, key) for o in page.object_info) if listed else None
    oracle = io.BytesIO(data)
    reader = client.get_object(BUCKET, key, object_info=info)
    whole = False
    for op in script:
        if reader._ahead is None and reader._data is None and oracle.tell() == 0:
            # A first read of everything returns the object as one bytes, then served from.
            whole = op[0] == "read" and (op[1] is None or op[1] < 0)
        if same_as_bytesio(reader, oracle, op):
            pass
        elif op[0] == "seek":
            assert reader.seek(op[1]) == oracle.seek(op[1])
        elif op[0] == "back":
            to = max(0, oracle.tell() - op[1])
            assert reader.seek(to) == oracle.seek(to)
        else:  # a run of small sequential reads: a stream, with read-ahead
            for _ in range(op[2]):
                same_as_bytesio(reader, oracle, ("read", op[1]))
        assert reader.tell() == oracle.tell()
        assert whole or reader._data is None  # never the whole object besides
        assert held(reader) <= SMALL["HELD_MAX"]
    reader.close()
    assert held(reader) == 0


_made: dict = {}


def _object(client, key: str) -> bytes:  # type: ignore[no-untyped-def]
    if key not in _made:
        _made[key] = np.random.default_rng(5).integers(0, 256, SIZE, dtype=np.uint8).tobytes()
        client.put(BUCKET, key, _made[key])
    return _made[key]


def checkpoint() -> dict:
    g = torch.Generator().manual_seed(3)
    sizes = [10, 300_000, 7, 50, 900_000, 1, 20_000, 2_000_000, 3, 60_000] * 2
    return {f"t{i}": torch.randn(n, generator=g) for i, n in enumerate(sizes)}


def test_torch_load_reads_each_byte_once_in_bounded_memory(seaweed, small_segments, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """``torch.load`` through ``S3Checkpoint.reader``: probes of the zip directory at the end,
    the pickle at the start, then each record's header and storage in order. Each byte comes
    over the wire about once, the reader never holds the file, and the large storages are
    GETs straight into them."""
    sd = checkpoint()
    buf = io.BytesIO()
    torch.save(sd, buf)
    data = buf.getvalue()
    key = f"{prefix}model.pt"
    make_client(seaweed).put(BUCKET, key, data)
    readers: List[SequentialS3Reader] = []
    most: List[Tuple[int, int]] = []
    seen = readahead.ReadAhead.readinto

    def watched(self, dest, pos):  # type: ignore[no-untyped-def]
        got = seen(self, dest, pos)
        most.append((self.held_bytes, len(dest)))
        return got

    with FaultProxy.in_front_of(seaweed.endpoint) as px:
        ck = S3Checkpoint(
            REGION,
            endpoint=px.endpoint,
            s3client_config=S3ClientConfig(
                force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY
            ),
        )
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(readahead.ReadAhead, "readinto", watched)
            with ck.reader(f"s3://{BUCKET}/{key}") as reader:
                readers.append(reader)
                loaded = torch.load(reader, weights_only=True)
                assert reader._data is None
        relayed, gets = px.relayed, px.requests_to(key, "GET")
    assert loaded.keys() == sd.keys() and all(torch.equal(loaded[k], sd[k]) for k in sd)
    assert max(h for h, _ in most) <= SMALL["HELD_MAX"]
    assert any(n >= SMALL["DIRECT_MIN"] for _, n in most)  # the large storages
    assert relayed < 1.05 * len(data) + gets * 2048, (relayed, len(data), gets)  # headers aside
    assert held(readers[0]) == 0  # closed


@pytest.mark.parametrize("constructor", [None, S3ReaderConstructor.sequential()], ids=["default", "sequential"])
def test_a_whole_read_of_an_object_of_known_size_is_still_one_buffer(seaweed, prefix: str, constructor) -> None:  # type: ignore[no-untyped-def]
    """Objects of known size up to WHOLE_MAX (a dataset's items, given their listing) are read
    whole by their first read, as before: one GET, parts in parallel, then served from memory."""
    client = make_client(seaweed)
    key = f"{prefix}item.bin"
    data = np.random.default_rng(1).integers(0, 256, 300 * KiB, dtype=np.uint8).tobytes()
    client.put(BUCKET, key, data)
    info = next(o for page in client.list_objects(BUCKET, key) for o in page.object_info)
    reader = client.get_object(BUCKET, key, object_info=info, reader_constructor=constructor)
    assert reader.read(10) == data[:10]
    assert reader._ahead is None and reader._data is not None and len(reader._data) == len(data)
    reader.seek(-5, io.SEEK_END)
    assert reader.read() == data[-5:]


def test_the_docs_give_the_read_ahead_sizes_the_code_uses() -> None:
    """docs/checkpoints.md and docs/datasets.md quote readahead.py's sizes; they stay its."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "docs"
    mib = readahead.MiB
    checkpoints = " ".join((root / "checkpoints.md").read_text().split())
    assert f"({readahead.SEGMENT // mib} MiB, doubling up to {readahead.READ_AHEAD_MAX // mib} MiB)" in checkpoints
    assert f"At most {readahead.HELD_MAX // mib} MiB of the file is held" in checkpoints
    assert f"known size up to {readahead.WHOLE_MAX // mib} MiB" in (root / "datasets.md").read_text()


@pytest.mark.parametrize("listed,now", [(600 * KiB, 100 * KiB), (100 * KiB, 600 * KiB), (600 * KiB, 900 * KiB)])
@pytest.mark.parametrize("how", ["read", "readinto"])
def test_a_stale_listing_on_either_side_of_whole_max(
    seaweed, prefix: str, monkeypatch, listed: int, now: int, how: str
) -> None:  # type: ignore[no-untyped-def]
    """A listing's size decides whether the reader holds the object whole; the first GET
    finds the object replaced since, of a size on the other side of WHOLE_MAX (or the same
    side): the read is made again as that size calls for, and returns the object as it is."""
    monkeypatch.setattr(readahead, "WHOLE_MAX", 256 * KiB)
    monkeypatch.setattr(readahead, "FIRST_SEGMENT", 64 * KiB)
    client = make_client(seaweed)
    key = f"{prefix}stale.bin"
    client.put(BUCKET, key, bytes(listed))
    info = next(o for page in client.list_objects(BUCKET, key) for o in page.object_info)
    new = np.random.default_rng(2).integers(0, 256, now, dtype=np.uint8).tobytes()
    client.put(BUCKET, key, new)
    reader = client.get_object(BUCKET, key, object_info=info)
    if how == "read":
        assert reader.read(10) == new[:10]
        assert reader.read() == new[10:]
    else:
        buf = bytearray(now + 10)
        got = reader.readinto(memoryview(buf)[:1000])
        while n := reader.readinto(memoryview(buf)[got:]):
            got += n
        assert buf[:got] == new
    assert reader.seek(0, io.SEEK_END) == now


def test_a_failed_segment_fails_the_read_that_needs_it_and_is_fetched_again(seaweed, small_segments, proxy) -> None:  # type: ignore[no-untyped-def]
    """One GET of a stream's segments refused (403, not retried): the read that needs it
    raises the typed error, and reading again at the same position makes a GET of its own
    (the failed segment is not kept); the rest of the object reads as it is."""
    key = "readahead/obj"
    data = _object(make_client(seaweed), key)
    fault = proxy.add(Fault("error", method="GET", status=403, code="AccessDenied", range="^bytes=[1-9]", times=1))
    reader = make_client(proxy).get_object(BUCKET, key)
    out, failures = bytearray(), 0
    while len(out) < len(data):
        try:
            out += reader.read(10_000)
        except S3PermissionError:
            failures += 1
    assert failures == 1 and fault.injected == 1
    assert out == data and reader.read(1) == b""
