"""The conformance suite: every test runs against SeaweedFS and moto (see conftest.server)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from s3torch import S3Client, S3InvalidArgumentError, S3NotFoundError
from tests.conftest import BUCKET

MiB = 1024 * 1024
PART = 8 * MiB


def payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed + n).integers(0, 256, n, dtype=np.uint8).tobytes()


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, PART + 1, 100 * MiB])
def test_round_trip_sizes(client: S3Client, prefix: str, size: int) -> None:
    data = payload(size)
    key = prefix + f"obj-{size}"
    client.put(BUCKET, key, data)
    info = client.head_object(BUCKET, key)
    assert info.size == size
    assert info.key == key
    if size == 0:
        assert client.get_into(BUCKET, key, bytearray(1)) == 0
        return
    buf = bytearray(size)
    assert client.get_into(BUCKET, key, buf) == size
    assert bytes(buf) == data
    # Into numpy memory as well (buffer protocol), and via the streaming path.
    arr = np.empty(size, dtype=np.uint8)
    assert client.get_into(BUCKET, key, arr) == size
    assert arr.tobytes() == data
    assert b"".join(bytes(c) for c in client.get_stream(BUCKET, key)) == data


def test_upload_round_trip_sizes(client: S3Client, prefix: str) -> None:
    for size in [0, 1, PART - 1, PART, PART + 1, 3 * PART + 5]:
        data = payload(size, 1)
        up = client.upload(BUCKET, prefix + f"up-{size}")
        # Feed it in uneven pieces, as a writer would.
        view = memoryview(data)
        step = 3 * MiB + 17
        for i in range(0, size, step):
            up.write(view[i : i + step])
        up.complete()
        assert up.closed and up.bytes_written == size
        buf = bytearray(max(size, 1))
        assert client.get_into(BUCKET, prefix + f"up-{size}", buf) == size
        assert bytes(buf[:size]) == data


def test_ranged_get_into_buffer_at_offsets(client: S3Client, prefix: str) -> None:
    size = 3 * PART + 1234
    data = payload(size, 2)
    key = prefix + "ranged"
    client.put(BUCKET, key, data)
    rng = np.random.default_rng(7)
    cases = [(0, 1), (size - 1, 1), (PART - 3, 10), (5, 2 * PART + 9), (0, size)]
    cases += [(int(o), int(rng.integers(1, 3 * MiB))) for o in rng.integers(0, size - 3 * MiB, 5)]
    for off, length in cases:
        out = bytearray(length)
        assert client.get_into(BUCKET, key, out, offset=off, length=length) == length
        assert bytes(out) == data[off : off + length], (off, length)
    # Writing into a view at an offset inside a larger buffer.
    big = bytearray(100)
    mv = memoryview(big)[10:20]
    client.get_into(BUCKET, key, mv, offset=50, length=10)
    assert bytes(big[10:20]) == data[50:60] and big[:10] == bytes(10)
    # A range running past the end is cut short at the end of the object.
    out = bytearray(100)
    assert client.get_into(BUCKET, key, out, offset=size - 10, length=100) == 10
    assert bytes(out[:10]) == data[-10:]


def test_many_concurrent_gets_into_many_buffers(client: S3Client, prefix: str) -> None:
    objs = {prefix + f"m{i}": payload(200_000 + i * 1000, i) for i in range(24)}
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda kv: client.put(BUCKET, kv[0], kv[1]), objs.items()))
    bufs = {k: bytearray(len(v)) for k, v in objs.items()}
    items = [(k, None, None, bufs[k]) for k in objs]
    # Also ranges of one object into slices of one buffer.
    big_key = prefix + "m0"
    whole = bytearray(len(objs[big_key]))
    mv = memoryview(whole)
    chunk = 50_000
    items += [(big_key, o, min(chunk, len(whole) - o), mv[o : o + chunk]) for o in range(0, len(whole), chunk)]
    got = client.get_into_many(BUCKET, items)
    assert got[: len(objs)] == [len(v) for v in objs.values()]
    for k, v in objs.items():
        assert bytes(bufs[k]) == v
    assert bytes(whole) == objs[big_key]
    # Handles: start several, wait later.
    handles = [client.start_get_into(BUCKET, k, bytearray(len(v))) for k, v in objs.items()]
    assert [h.wait() for h in handles] == [len(v) for v in objs.values()]


def test_streaming_get_bounded_read_ahead(client: S3Client, prefix: str) -> None:
    size = 12 * PART
    data = payload(size, 3)
    key = prefix + "stream"
    client.put(BUCKET, key, data)
    read_ahead = 2 * PART
    native = client._get_native()
    stream = native.get_stream(BUCKET, key, None, None, read_ahead)
    out = bytearray()
    peak = 0
    try:
        while True:
            time.sleep(0.05)  # a slow consumer: the CRT must not race ahead without bound
            peak = max(peak, stream.buffered_bytes)
            chunk = stream.next_chunk()
            if chunk is None:
                break
            out += memoryview(chunk)
            del chunk
    finally:
        stream.close()
    assert bytes(out) == data
    # The window is read_ahead; aws-c-s3 may deliver parts already in flight after it closes
    # (body_callback_ex). Bounded means: far below the 96 MiB object, whatever the pace.
    assert peak <= read_ahead + 4 * PART, peak


def test_streaming_get_read_ahead_below_a_part_in_a_for_loop(client: S3Client, prefix: str) -> None:
    # A for loop holds the chunk it has while it asks for the next one; with a read-ahead
    # smaller than a part, the stream must still go on (it once waited for that release).
    data = payload(3 * PART + 5, 7)
    key = prefix + "stream-small-window"
    client.put(BUCKET, key, data)
    out = bytearray()
    for chunk in client.get_stream(BUCKET, key, read_ahead=64 * 1024):
        out += chunk
    assert bytes(out) == data


def test_streaming_get_range(client: S3Client, prefix: str) -> None:
    data = payload(2 * PART + 77, 4)
    key = prefix + "stream-range"
    client.put(BUCKET, key, data)
    got = b"".join(bytes(c) for c in client.get_stream(BUCKET, key, offset=PART - 5, length=PART + 10))
    assert got == data[PART - 5 : 2 * PART + 5]


def test_streaming_put_concurrent_parts(client: S3Client, prefix: str, server) -> None:  # type: ignore[no-untyped-def]
    size = 6 * PART + 3
    data = payload(size, 5)
    key = prefix + "mpu"
    up = client.upload(BUCKET, key)
    up.write(data)  # one large buffer: the CRT splits it into parts uploaded concurrently
    up.complete()
    s3 = server.boto3_client()
    head = s3.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith("-7")  # 7 parts of a multipart upload
    buf = bytearray(size)
    client.get_into(BUCKET, key, buf)
    assert bytes(buf) == data


def _uploads_for(s3, key: str) -> list:  # type: ignore[no-untyped-def]
    resp = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=key)
    return [u for u in resp.get("Uploads", []) if u["Key"] == key]


def test_abort_leaves_no_upload_behind(client: S3Client, prefix: str, server) -> None:  # type: ignore[no-untyped-def]
    s3 = server.boto3_client()
    key = prefix + "aborted"
    up = client.upload(BUCKET, key)
    up.write(payload(3 * PART, 6))  # multipart upload started, parts handed to the CRT
    deadline = time.monotonic() + 10  # CreateMultipartUpload may still be on its way
    while not _uploads_for(s3, key) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _uploads_for(s3, key), "a multipart upload should be in progress"
    up.abort()
    assert up.closed
    assert _uploads_for(s3, key) == []
    with pytest.raises(S3NotFoundError):
        client.head_object(BUCKET, key)
    with pytest.raises(S3InvalidArgumentError, match="closed"):
        up.write(b"more")


def test_dropped_upload_is_aborted(client: S3Client, prefix: str, server) -> None:  # type: ignore[no-untyped-def]
    s3 = server.boto3_client()
    key = prefix + "dropped"
    up = client.upload(BUCKET, key)
    up.write(payload(2 * PART, 7))
    del up  # never completed: the object must not appear, and no parts may stay behind
    assert _uploads_for(s3, key) == []
    with pytest.raises(S3NotFoundError):
        client.head_object(BUCKET, key)


def test_small_upload_never_completed_writes_nothing(client: S3Client, prefix: str) -> None:
    key = prefix + "small-abandoned"
    up = client.upload(BUCKET, key)
    up.write(b"hello")
    up.abort()
    with pytest.raises(S3NotFoundError):
        client.head_object(BUCKET, key)


def test_write_after_complete(client: S3Client, prefix: str) -> None:
    up = client.upload(BUCKET, prefix + "closed")
    up.write(b"abc")
    up.complete()
    with pytest.raises(S3InvalidArgumentError, match="closed"):
        up.write(b"def")
    with pytest.raises(S3InvalidArgumentError, match="closed"):
        up.complete()


def test_list_pagination_over_1000_keys(client: S3Client, prefix: str) -> None:
    keys = [f"{prefix}k/{i:05d}" for i in range(1100)] + [f"{prefix}d/{i}/x" for i in range(3)]
    with ThreadPoolExecutor(16) as ex:
        list(ex.map(lambda k: client.put(BUCKET, k, b"x"), keys))
    pages = list(client.list_objects(BUCKET, prefix=prefix + "k/"))
    assert len(pages) == 2
    listed = [o.key for p in pages for o in p.objects]
    assert listed == sorted(k for k in keys if "/k/" in k)
    assert all(o.size == 1 for p in pages for o in p.objects)
    small = list(client.list_objects(BUCKET, prefix=prefix + "k/", max_keys=400))
    assert [len(p.objects) for p in small] == [400, 400, 300]
    (page,) = list(client.list_objects(BUCKET, prefix=prefix, delimiter="/"))
    assert sorted(page.common_prefixes) == [prefix + "d/", prefix + "k/"]
    assert page.objects == []


def test_list_pages_in_the_servers_own_order(client: S3Client, prefix: str) -> None:
    """Keys where a directory and names that sort around it meet ("a/b", "a-c", "a.1"): S3 and
    moto list them in binary order, SeaweedFS walks its directories ("a/b" before "a-c").
    Listed a key per page, every key comes once and the listing is never refused (a check
    that pages must go up in binary order refused SeaweedFS's)."""
    names = ["a", "a/b", "a/c/d", "a-c", "a.1", "a0"]
    for n in names:
        client.put(BUCKET, prefix + n, b"x")
    listed = [o.key for p in client.list_objects(BUCKET, prefix=prefix, max_keys=1) for o in p.objects]
    assert sorted(listed) == sorted(prefix + n for n in names) and len(listed) == len(names)


def test_list_keys_needing_escapes(client: S3Client, prefix: str) -> None:
    keys = [prefix + n for n in ["a b", "a+b", "ü/ñ", "x&y<z>", "q?=1", "tab\tkey"]]
    for k in keys:
        client.put(BUCKET, k, k.encode())
    listed = sorted(o.key for p in client.list_objects(BUCKET, prefix=prefix) for o in p.objects)
    assert listed == sorted(keys)
    for k in keys:
        buf = bytearray(len(k.encode()))
        client.get_into(BUCKET, k, buf)
        assert bytes(buf) == k.encode()


def test_head_delete_copy(client: S3Client, prefix: str) -> None:
    data = payload(PART + 10, 8)
    client.put(BUCKET, prefix + "src", data)
    info = client.head_object(BUCKET, prefix + "src")
    assert info.size == len(data) and info.etag and info.last_modified
    client.copy_object(BUCKET, prefix + "src", BUCKET, prefix + "dst")
    buf = bytearray(len(data))
    client.get_into(BUCKET, prefix + "dst", buf)
    assert bytes(buf) == data
    client.delete_object(BUCKET, prefix + "src")
    with pytest.raises(S3NotFoundError):
        client.head_object(BUCKET, prefix + "src")
    # Deleting a missing key is not an error on S3.
    client.delete_object(BUCKET, prefix + "src")


def test_missing_key_and_bucket(client: S3Client, prefix: str) -> None:
    with pytest.raises(S3NotFoundError) as ei:
        client.get_into(BUCKET, prefix + "nope", bytearray(10))
    e = ei.value
    assert isinstance(e, FileNotFoundError)
    assert e.code == "NoSuchKey" and e.http_status == 404
    assert e.bucket == BUCKET and e.key == prefix + "nope"
    assert prefix + "nope" in str(e)
    with pytest.raises(S3NotFoundError):
        client.get_into(BUCKET, prefix + "nope", bytearray(32 * MiB))
    with pytest.raises(S3NotFoundError) as ei:
        client.get_into("no-such-bucket-s3torch", "k", bytearray(10))
    assert ei.value.code == "NoSuchBucket"
    with pytest.raises(S3NotFoundError):
        client.head_object(BUCKET, prefix + "nope")
    with pytest.raises(S3NotFoundError):
        list(client.get_stream(BUCKET, prefix + "nope"))


def test_buffer_too_small_or_read_only(client: S3Client, prefix: str) -> None:
    key = prefix + "sized"
    client.put(BUCKET, key, payload(1000, 9))
    with pytest.raises(S3InvalidArgumentError, match="1000"):
        client.get_into(BUCKET, key, bytearray(10))
    big_key = prefix + "big"
    client.put(BUCKET, big_key, payload(PART + 100, 9))
    with pytest.raises(S3InvalidArgumentError, match=f"holds {PART} bytes but the object is {PART + 100} bytes"):
        client.get_into(BUCKET, big_key, bytearray(PART))
    # A buffer over a part: the CRT fetches in parts and finds the object too large itself.
    with pytest.raises(S3InvalidArgumentError, match=f"holds {PART + 50} bytes but the object is {PART + 100} bytes"):
        client.get_into(BUCKET, big_key, bytearray(PART + 50))
    with pytest.raises(S3InvalidArgumentError, match="read-only"):
        client.get_into(BUCKET, key, b"\0" * 2000)
    with pytest.raises(S3InvalidArgumentError, match="read-only"):
        client.get_into(BUCKET, key, memoryview(bytearray(2000)).toreadonly())
    with pytest.raises(S3InvalidArgumentError, match="range"):
        client.get_into(BUCKET, key, bytearray(10), offset=0, length=100)
    with pytest.raises(S3InvalidArgumentError, match="buffer"):
        client.get_into(BUCKET, key, 12345)  # not a buffer at all
    with pytest.raises(S3InvalidArgumentError, match="contiguous"):
        client.get_into(BUCKET, key, np.zeros((100, 100), dtype=np.uint8)[:, ::2])
    with pytest.raises(S3InvalidArgumentError, match="key is empty"):
        client.get_into(BUCKET, "", bytearray(10))
    with pytest.raises(S3InvalidArgumentError, match="bucket"):
        client.put("", "k", b"x")


def test_gil_released_during_transfer(client: S3Client, prefix: str) -> None:
    size = 40 * MiB
    key = prefix + "gil"
    data = payload(size, 10)
    ticks = 0
    stop = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1  # pure Python: only runs while the other thread does not hold the GIL
            time.sleep(0.001)

    t = threading.Thread(target=spin)
    t.start()
    buf = bytearray(size)
    try:
        before = ticks
        client.put(BUCKET, key, data)
        during_put = ticks - before
        before, t0 = ticks, time.monotonic()
        while time.monotonic() - t0 < 0.3:  # GETs are fast: repeat them for a measurable span
            client.get_into(BUCKET, key, buf)
        during_get = ticks - before
    finally:
        stop.set()
        t.join()
    assert bytes(buf) == data
    # A held GIL would allow at most one tick per call; the spinner gets ~1 per millisecond.
    assert during_put > 5 and during_get > 20, (during_put, during_get)


def test_torch_tensor_via_dlpack(client: S3Client, prefix: str) -> None:
    import torch

    t = torch.arange(300_000, dtype=torch.float32)
    key = prefix + "tensor"
    client.put(BUCKET, key, t)
    out = torch.empty_like(t)
    assert client.get_into(BUCKET, key, out) == t.numel() * 4
    assert torch.equal(out, t)
    # A view with a storage offset lands at the right place.
    big = torch.zeros(400_000, dtype=torch.float32)
    client.get_into(BUCKET, key, big[50_000:350_000])
    assert torch.equal(big[50_000:350_000], t) and big[:50_000].eq(0).all()
    with pytest.raises(S3InvalidArgumentError, match="contiguous"):
        client.get_into(BUCKET, key, torch.zeros(1000, 1000)[:, ::2])


def test_gets_held_to_a_version(client: S3Client, prefix: str) -> None:
    """What one version per read rests on, on each backend: a GET with the object's ETag as
    If-Match answers; with another, 412 S3ObjectChangedError; a reader's GET after the object
    was replaced fails the same way; a whole read (a probe and the rest: larger than a part) of
    the replacement is all of it."""
    from s3torch import S3ObjectChangedError, S3ReaderConstructor

    key = prefix + "versioned"
    old, new = payload(PART + 5, seed=1), payload(PART + 5, seed=2)
    client.put(BUCKET, key, old)
    native = client._get_native()
    etag = client.head_object(BUCKET, key).etag
    buf = bytearray(16)
    assert native.get_into(BUCKET, key, buf, 3, 16, etag) == 16 and bytes(buf) == old[3:19]
    reader = client.get_object(BUCKET, key, reader_constructor=S3ReaderConstructor.range_based(0))
    assert reader.read(1000) == old[:1000]
    client.put(BUCKET, key, new)
    with pytest.raises(S3ObjectChangedError) as ei:
        native.get_into(BUCKET, key, buf, 3, 16, etag)
    assert ei.value.http_status == 412 and ei.value.key == key
    with pytest.raises(S3ObjectChangedError):
        reader.read(1000)
    assert client.get_object(BUCKET, key).read() == new
