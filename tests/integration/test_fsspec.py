"""s3torch as an fsspec filesystem (s3torch.fsspec) against SeaweedFS and moto.

fsspec's own conformance suites for filesystems (``fsspec.tests.abstract``: copy, get, put,
open, pipe; the ones s3fs runs against itself) run first, unchanged; then what they do not
cover: s3fs's options, listings with directory markers, ranges, transactions, a failed write,
hostile keys, pickling, and torch's own fsspec DCP writer and reader on ``s3torch://``.
"""

from __future__ import annotations

import os
import pickle
import posixpath
import sys
import uuid
from typing import Iterator

import fsspec
import pytest
import torch
import torch.distributed.checkpoint as dcp
from fsspec.tests.abstract import (
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

import s3torch.fsspec
from s3torch import S3ClientConfig, S3ReaderConstructor
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch.fsspec import S3TorchFileSystem, filesystem
from tests.conftest import BUCKET


def make_fs(server, **options) -> S3TorchFileSystem:  # type: ignore[no-untyped-def]
    # s3fs's spelling of the settings, as storage_options written for s3fs carry them.
    return S3TorchFileSystem(
        endpoint_url=server.endpoint,
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        client_kwargs={"region_name": REGION},
        s3client_config=S3ClientConfig(force_path_style=True),
        skip_instance_cache=True,
        **options,
    )


class TestConformance(
    AbstractFixtures, AbstractCopyTests, AbstractGetTests, AbstractPutTests, AbstractOpenTests, AbstractPipeTests
):
    """fsspec's suites, as they come, against moto (as AWS does, and SeaweedFS does not, moto
    lists no directory once its last object is deleted). S3 has no empty directories."""

    @pytest.fixture(scope="class")
    @classmethod
    def fs(cls, moto):  # type: ignore[no-untyped-def]
        return make_fs(moto)

    @pytest.fixture
    def fs_join(self):  # type: ignore[no-untyped-def]
        return posixpath.join

    @pytest.fixture
    def fs_path(self) -> str:
        return f"{BUCKET}/fsspec-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def supports_empty_directories(self) -> bool:
        return False


@pytest.fixture(scope="module")
def fs(moto) -> S3TorchFileSystem:  # type: ignore[no-untyped-def]
    return make_fs(moto)


@pytest.fixture
def root(prefix: str) -> str:
    return f"{BUCKET}/{prefix.rstrip('/')}"


def test_found_by_protocol_with_s3fs_options(seaweed, root: str) -> None:  # type: ignore[no-untyped-def]
    options = dict(
        endpoint_url=seaweed.endpoint, key=ACCESS_KEY, secret=SECRET_KEY, client_kwargs={"region_name": REGION}
    )
    with fsspec.open(f"s3torch://{root}/a.txt", "w", **options) as f:  # text mode over the writer
        f.write("hello\n")
    with fsspec.open(f"s3torch://{root}/a.txt", "r", **options) as f:
        assert f.read() == "hello\n"
    fs, path = fsspec.core.url_to_fs(f"s3torch://{root}/a.txt", **options)
    assert isinstance(fs, S3TorchFileSystem) and path == f"{root}/a.txt"
    assert fs.client.region == REGION and fs.client.endpoint == seaweed.endpoint


def test_async_callers_get_coroutines(seaweed, root: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """zarr 3's path to a store URL: url_to_fs(..., asynchronous=True), and an async
    filesystem it uses as it is (asynchronous was refused by name, so zarr could not open an
    s3torch:// URL). Its calls run on a pool of their own, all of zarr's at once, not on the
    loop's default executor (6 threads on 2 CPUs); reads, on the loop itself (the next test)."""
    import asyncio
    import threading

    from s3torch.fsspec import _async

    options = dict(
        endpoint_url=seaweed.endpoint, key=ACCESS_KEY, secret=SECRET_KEY, client_kwargs={"region_name": REGION}
    )
    afs, path = fsspec.core.url_to_fs(f"s3torch://{root}/z.zarr", asynchronous=True, **options)
    assert isinstance(afs, _async.S3TorchAsyncFileSystem) and afs.async_impl and afs.asynchronous
    assert isinstance(afs.sync_fs, S3TorchFileSystem) and path == f"{root}/z.zarr"
    assert afs.sync_fs is fsspec.filesystem("s3torch", **options)  # the cached one, its client shared
    again = pickle.loads(pickle.dumps(afs))  # as dask hands it to workers
    assert isinstance(again, _async.S3TorchAsyncFileSystem) and again.sync_fs is afs.sync_fs
    chunks = {f"{path}/c/{i}": os.urandom(1000 + i) for i in range(40)}
    # 16 calls held at once, on 16 threads of the pool.
    held, release = threading.Barrier(17), threading.Event()
    info = afs.sync_fs.info

    def holding_info(p, *a, **kw):  # type: ignore[no-untyped-def]
        if p.endswith("/hold"):
            held.wait(10)
            release.wait(10)
            return {}
        return info(p, *a, **kw)

    monkeypatch.setattr(afs.sync_fs, "info", holding_info)
    afs._wrap_all_sync_methods()

    async def hold() -> None:
        waiting = [asyncio.ensure_future(afs._info(f"{path}/hold")) for _ in range(16)]
        await asyncio.get_running_loop().run_in_executor(None, held.wait, 10)  # all 16 running
        release.set()
        await asyncio.gather(*waiting)

    asyncio.run(hold())

    async def run() -> None:
        await asyncio.gather(*(afs._pipe_file(k, v) for k, v in chunks.items()))  # type: ignore[attr-defined]
        got = await asyncio.gather(*(afs._cat_file(k) for k in chunks))
        assert got == list(chunks.values())
        first = next(iter(chunks))
        assert await afs._cat_file(first, start=10, end=20) == chunks[first][10:20]
        assert await afs._cat_file(first, start=10, end=1 << 40) == chunks[first][10:]  # clipped on the pool
        assert sorted(await afs._find(path)) == sorted(chunks)
        async with await afs.open_async(f"{path}/f", "wb") as f:
            await f.write(b"written ")
            await f.write(b"async")
        async with await afs.open_async(f"{path}/f") as f:
            f.seek(8)
            assert await f.read() == b"async" and f.tell() == 13
        await afs._rm(list(chunks) + [f"{path}/f"])
        assert not await afs._exists(first)

    asyncio.run(run())


def test_async_reads_run_on_the_event_loop(seaweed, root: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """``_cat_file`` of a whole object or a plain range starts its GETs from the loop and is
    told by the engine when they finish (a CompletionPipe the loop watches): no thread of the
    pool runs them. Objects of one request, of a probe and a rest (larger than a part), missing
    ones, ranges past the end, 64 at once, and a cancelled read; writes of up to a part too,
    create-only ones included."""
    import asyncio

    from s3torch.fsspec import _async

    options = dict(
        endpoint_url=seaweed.endpoint,
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        client_kwargs={"region_name": REGION},
        s3client_config=S3ClientConfig(part_size=5 << 20),
    )
    afs, path = fsspec.core.url_to_fs(f"s3torch://{root}/loop", asynchronous=True, **options)
    small = {f"{path}/s/{i}": os.urandom(1000 * i) for i in range(64)}  # the first one empty
    big = os.urandom((12 << 20) + 7)  # a probe of 5 MiB, then the rest
    fs = afs.sync_fs
    fs.pipe_file(f"{path}/big", big)

    def no_pool(method):  # type: ignore[no-untyped-def]
        raise AssertionError(f"{method.__name__} went to the pool")

    monkeypatch.setattr(_async, "_on_pool", no_pool)
    populated = []
    populate = _async._populate
    monkeypatch.setattr(_async, "_populate", lambda op: (populated.append(op.wants_populate()), populate(op)))

    async def run() -> None:
        await asyncio.gather(*(afs._pipe_file(k, v) for k, v in small.items()))  # 64 at once
        await afs._pipe_file(f"{path}/part", big[: 5 << 20])  # exactly a part: one PutObject
        with pytest.raises(FileExistsError):
            await afs._pipe_file(f"{path}/part", b"not this", mode="create")
        await afs._pipe_file(f"{path}/new", b"created", mode="create")
        got = await asyncio.gather(*(afs._cat_file(k) for k in small))  # 64 at once
        assert got == list(small.values())
        assert await afs._cat_file(f"{path}/big") == big
        assert (
            await afs._cat_file(f"{path}/big", start=(5 << 20) - 3, end=(6 << 20) + 9)
            == big[(5 << 20) - 3 : (6 << 20) + 9]
        )
        last = f"{path}/s/63"
        assert await afs._cat_file(last, start=10, end=70_000) == small[last][10:]  # short: what there is
        assert await afs._cat_file(last, start=10**6, end=10**6 + 5) == b""  # past the end: 416
        assert await afs._cat_file(last, start=5, end=5) == b""
        with pytest.raises(FileNotFoundError):
            await afs._cat_file(f"{path}/missing")
        with pytest.raises(FileNotFoundError):
            await afs._cat_file(f"{path}/missing", start=0, end=10)
        slow = asyncio.ensure_future(afs._cat_file(f"{path}/big"))
        await asyncio.sleep(0)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        ops = _async._loops[asyncio.get_running_loop()]
        assert ops is not None
        for _ in range(500):  # the cancelled GET finishes (cancelled) and is let go
            if not ops.ops:
                break
            await asyncio.sleep(0.01)
        assert not ops.ops
        assert await afs._cat_file(f"{path}/big") == big  # the loop reads on

    asyncio.run(run())
    assert fs.cat_file(f"{path}/part") == big[: 5 << 20] and fs.cat_file(f"{path}/new") == b"created"
    monkeypatch.undo()

    # A loop's pipe goes with the loop: asyncio.run after asyncio.run leaves no fd behind.
    import gc

    async def one() -> None:
        assert await afs._cat_file(f"{path}/new") == b"created"

    asyncio.run(one())
    gc.collect()
    fds = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        asyncio.run(one())
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= fds + 2

    async def pooled() -> None:  # a negative offset: a HEAD first; more than a part: multipart
        assert await afs._cat_file(f"{path}/big", start=-10) == big[-10:]
        await afs._pipe_file(f"{path}/big2", big)
        assert await afs._cat_file(f"{path}/big2") == big

    asyncio.run(pooled())


def test_async_instances_need_fsspecs_wrapper_only_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """fsspec before 2024.12 has no AsyncFileSystemWrapper: the synchronous filesystem works
    without it, and asynchronous=True says what it needs."""
    monkeypatch.setitem(sys.modules, "fsspec.implementations.asyn_wrapper", None)  # import fails
    monkeypatch.delitem(sys.modules, "s3torch.fsspec._async", raising=False)
    S3TorchFileSystem(endpoint_url="http://127.0.0.1:9", skip_instance_cache=True)
    with pytest.raises(ImportError, match="asynchronous=True. needs fsspec 2024.12 or later"):
        S3TorchFileSystem(endpoint_url="http://127.0.0.1:9", asynchronous=True, skip_instance_cache=True)


def test_register_serves_s3_urls(seaweed, root: str, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    registered = sys.modules["fsspec.registry"]._registry  # type: ignore[attr-defined]
    for protocol in ("s3", "s3a"):  # put back whatever was registered once the test ends
        if protocol in registered:
            monkeypatch.setitem(registered, protocol, registered[protocol])
        else:
            monkeypatch.delitem(registered, protocol, raising=False)
    s3torch.fsspec.register()
    assert fsspec.get_filesystem_class("s3") is S3TorchFileSystem
    fs = make_fs(seaweed)
    fs.pipe(f"s3://{root}/x", b"via s3://")
    assert fs.cat(f"s3a://{root}/x") == b"via s3://"
    assert fs.ls(f"s3://{root}", detail=False) == [f"{root}/x"]


def test_configs_that_differ_only_in_secrets_get_their_own_filesystem(seaweed) -> None:  # type: ignore[no-untyped-def]
    # fsspec caches filesystems by str() of their arguments; an S3ClientConfig's shows no secret.
    def fs_with(secret: str) -> S3TorchFileSystem:
        cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=secret)
        return S3TorchFileSystem(REGION, seaweed.endpoint, cfg)

    good, bad = fs_with(SECRET_KEY), fs_with("not-" + SECRET_KEY)
    assert good is fs_with(SECRET_KEY) and bad is not good  # cached, each by its own config
    assert good.exists(BUCKET)
    with pytest.raises(PermissionError):
        bad.ls(BUCKET)
    assert pickle.loads(pickle.dumps(good)) is good  # same process: the cached instance
    # Reader constructors show only their kind in str() too.
    small = S3TorchFileSystem(
        REGION,
        seaweed.endpoint,
        good.client.s3client_config,
        reader_constructor=S3ReaderConstructor.range_based(1 << 20),
    )
    large = S3TorchFileSystem(
        REGION,
        seaweed.endpoint,
        good.client.s3client_config,
        reader_constructor=S3ReaderConstructor.range_based(64 << 20),
    )
    assert small is not large and small.client is large.client  # one S3Client for both


def test_threads_share_one_client(fs: S3TorchFileSystem, moto) -> None:  # type: ignore[no-untyped-def]
    # fsspec makes a filesystem per thread; they share the S3Client of their settings.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        others = list(pool.map(lambda _: make_fs(moto), range(4)))
    assert all(o.client is fs.client for o in others)


def test_unknown_options_are_refused_by_name(seaweed) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TypeError, match="version_aware"):
        make_fs(seaweed, version_aware=True)
    with pytest.raises(TypeError, match="client_kwargs aws_access_key_id"):
        S3TorchFileSystem(
            endpoint_url=seaweed.endpoint, client_kwargs={"aws_access_key_id": "x"}, skip_instance_cache=True
        )
    with pytest.raises(ValueError, match="verify=False"):
        S3TorchFileSystem(endpoint_url=seaweed.endpoint, client_kwargs={"verify": False}, skip_instance_cache=True)
    make_fs(seaweed, default_block_size=1 << 20, default_cache_type="bytes")  # s3fs's tuning: taken


def test_listing_files_directories_and_markers(fs: S3TorchFileSystem, root: str) -> None:
    fs.pipe({f"{root}/f": b"1", f"{root}/d/g": b"22", f"{root}/d/e/h": b"333"})
    fs.client.put(BUCKET, f"{root}/m/".split("/", 1)[1], b"")  # a directory marker, as consoles make them
    assert fs.ls(root, detail=False) == [f"{root}/d", f"{root}/f", f"{root}/m"]
    listed = {i["name"]: (i["type"], i["size"]) for i in fs.ls(root)}
    assert listed == {f"{root}/d": ("directory", 0), f"{root}/f": ("file", 1), f"{root}/m": ("directory", 0)}
    assert fs.ls(f"{root}/m") == []  # the marker's own directory: empty
    assert fs.ls(f"{root}/f", detail=False) == [f"{root}/f"]  # a file lists as itself
    info = fs.info(f"{root}/d/g")
    assert info["type"] == "file" and info["size"] == 2 and info["ETag"]
    assert info["LastModified"].tzinfo is not None
    assert fs.modified(f"{root}/d/g") == info["LastModified"]
    assert fs.info(f"{root}/d")["type"] == "directory" and fs.info(f"{root}/m")["type"] == "directory"
    assert fs.isdir(root) and fs.isfile(f"{root}/f") and not fs.exists(f"{root}/nope")
    with pytest.raises(FileNotFoundError):
        fs.info(f"{root}/nope")
    with pytest.raises(FileNotFoundError):
        fs.ls(f"{root}/nope")
    assert fs.find(root) == [f"{root}/d/e/h", f"{root}/d/g", f"{root}/f"]
    assert fs.find(root, withdirs=True) == [
        root,
        f"{root}/d",
        f"{root}/d/e",
        f"{root}/d/e/h",
        f"{root}/d/g",
        f"{root}/f",
        f"{root}/m",
    ]
    assert fs.find(root, maxdepth=1) == [f"{root}/f"]
    assert fs.find(f"{root}/f") == [f"{root}/f"]
    assert sorted(fs.glob(f"{root}/**/g")) == [f"{root}/d/g"]
    assert fs.du(root) == 6
    fs.rm([f"{root}/m"], recursive=True)  # a list (through expand_path): the marker too
    assert not fs.exists(f"{root}/m")
    fs.client.put(BUCKET, f"{root}/m/".split("/", 1)[1], b"")
    fs.rm(root, recursive=True)  # the marker too
    assert not fs.exists(root) and fs.find(root, withdirs=True) == []
    with pytest.raises(FileNotFoundError):
        fs.rm(f"{root}/nope", recursive=True)


def test_reads_ranges_and_seeks(fs: S3TorchFileSystem, root: str) -> None:
    data = os.urandom(3 << 20)
    fs.pipe_file(f"{root}/obj", data)
    with fs.open(f"{root}/obj", "rb") as f:
        assert f.size == len(data)
        f.seek(-100, os.SEEK_END)
        assert f.read() == data[-100:]
        f.seek(12345)
        assert f.read(10) == data[12345:12355]
    path = f"{root}/obj"
    assert fs.cat_file(path) == data
    assert fs.cat_file(path, 10, 20) == data[10:20]
    assert fs.cat_file(path, -10) == data[-10:]
    assert fs.cat_file(path, 5, -5) == data[5:-5]
    assert fs.cat_file(path, len(data) - 3, len(data) + 100) == data[-3:]  # clipped at the end
    assert fs.cat_file(path, len(data) + 5, len(data) + 9) == b""  # past the end
    # An end far past the object (a guess at "to the end"): clipped by a HEAD, not allocated
    # (a TiB was MemoryError before; s3fs reads to the end).
    assert fs.cat_file(path, 7, 1 << 40) == data[7:]
    assert fs.cat_file(path, len(data), 1 << 40) == b""
    assert fs.cat_file(path, -10, 1 << 40) == data[-10:]  # the HEAD for -10 also clips the end
    assert fs.head(path, 7) == data[:7] and fs.tail(path, 7) == data[-7:]
    starts = [0, 100, len(data) - 10, 7, len(data) + 1, 50, -20, 3]
    ends = [10, 100, len(data) + 10, 1 << 20, len(data) + 2, None, None, 1 << 40]
    got = fs.cat_ranges([path] * len(starts), starts, ends)
    assert got == [data[0:10], b"", data[-10:], data[7 : 1 << 20], b"", data[50:], data[-20:], data[3:]]
    missing = fs.cat_ranges([path, f"{root}/nope", BUCKET], [0, 0, 0], [4, 4, 4])
    assert missing[0] == data[:4] and isinstance(missing[1], FileNotFoundError) and isinstance(missing[2], ValueError)
    with pytest.raises(FileNotFoundError):
        fs.cat_ranges([f"{root}/nope"], [0], [4], on_error="raise")


def test_a_write_that_raises_leaves_no_object(fs: S3TorchFileSystem, root: str) -> None:
    with pytest.raises(RuntimeError):
        with fs.open(f"{root}/w", "wb") as f:
            f.write(b"x" * (9 << 20))  # past one part: a multipart upload was under way
            raise RuntimeError("the job failed mid-write")
    assert not fs.exists(f"{root}/w")
    assert [u for u in fs.client.list_multipart_uploads(BUCKET, root.split("/", 1)[1]) if u[0].endswith("/w")] == []
    fs.touch(f"{root}/empty")
    assert fs.cat_file(f"{root}/empty") == b"" and fs.size(f"{root}/empty") == 0
    with pytest.raises(FileExistsError):
        fs.open(f"{root}/empty", "xb")


def test_create_only_writes_are_conditional_on_the_server(fs: S3TorchFileSystem, root: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """ "xb", pipe_file and put_file with mode="create" write with If-None-Match: a key taken
    after "xb" opened (its early check passed) still fails at close, and keeps its object."""
    path = f"{root}/x"
    f = fs.open(path, "xb")
    f.write(b"mine" * (2 << 20))  # past one part: the check is on CompleteMultipartUpload
    fs.pipe_file(path, b"theirs", mode="create")  # another writer gets there first
    with pytest.raises(FileExistsError):
        f.close()
    assert fs.cat_file(path) == b"theirs"
    with pytest.raises(FileExistsError):
        fs.pipe_file(path, b"again", mode="create")
    local = tmp_path / "up.bin"
    local.write_bytes(b"local")
    with pytest.raises(FileExistsError):
        fs.put_file(str(local), path, mode="create")
    with pytest.raises(FileExistsError):
        with fs.transaction:
            fs.pipe_file(path, b"in a transaction", mode="create")
    assert fs.cat_file(path) == b"theirs"
    with pytest.raises(ValueError, match="'overwrite' or 'create'"):
        fs.pipe_file(path, b"x", mode="append")


def test_append_writes_the_object_again_with_the_new_bytes_last(fs: S3TorchFileSystem, root: str) -> None:
    path = f"{root}/log.csv"
    with fs.open(path, "a") as f:  # no object yet: a new one
        f.write("step,loss\n")
    big = os.urandom(9 << 20)  # the old bytes span parts
    with fs.open(path, "ab") as f:
        f.write(big)
    with fs.open(path, "a") as f:
        f.write("2,0.5\n")
    assert fs.cat_file(path) == b"step,loss\n" + big + b"2,0.5\n"
    with pytest.raises(RuntimeError):
        with fs.open(path, "ab") as f:
            f.write(b"half a line")
            raise RuntimeError("interrupted")
    assert fs.cat_file(path) == b"step,loss\n" + big + b"2,0.5\n"  # as it was


def test_transaction_writes_appear_on_commit_only(fs: S3TorchFileSystem, root: str) -> None:
    with fs.transaction:
        with fs.open(f"{root}/t1", "wb") as f:
            f.write(b"one")
        assert not fs.exists(f"{root}/t1")  # closed, not yet committed
    assert fs.cat_file(f"{root}/t1") == b"one"
    with fs.transaction:
        fs.pipe_file(f"{root}/t3", b"three")
        f = fs.open(f"{root}/t4", "wb")
        f.write(b"four")  # left open: the commit closes it
        assert not fs.exists(f"{root}/t3") and not fs.exists(f"{root}/t4")
    assert fs.cat_file(f"{root}/t3") == b"three" and fs.cat_file(f"{root}/t4") == b"four"
    with pytest.raises(RuntimeError):
        with fs.transaction:
            with fs.open(f"{root}/t2", "wb") as f:
                f.write(b"two")
            fs.pipe_file(f"{root}/t5", b"five")
            raise RuntimeError("abandoned")
    assert not fs.exists(f"{root}/t2") and not fs.exists(f"{root}/t5")


def test_get_and_put_files(fs: S3TorchFileSystem, root: str, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom((1 << 20) + 7)
    local = tmp_path / "up.bin"
    local.write_bytes(data)
    fs.put_file(str(local), f"{root}/up.bin")
    assert fs.cat_file(f"{root}/up.bin") == data
    with pytest.raises(FileExistsError):
        fs.put_file(str(local), f"{root}/up.bin", mode="create")
    fs.get_file(f"{root}/up.bin", str(tmp_path / "down" / "x.bin"))
    assert (tmp_path / "down" / "x.bin").read_bytes() == data
    assert os.listdir(tmp_path / "down") == ["x.bin"]  # no partial file left behind
    with open(tmp_path / "into", "wb") as out:
        fs.get_file(f"{root}/up.bin", out)  # a file object: streamed into it
    assert (tmp_path / "into").read_bytes() == data
    monkeypatch.chdir(tmp_path)
    fs.get_file(f"{root}/up.bin", "relative.bin")  # a bare name: the working directory
    assert (tmp_path / "relative.bin").read_bytes() == data
    with pytest.raises(FileNotFoundError):
        fs.get_file(f"{root}/nope", str(tmp_path / "nope"))
    assert not (tmp_path / "nope").exists() and not (tmp_path / "nope.s3torch-partial").exists()


def test_bulk_calls_run_many_at_once_and_raise_the_first_failure(  # type: ignore[no-untyped-def]
    fs: S3TorchFileSystem, root: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = {f"{root}/src/{i:03d}": os.urandom(1000 + i) for i in range(40)}
    fs.pipe(blobs)  # a dict: many PUTs at once
    assert fs.cat(fs.find(f"{root}/src")) == blobs  # many GETs at once
    got = fs.cat([f"{root}/src/000", f"{root}/nope"], on_error="return")
    assert got[f"{root}/src/000"] == blobs[f"{root}/src/000"] and isinstance(got[f"{root}/nope"], FileNotFoundError)
    assert fs.cat([f"{root}/src/000", f"{root}/nope"], on_error="omit") == {f"{root}/src/000": blobs[f"{root}/src/000"]}

    # An object replaced after get's listing is read as it is now, whole (its listed ETag fails).
    find = fs.find

    def find_then_replace(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = find(*args, **kwargs)
        fs.pipe_file(f"{root}/src/007", b"replaced after the listing")
        return out

    monkeypatch.setattr(fs, "find", find_then_replace)
    fs.get(f"{root}/src", str(tmp_path / "a") + "/", recursive=True)
    monkeypatch.undo()
    blobs[f"{root}/src/007"] = b"replaced after the listing"
    for name, data in blobs.items():
        assert (tmp_path / "a" / "src" / name.rsplit("/", 1)[1]).read_bytes() == data  # as cp -r names it

    # The first failure is raised; the files that failed leave nothing behind.
    real = S3TorchFileSystem._get_file

    def flaky(self, rpath, lpath, *args):  # type: ignore[no-untyped-def]
        if rpath.endswith("/013"):
            raise ConnectionError("the network went away")
        return real(self, rpath, lpath, *args)

    monkeypatch.setattr(S3TorchFileSystem, "_get_file", flaky)
    with pytest.raises(ConnectionError, match="went away"):
        fs.get(f"{root}/src", str(tmp_path / "b") + "/", recursive=True)
    assert not (tmp_path / "b" / "src" / "013").exists()
    assert not [p for p in (tmp_path / "b").rglob("*") if p.name.endswith(".s3torch-partial")]

    fs.copy(f"{root}/src", f"{root}/dst", recursive=True)  # many server-side copies at once
    assert len(fs.find(f"{root}/dst")) == 40
    fs.mv(f"{root}/dst", f"{root}/moved", recursive=True)
    assert len(fs.find(f"{root}/moved")) == 40 and not fs.exists(f"{root}/dst")


@pytest.mark.parametrize("fsspec_checks", [True, False], ids=["fsspec-checks", "older-fsspec"])
def test_recursive_get_refuses_keys_that_leave_the_destination(  # type: ignore[no-untyped-def]
    moto, tmp_path, monkeypatch: pytest.MonkeyPatch, fsspec_checks: bool
) -> None:
    # moto keeps keys verbatim, as AWS does: a bucket may hold "d/../../escape". fsspec older
    # than 2026.9 does not check get()'s destinations; s3torch then checks the keys itself.
    if not fsspec_checks:
        monkeypatch.setattr(filesystem, "_fsspec_checks_get", None)
        monkeypatch.setattr(filesystem.AbstractFileSystem, "get", _unchecked_get)
    fs = make_fs(moto)
    root = f"{BUCKET}/hostile-{uuid.uuid4().hex[:8]}"
    fs.pipe({f"{root}/d/ok": b"ok", f"{root}/d/../../escape": b"pwned"})
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ValueError, match=r"\.\."):
        fs.get(f"{root}/d", str(dest), recursive=True)
    assert list(tmp_path.rglob("*")) == [dest]  # nothing written, inside or out


def _unchecked_get(self, rpath, lpath, recursive=False, maxdepth=None, **kwargs):  # type: ignore[no-untyped-def]
    # fsspec's get before 2026.9, in short: destinations joined from the listing, unchecked.
    from fsspec.utils import other_paths

    rpaths = [p for p in self.expand_path(rpath, recursive=recursive, maxdepth=maxdepth) if not self.isdir(p)]
    for remote, local in zip(rpaths, other_paths(rpaths, lpath, exists=os.path.isdir(lpath))):
        self.get_file(remote, local)


def test_pickled_filesystem_works_elsewhere(fs: S3TorchFileSystem, root: str) -> None:
    fs.pipe_file(f"{root}/p", b"pickled")
    clone = pickle.loads(pickle.dumps(fs))
    assert clone.cat_file(f"{root}/p") == b"pickled"


def test_lightning_logs_and_checkpoints_to_an_s3torch_url(seaweed_env, root: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Lightning reaches any URL through fsspec: its CSV logger appends to metrics.csv, its
    # ModelCheckpoint saves through fsspec.open; the endpoint and keys come from the environment.
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import CSVLogger

    from tests.integration.test_lightning import TinyModel

    class LoggingModel(TinyModel):
        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            loss = super().training_step(batch, batch_idx)
            self.log("loss", loss)
            return loss

    url = f"s3torch://{root}/run"
    trainer = pl.Trainer(
        max_epochs=2,
        default_root_dir=url,
        logger=CSVLogger(url, name="", version="", flush_logs_every_n_steps=2),  # appends
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    model = LoggingModel()
    trainer.fit(model)
    fs = S3TorchFileSystem(s3client_config=S3ClientConfig(force_path_style=True))
    names = fs.find(f"{root}/run")
    ckpts = [n for n in names if n.endswith(".ckpt")]
    assert ckpts and any(n.endswith("metrics.csv") for n in names), names
    local = tmp_path / "last.ckpt"
    fs.get_file(ckpts[-1], str(local))
    state = torch.load(local, weights_only=False)
    assert state["epoch"] == 1 and torch.equal(state["state_dict"]["layer.weight"], model.layer.weight.detach())
    rows = fs.cat_file(next(n for n in names if n.endswith("metrics.csv"))).decode().splitlines()
    assert rows[0].startswith("epoch") and len(rows) == 1 + 8  # a header, then every step's row


def test_torch_fsspec_dcp_writer_and_reader(seaweed, root: str) -> None:  # type: ignore[no-untyped-def]
    from torch.distributed.checkpoint._fsspec_filesystem import FsspecReader, FsspecWriter

    options = dict(
        endpoint_url=seaweed.endpoint,
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        client_kwargs={"region_name": REGION},
        s3client_config=S3ClientConfig(force_path_style=True),
    )
    sd = {"w": torch.randn(64, 32), "b": torch.arange(10), "step": 7}
    url = f"s3torch://{root}/ckpt"
    dcp.save(sd, storage_writer=FsspecWriter(url, **options))
    loaded = {"w": torch.empty(64, 32), "b": torch.empty(10, dtype=torch.int64), "step": 0}
    dcp.load(loaded, storage_reader=FsspecReader(url, **options))
    assert all(torch.equal(loaded[k], sd[k]) for k in ("w", "b")) and loaded["step"] == 7  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _no_instance_cache() -> Iterator[None]:
    yield
    S3TorchFileSystem.clear_instance_cache()
