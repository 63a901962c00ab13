"""Readers against io.BytesIO (property tests), writers, and their bad inputs, on both servers."""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3torch import S3Client, S3ObjectChangedError, S3ReaderConstructor, _crt
from s3torch.s3reader import ItemRange
from tests.conftest import BUCKET, make_client

SIZES = [0, 1, 1000, 70_001, 3 * 1024 * 1024 + 11]
CONSTRUCTORS = {
    "sequential": S3ReaderConstructor.sequential(),
    "default": S3ReaderConstructor.default(),
    "range_8MiB": S3ReaderConstructor.range_based(),
    "range_4KiB": S3ReaderConstructor.range_based(buffer_size=4096),
    "range_unbuffered": S3ReaderConstructor.range_based(buffer_size=0),
}


@pytest.fixture(scope="module")
def objects(request: pytest.FixtureRequest) -> dict:
    """One set of objects per server, uploaded once."""
    return {}


def _ensure_objects(client: S3Client, server, cache: dict) -> dict:  # type: ignore[no-untyped-def]
    key = server.endpoint
    if key not in cache:
        out = {}
        for n in SIZES:
            data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
            k = f"readers/obj-{n}"
            client.put(BUCKET, k, data)
            out[n] = (k, data)
        cache[key] = out
    return cache[key]


ops = st.lists(
    st.one_of(
        st.tuples(st.just("read"), st.one_of(st.none(), st.integers(-1, 5 * 1024 * 1024))),
        st.tuples(st.just("readinto"), st.integers(0, 5 * 1024 * 1024)),
        st.tuples(st.just("seek"), st.integers(0, 4 * 1024 * 1024), st.sampled_from([0, 1, 2])),
        st.tuples(st.just("tell")),
        st.tuples(st.just("readline"), st.integers(-1, 70_000)),
        st.tuples(st.just("peek"), st.integers(0, 20_000)),
    ),
    min_size=1,
    max_size=8,
)


def same_as_bytesio(reader, oracle: io.BytesIO, op: tuple) -> bool:  # type: ignore[no-untyped-def]
    """Make the read ``op`` of both (read, readinto, readline, peek) and assert they agree;
    False for an op that is not a read."""
    if op[0] == "read":
        assert reader.read(op[1]) == oracle.read(op[1])
    elif op[0] == "readinto":
        a, b = bytearray(op[1]), bytearray(op[1])
        assert reader.readinto(a) == oracle.readinto(b)
        assert a == b
    elif op[0] == "readline":
        assert reader.readline(op[1]) == oracle.readline(op[1])
    elif op[0] == "peek":  # as many bytes as it likes, at least one before the end; no move
        got = reader.peek(op[1])
        data, at = oracle.getvalue(), oracle.tell()
        assert got == data[at : at + len(got)] and (len(got) > 0 or at >= len(data))
    else:
        return False
    return True


@pytest.mark.parametrize("kind", list(CONSTRUCTORS))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.sampled_from(SIZES), script=ops)
def test_reader_matches_bytesio(client: S3Client, server, objects: dict, kind: str, size: int, script) -> None:  # type: ignore[no-untyped-def]
    key, data = _ensure_objects(client, server, objects)[size]
    oracle = io.BytesIO(data)
    reader = client.get_object(BUCKET, key, reader_constructor=CONSTRUCTORS[kind])
    assert reader.bucket == BUCKET and reader.key == key
    for op in script:
        if same_as_bytesio(reader, oracle, op):
            pass
        elif op[0] == "seek":
            off, whence = op[1], op[2]
            if whence == 2:
                off = -min(off, len(data))  # SEEK_END with a non-positive offset
            elif whence == 1:
                off = off - oracle.tell() // 2
                if oracle.tell() + off < 0:
                    off = -oracle.tell()
            assert reader.seek(off, whence) == oracle.seek(off, whence)
        assert reader.tell() == oracle.tell()
    reader.close()
    assert reader.closed


@pytest.mark.parametrize("kind", ["sequential", "range_4KiB", "range_unbuffered"])
def test_lines_are_read_a_line_at_a_time(client: S3Client, prefix: str, kind: str) -> None:
    """Iterating over a reader's lines (and readline) looks ahead with peek(): a read per
    line. Before, io's readline read one byte per call, a GET per byte when unbuffered."""
    lines = [b"x" * (i % 300) + b"\n" for i in range(2000)] + [b"no newline at the end"]
    key = f"{prefix}lines.txt"
    client.put(BUCKET, key, b"".join(lines))
    reader = client.get_object(BUCKET, key, reader_constructor=CONSTRUCTORS[kind])
    reads = 0
    read = reader._read

    def counted(size):  # type: ignore[no-untyped-def]
        nonlocal reads
        reads += 1
        return read(size)

    reader._read = counted  # type: ignore[method-assign]
    assert list(reader) == lines
    assert reads <= 3 * len(lines)  # a peek and a read per line, not a read per byte


def test_large_reads_into_fresh_memory_are_exact(seaweed) -> None:  # type: ignore[no-untyped-def]
    """A whole-object read into new memory of 4 MiB or more (a bytes object, the sequential
    reader's buffer): the waiting thread makes its pages resident (prefault.h,
    populate_while) while the GET's parts land in them. Every path that does so, against the
    bytes uploaded."""
    client = make_client(seaweed)
    n = 5 * 8 * 1024 * 1024 + 12_345  # six part GETs, the last one short
    data = np.random.default_rng(7).integers(0, 256, n, dtype=np.uint8).tobytes()
    key = "readers/fresh-large"
    client.put(BUCKET, key, data)
    native = client._get_native()
    assert native.get_bytes(BUCKET, key) == data  # size unknown: probe, then the rest
    assert native.get_bytes(BUCKET, key, 0, None, n) == data  # size known: one ranged GET
    assert native.get_bytes(BUCKET, key, 4096, None, n) == data[4096:]
    assert client.get_object(BUCKET, key).read() == data
    buf = bytearray(n + 10)
    assert native.get_into(BUCKET, key, buf) == n and buf[:n] == data  # resident already
    fresh = _crt.HostBuffer(n)
    assert native.get_into(BUCKET, key, fresh) == n and bytes(fresh) == data
    reader = client.get_object(BUCKET, key, reader_constructor=S3ReaderConstructor.sequential())
    assert reader.read(1000) == data[:1000]  # a partial read buffers the object (fresh memory)
    assert reader.read() == data[1000:]


def test_reader_surface(client: S3Client, prefix: str) -> None:
    client.put(BUCKET, prefix + "s", b"0123456789")
    r = client.get_object(BUCKET, prefix + "s")
    assert r.readable() and r.seekable() and not r.writable()
    assert r.read1(3) == b"012"
    buf = bytearray(3)
    assert r.readinto1(buf) == 3 and buf == b"345"
    assert r.get_object_info().size == 10
    assert r.read() == b"6789" and r.read() == b""
    assert r.seek(-2, io.SEEK_END) == 8 and r.read() == b"89"
    # numpy and tensor destinations for readinto
    r.seek(0)
    arr = np.zeros(4, dtype=np.uint8)
    assert r.readinto(arr) == 4 and arr.tobytes() == b"0123"
    with r:
        pass
    assert r.closed


def test_reader_bad_inputs(client: S3Client, prefix: str) -> None:
    client.put(BUCKET, prefix + "b", b"abc")
    r = client.get_object(BUCKET, prefix + "b")
    with pytest.raises(ValueError, match="negative"):
        r.seek(-1)
    with pytest.raises(ValueError, match="negative"):
        r.seek(-10, io.SEEK_END)
    with pytest.raises(TypeError):
        r.seek(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        r.read(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        r.seek(0, 7)
    with pytest.raises(TypeError):
        r.readinto(b"read-only")
    r.close()
    with pytest.raises(ValueError, match="closed"):
        r.read()
    with pytest.raises(ValueError, match="closed"):
        r.seek(0)
    missing = client.get_object(BUCKET, prefix + "missing")  # lazy: no request yet
    with pytest.raises(FileNotFoundError, match="missing"):
        missing.read()


def test_dcp_optimized_reader(client: S3Client, prefix: str) -> None:
    data = np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    key = prefix + "distcp"
    client.put(BUCKET, key, data)
    ranges = [ItemRange(0, 100), ItemRange(150, 1000), ItemRange(90_000, 120_000), ItemRange(150_000, 200_000)]
    ctor = S3ReaderConstructor.dcp_optimized(max_gap_size=1000)
    ctor.set_item_ranges_by_file({key: ranges})
    r = client.get_object(BUCKET, key, reader_constructor=ctor)
    for it in ranges:
        r.seek(it.start)
        half = (it.end - it.start) // 2
        assert r.read(half) == data[it.start : it.start + half]
        buf = bytearray(it.end - it.start - half)
        assert r.readinto(buf) == len(buf) and bytes(buf) == data[it.start + half : it.end]
        r.seek(it.start)  # back within the current item is fine
        ahead = r.peek()  # within the item, the position kept
        assert 0 < len(ahead) <= it.end - it.start and ahead == data[it.start : it.start + len(ahead)]
        assert r.read(1) == data[it.start : it.start + 1]
        r.seek(it.end)
        assert r.peek() == b""  # past the item: nothing planned to look ahead into
    with pytest.raises(ValueError, match="earlier item") as ei:
        r.seek(0)
        r.read(10)
    assert "S3ReaderConstructor.default()" in str(ei.value)
    r2 = client.get_object(BUCKET, key, reader_constructor=ctor)
    r2.seek(120)  # in the gap between items
    with pytest.raises(ValueError, match="outside the planned item ranges"):
        r2.read(5)
    with pytest.raises(ValueError, match="whole file"):
        client.get_object(BUCKET, key, reader_constructor=ctor).read()
    with pytest.raises(TypeError):
        client.get_object(BUCKET, key, reader_constructor=ctor).seek(0, io.SEEK_END)
    # Unplanned files get the generic reader.
    client.put(BUCKET, prefix + ".metadata", b"meta")
    assert client.get_object(BUCKET, prefix + ".metadata", reader_constructor=ctor).read() == b"meta"


def test_dcp_reader_reports_truncated_object(client: S3Client, prefix: str) -> None:
    key = prefix + "short"
    client.put(BUCKET, key, b"x" * 100)
    ctor = S3ReaderConstructor.dcp_optimized()
    ctor.set_item_ranges_by_file({key: [ItemRange(0, 50), ItemRange(60, 200)]})
    r = client.get_object(BUCKET, key, reader_constructor=ctor)
    with pytest.raises(Exception, match="truncated"):
        r.read(10)


@pytest.mark.parametrize("size", [0, 5, 8 * 1024 * 1024 + 3])
def test_writer_round_trip(client: S3Client, prefix: str, size: int) -> None:
    import torch

    t = torch.arange(size // 4 + 1, dtype=torch.int32)
    raw = t.numpy().tobytes()[:size]
    key = prefix + f"w{size}"
    with client.put_object(BUCKET, key) as w:
        assert w.writable() and not w.readable()
        half = size // 2
        # bytes, memoryview of a tensor, bytearray and a numpy array all go in as-is
        assert w.write(raw[:half]) == half
        mv = memoryview(t.numpy()).cast("B")[half:size]
        assert w.write(mv) == size - half
        w.write(bytearray())
        w.write(np.zeros(0, dtype=np.uint8))
        assert w.tell() == size
        w.flush()
    assert w.closed
    assert client.get_object(BUCKET, key).read() == raw
    with pytest.raises(ValueError, match="closed"):
        w.write(b"x")


def test_writer_aborts_on_exception(client: S3Client, prefix: str, server) -> None:  # type: ignore[no-untyped-def]
    key = prefix + "aborted"
    with pytest.raises(RuntimeError):
        with client.put_object(BUCKET, key) as w:
            w.write(b"a" * (9 * 1024 * 1024))  # multipart upload under way
            raise RuntimeError("training crashed")
    with pytest.raises(FileNotFoundError):
        client.head_object(BUCKET, key)
    ups = server.boto3_client().list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", [])
    assert ups == []


def test_writer_dropped_without_close_writes_nothing(client: S3Client, prefix: str) -> None:
    w = client.put_object(BUCKET, prefix + "dropped")
    w.write(b"data")
    del w
    with pytest.raises(FileNotFoundError):
        client.head_object(BUCKET, prefix + "dropped")


_BOUNDED_WRITER = r"""
import resource, sys, numpy as np
from s3torch import S3Client, S3ClientConfig
from s3torch._servers import ACCESS_KEY, SECRET_KEY, REGION
endpoint, bucket, key, mode = sys.argv[1:5]
cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY,
                     part_size=5 * 2**20, throughput_target_gbps=1.0)
client = S3Client(REGION, endpoint=endpoint, s3client_config=cfg)
n = 16 * 2**20 if mode == "chunks" else 768 * 2**20
chunk = np.random.default_rng(0).integers(0, 255, n, dtype=np.uint8)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with client.put_object(bucket, key) as w:
    for _ in range(768 * 2**20 // n):  # 768 MiB, written far faster than a local server takes it
        w.write(chunk)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


@pytest.mark.parametrize("mode", ["chunks", "one_write"])
def test_writer_memory_is_bounded_by_the_upload_window(seaweed, prefix: str, mode: str) -> None:  # type: ignore[no-untyped-def]
    # A write returns only once at most a window of parts (8 x 5 MiB here) waits to be
    # uploaded. Without it the CRT lets several parts per connection pile up ahead of the
    # server: measured 108 MiB of growth without the window, 62 MiB with it. One huge write
    # is handed over a part at a time, so the window bounds it too.
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _BOUNDED_WRITER, seaweed.endpoint, BUCKET, prefix + "bounded", mode],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    grew = int(out.stdout.strip().splitlines()[-1])
    assert grew < 90 * 2**20, f"peak RSS grew by {grew / 2**20:.0f} MiB while writing 768 MiB"
    from tests.conftest import make_client

    assert make_client(seaweed).head_object(BUCKET, prefix + "bounded").size == 768 * 2**20


@pytest.mark.parametrize("kind", ["default", "range_4KiB"])
def test_a_pickled_reader_reads_on_where_it_was(client: S3Client, prefix: str, kind: str) -> None:
    """A reader pickles (a process pool, a DataLoader worker returning it) as the same object
    at the same position, held to the version it has read: one replaced since is refused."""
    data = bytes(range(256)) * 40
    client.put(BUCKET, prefix + "p", data)
    reader = client.get_object(BUCKET, prefix + "p", reader_constructor=CONSTRUCTORS[kind])
    fresh = pickle.loads(pickle.dumps(reader))  # nothing read yet: any version
    assert fresh.read() == data
    assert reader.read(1000) == data[:1000]
    again = pickle.loads(pickle.dumps(reader))
    assert (again.tell(), again.read(), again.key) == (1000, data[1000:], prefix + "p")
    started = pickle.loads(pickle.dumps(reader))
    client.put(BUCKET, prefix + "p", b"replaced")
    with pytest.raises(S3ObjectChangedError):
        started.read()
    reader.close()
    with pytest.raises(TypeError, match="closed"):
        pickle.dumps(reader)


@pytest.mark.parametrize("dataset, prefetch_count", [("map", 64), ("iterable", 0), ("iterable", 64)])
def test_dataloader_workers_can_return_readers(seaweed, prefix: str, dataset: str, prefetch_count: int) -> None:  # type: ignore[no-untyped-def]
    """Items returned by DataLoader workers are pickled to the main process: a dataset's
    readers (its default transform) could not be, and the DataLoader waited forever. A
    prefetched reader takes its bytes along."""
    from torch.utils.data import DataLoader

    from s3torch import S3IterableDataset, S3MapDataset

    client = make_client(seaweed)
    for i in range(4):
        client.put(BUCKET, f"{prefix}d/{i}", bytes([i]) * (i + 1))
    uri, cfg = f"s3://{BUCKET}/{prefix}d/", client.s3client_config
    if dataset == "map":
        ds: Any = S3MapDataset.from_prefix(uri, region=client.region, endpoint=seaweed.endpoint, s3client_config=cfg)
    else:
        ds = S3IterableDataset.from_prefix(
            uri,
            region=client.region,
            endpoint=seaweed.endpoint,
            s3client_config=cfg,
            prefetch_count=prefetch_count,
            enable_sharding=True,
        )
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork", timeout=60)
    assert sorted(r.read() for r in loader) == [bytes([i]) * (i + 1) for i in range(4)]
