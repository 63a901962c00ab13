"""torch.distributed.checkpoint on S3: round trips, interchange with torch's FileSystemWriter
format and s3torchconnector, resharding across world sizes, async save, bad inputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as tmp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

from s3torch import S3ReaderConstructor
from s3torch._servers import REGION, free_port
from s3torch.dcp import (
    BinaryPrefixStrategy,
    CheckpointCorruptError,
    HexPrefixStrategy,
    RoundRobinPrefixStrategy,
    S3FileSystem,
    S3StorageReader,
    S3StorageWriter,
)
from tests.conftest import BUCKET, make_client

READERS = {
    "parallel": None,
    "dcp_optimized": S3ReaderConstructor.dcp_optimized(),
    "sequential": S3ReaderConstructor.sequential(),
    "range_based": S3ReaderConstructor.range_based(),
}


def state_dict() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "fp32": torch.randn(300, 257, generator=g),
        "bf16": torch.randn(128, 64, generator=g).to(torch.bfloat16),
        "fp16": torch.randn(1000, generator=g).to(torch.float16),
        "int64": torch.arange(50_000),
        "bool": torch.rand(999, generator=g) > 0.5,
        "non_contiguous": torch.randn(120, 80, generator=g).t(),
        "scalar": torch.tensor(3.25),
        "empty": torch.empty(0, 5),
        "nested": {"layer": {"w": torch.randn(64, 64, generator=g)}, "meta": {"step": 7, "name": "run-1"}},
        "blob": b"\x00raw bytes\xff",
        "lr": 0.001,
    }


def empty_like_sd(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if isinstance(v, torch.Tensor):
            out[k] = torch.zeros_like(v.contiguous()) if k != "non_contiguous" else torch.zeros(120, 80).t()
        elif isinstance(v, dict):
            out[k] = empty_like_sd(v)
        elif isinstance(v, bytes):
            out[k] = b""
        else:
            out[k] = type(v)()
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            assert_same(a[k], b[k])
        else:
            assert a[k] == b[k], k


def writer(server, path: str, **kw) -> S3StorageWriter:  # type: ignore[no-untyped-def]
    return S3StorageWriter(
        REGION, path, s3client_config=make_client(server).s3client_config, endpoint=server.endpoint, **kw
    )


def reader(server, path: str, **kw) -> S3StorageReader:  # type: ignore[no-untyped-def]
    return S3StorageReader(
        REGION, path, s3client_config=make_client(server).s3client_config, endpoint=server.endpoint, **kw
    )


@pytest.mark.parametrize("kind", list(READERS))
def test_round_trip_every_reader(server, prefix: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    sd = state_dict()
    path = f"s3://{BUCKET}/{prefix}ckpt"
    dcp.save(sd, storage_writer=writer(server, path, thread_count=2))
    out = empty_like_sd(sd)
    r = reader(server, path, reader_constructor=READERS[kind])
    dcp.load(out, storage_reader=r)
    assert_same(sd, out)
    if kind == "parallel":
        # The large contiguous tensors landed straight in their destinations.
        assert r.last_load_stats["direct"] >= 2 and r.last_load_stats["fallback"] == 0, r.last_load_stats


def test_layout_and_metadata_written_last_by_one_put(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    path = f"s3://{BUCKET}/{prefix}c"
    dcp.save({"a": torch.ones(10)}, storage_writer=writer(seaweed, path, thread_count=1))
    keys = sorted(o.key for p in client.list_objects(BUCKET, prefix) for o in p.object_info)
    assert keys == [f"{prefix}c/.metadata", f"{prefix}c/__0_0.distcp"]  # no .metadata.tmp left behind


@pytest.mark.parametrize(
    "strategy, expected",
    [
        (RoundRobinPrefixStrategy(["shard1", "shard2"], epoch_num=5), "shard1/epoch_5/__0_0.distcp"),
        (BinaryPrefixStrategy(epoch_num=1, min_prefix_len=10), "0000000000/epoch_1/__0_0.distcp"),
        (HexPrefixStrategy(min_prefix_length=4), "0000/__0_0.distcp"),
    ],
)
def test_prefix_strategies(seaweed, prefix: str, strategy, expected: str) -> None:  # type: ignore[no-untyped-def]
    path = f"s3://{BUCKET}/{prefix}p"
    sd = {"w": torch.randn(100, 100)}
    dcp.save(sd, storage_writer=writer(seaweed, path, prefix_strategy=strategy))
    keys = {o.key for p in make_client(seaweed).list_objects(BUCKET, prefix) for o in p.object_info}
    assert f"{prefix}p/{expected}" in keys
    out = {"w": torch.zeros(100, 100)}
    dcp.load(out, storage_reader=reader(seaweed, path))
    assert torch.equal(out["w"], sd["w"])
    assert BinaryPrefixStrategy(min_prefix_len=10).generate_prefix(2) == "0100000000/__2_"
    assert HexPrefixStrategy(min_prefix_length=4).generate_prefix(15) == "f000/__15_"


def test_torch_filesystemwriter_checkpoint_loads_from_s3(seaweed, prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sd = state_dict()
    dcp.save(sd, storage_writer=FileSystemWriter(str(tmp_path / "ck"), thread_count=2))
    client = make_client(seaweed)
    for f in (tmp_path / "ck").iterdir():  # upload the directory as-is
        client.put(BUCKET, f"{prefix}ck/{f.name}", f.read_bytes())
    for kind in ["parallel", "dcp_optimized"]:
        out = empty_like_sd(sd)
        dcp.load(out, storage_reader=reader(seaweed, f"s3://{BUCKET}/{prefix}ck", reader_constructor=READERS[kind]))
        assert_same(sd, out)


def test_compressed_checkpoints_load_by_default(seaweed, prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint saved with torch's stream extensions (ZStandard: compressed records),
    through torch's FileSystemWriter or s3torch's writer, loads with the default reader (torch's
    own loop decodes it; the parallel loader refused it with NotImplementedError)."""
    from torch.distributed.checkpoint._extension import ZStandard

    sd = state_dict()
    path = f"s3://{BUCKET}/{prefix}z"
    dcp.save(sd, storage_writer=writer(seaweed, path, thread_count=2, _extensions=[ZStandard()]))
    dcp.save(sd, storage_writer=FileSystemWriter(str(tmp_path / "z"), _extensions=[ZStandard()]))
    client = make_client(seaweed)
    for f in (tmp_path / "z").iterdir():
        client.put(BUCKET, f"{prefix}fz/{f.name}", f.read_bytes())
    raw = sum(v.nbytes for v in (sd["int64"], sd["fp32"]))
    stored = sum(o.size for p in client.list_objects(BUCKET, prefix + "z/") for o in p.object_info)
    assert stored < raw  # compressed (arange and the rest)
    for p in (path, f"s3://{BUCKET}/{prefix}fz"):
        out = empty_like_sd(sd)
        dcp.load(out, storage_reader=reader(seaweed, p))
        assert_same(sd, out)


@pytest.mark.parametrize("threads", [1, 3])
def test_s3torch_checkpoint_loads_with_torch_filesystemreader(
    seaweed, prefix: str, tmp_path: Path, threads: int
) -> None:  # type: ignore[no-untyped-def]
    from s3torch.dcp import _torch_save

    assert _torch_save.fast_path_enabled()  # s3torch writes the tensor records itself on this torch
    sd = state_dict()
    dcp.save(sd, storage_writer=writer(seaweed, f"s3://{BUCKET}/{prefix}ck", thread_count=threads))
    client = make_client(seaweed)
    (tmp_path / "dl").mkdir()
    for page in client.list_objects(BUCKET, prefix + "ck/"):
        for o in page.object_info:
            (tmp_path / "dl" / o.key.rsplit("/", 1)[1]).write_bytes(client.get_object(BUCKET, o.key).read())
    out = empty_like_sd(sd)
    dcp.load(out, storage_reader=FileSystemReader(str(tmp_path / "dl")))
    assert_same(sd, out)
    # Byte for byte what torch's own FileSystemWriter writes for the same state dict, and then
    # the save mark (dcp/_save_mark.py): the id the metadata records for the file.
    dcp.save(sd, storage_writer=FileSystemWriter(str(tmp_path / "fs"), thread_count=threads))
    distcp = sorted(p.name for p in (tmp_path / "fs").glob("*.distcp"))
    assert distcp == sorted(p.name for p in (tmp_path / "dl").glob("*.distcp")) and len(distcp) == threads
    md = FileSystemReader(str(tmp_path / "dl")).read_metadata()
    ids = {info.relative_path: info.s3torch_save_id for info in md.storage_data.values()}
    assert len(set(ids.values())) == 1  # one rank: one save id
    for name in distcp:
        mark = b"\n#s3torch-save:" + ids[name].encode()
        assert (tmp_path / "dl" / name).read_bytes() == (tmp_path / "fs" / name).read_bytes() + mark, name


def _s3tc_env(seaweed, monkeypatch):  # type: ignore[no-untyped-def]
    from s3torch._servers import ACCESS_KEY, SECRET_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    import s3torchconnector
    from s3torchconnector._s3client import S3Client as TcClient
    from s3torchconnector.dcp import S3FileSystem as TcFS

    cfg = s3torchconnector.S3ClientConfig(force_path_style=True)
    return TcFS(REGION, s3_client=TcClient(REGION, endpoint=seaweed.endpoint, s3client_config=cfg))


def test_interchange_with_s3torchconnector(seaweed, prefix: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from s3torchconnector.dcp import S3StorageReader as TcReader
    from s3torchconnector.dcp import S3StorageWriter as TcWriter

    sd = state_dict()
    del sd["empty"]  # not part of the interchange: s3torchconnector's reader rejects empty ranges
    tc_fs = _s3tc_env(seaweed, monkeypatch)
    # s3torchconnector writes, s3torch reads.
    w = TcWriter(REGION, f"s3://{BUCKET}/{prefix}tc")
    w.fs = tc_fs
    dcp.save(sd, storage_writer=w)
    out = empty_like_sd(sd)
    dcp.load(out, storage_reader=reader(seaweed, f"s3://{BUCKET}/{prefix}tc"))
    assert_same(sd, out)
    # s3torch writes, s3torchconnector reads.
    dcp.save(sd, storage_writer=writer(seaweed, f"s3://{BUCKET}/{prefix}ours"))
    r = TcReader(REGION, f"s3://{BUCKET}/{prefix}ours")
    r.fs = tc_fs
    out = empty_like_sd(sd)
    dcp.load(out, storage_reader=r)
    assert_same(sd, out)


# --- resharding: world size 2 <-> 1 with gloo on loopback ---------------------------------

FULL_SHAPE = (64, 48)


def _full() -> torch.Tensor:
    return torch.arange(FULL_SHAPE[0] * FULL_SHAPE[1], dtype=torch.float32).reshape(FULL_SHAPE)


def _one() -> torch.Tensor:
    return torch.arange(5, dtype=torch.float32).reshape(1, 5)


def _dist_worker(rank: int, world: int, port: int, mode: str, path: str, kw: dict) -> None:
    import torch.distributed as dist
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,))
        if mode == "save":
            sd = {
                "rows": distribute_tensor(_full(), mesh, [Shard(0)]),
                "cols": distribute_tensor(_full() * 2, mesh, [Shard(1)]),
                "one": distribute_tensor(_one(), mesh, [Shard(0)]),  # rank 1's shard: no rows
            }
            dcp.save(sd, storage_writer=S3StorageWriter(REGION, path, **kw))
        else:
            sd = {
                "rows": distribute_tensor(torch.zeros(FULL_SHAPE), mesh, [Shard(0)]),
                "cols": distribute_tensor(torch.zeros(FULL_SHAPE), mesh, [Shard(1)]),
                "one": distribute_tensor(torch.zeros(1, 5), mesh, [Shard(0)]),
            }
            dcp.load(sd, storage_reader=S3StorageReader(REGION, path, **kw))
            assert torch.equal(sd["rows"].full_tensor(), _full())
            assert torch.equal(sd["cols"].full_tensor(), _full() * 2)
            assert torch.equal(sd["one"].full_tensor(), _one())
    finally:
        dist.destroy_process_group()
    # Success: leave without interpreter finalization. torch's gloo worker thread can still
    # be freeing a finished collective's tensors when the interpreter finalizes; taking the
    # GIL then ends that thread with pthread_exit inside C++ and the child dies of SIGABRT
    # ("terminate called without an active exception", backtrace in
    # ProcessGroupGloo::runLoop -> ~AsyncAllgatherCoalescedWork). That is torch's, not ours;
    # s3torch's own clean exit from spawned children is asserted in test_process_and_errors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_reshard_world_2_to_1_and_1_to_2(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    kw = {"s3client_config": make_client(seaweed).s3client_config, "endpoint": seaweed.endpoint}
    path2 = f"s3://{BUCKET}/{prefix}ws2"
    tmp.spawn(_dist_worker, args=(2, free_port(), "save", path2, kw), nprocs=2, join=True)
    out = {"rows": torch.zeros(FULL_SHAPE), "cols": torch.zeros(FULL_SHAPE), "one": torch.zeros(1, 5)}
    reader = S3StorageReader(REGION, path2, **kw)
    dcp.load(out, storage_reader=reader)  # its chunks add up, the empty one included
    assert torch.equal(out["rows"], _full()) and torch.equal(out["cols"], _full() * 2)
    assert torch.equal(out["one"], _one())
    assert [list(c.sizes) for c in reader.read_metadata().state_dict_metadata["one"].chunks] == [[1, 5], [0, 5]]

    path1 = f"s3://{BUCKET}/{prefix}ws1"
    full = {"rows": _full(), "cols": _full() * 2, "one": _one()}
    dcp.save(full, storage_writer=S3StorageWriter(REGION, path1, **kw))
    tmp.spawn(_dist_worker, args=(2, free_port(), "load", path1, kw), nprocs=2, join=True)


def test_async_save(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    sd = state_dict()
    path = f"s3://{BUCKET}/{prefix}async"
    expected = state_dict()
    fut = dcp.async_save(sd, storage_writer=writer(seaweed, path), no_dist=True)
    sd["fp32"].add_(1)  # training goes on: the staged copy is what gets saved
    fut.result(timeout=120)
    out = empty_like_sd(sd)
    dcp.load(out, storage_reader=reader(seaweed, path))
    assert_same(expected, out)


def _process_async_worker(rank: int, port: int, path: str, kw: dict) -> None:
    """One rank under torchrun's environment, saving with torch's process-based async save:
    the writer is pickled to a background process that torch spawns and keeps for later saves."""
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), AWS_EC2_METADATA_DISABLED="true")
    dist.init_process_group("gloo", rank=rank, world_size=1)
    try:
        for i in range(2):  # the second save goes to the same background process
            sd = state_dict()
            fut = dcp.async_save(
                sd,
                storage_writer=S3StorageWriter(REGION, f"{path}/{i}", **kw),
                async_checkpointer_type=AsyncCheckpointerType.PROCESS,
            )
            sd["fp32"].add_(1)  # training goes on: the staged copy is what gets saved
            fut.result(timeout=120)
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # as _dist_worker: no interpreter finalization under gloo's threads


def test_process_based_async_save(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """``dcp.async_save(async_checkpointer_type=PROCESS)`` pickles the storage writer into a
    process of torch's own (spawned); both saves load back as they were when staged."""
    kw = {"s3client_config": make_client(seaweed).s3client_config, "endpoint": seaweed.endpoint}
    path = f"s3://{BUCKET}/{prefix}process"
    tmp.spawn(_process_async_worker, args=(free_port(), path, kw), nprocs=1, join=True)
    for i in range(2):
        out = empty_like_sd(state_dict())
        dcp.load(out, storage_reader=reader(seaweed, f"{path}/{i}"))
        assert_same(state_dict(), out)


# --- bad input ---------------------------------------------------------------------------


def test_bad_paths() -> None:
    for bad in ["/local/dir", "http://bucket/x", "s3://"]:
        with pytest.raises(ValueError):
            S3StorageWriter(REGION, bad)
        with pytest.raises(ValueError):
            S3StorageReader(REGION, bad)
    assert S3FileSystem.validate_checkpoint_id("s3://b/p")
    assert not S3FileSystem.validate_checkpoint_id("/tmp/p")


def test_missing_checkpoint(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    # DCP wraps storage errors in a CheckpointException; the cause is named in its text.
    with pytest.raises(CheckpointException) as ei:
        dcp.load({"a": torch.zeros(1)}, storage_reader=reader(seaweed, f"s3://{BUCKET}/{prefix}nothing"))
    text = str(ei.value)
    assert f"no DCP checkpoint at s3://{BUCKET}/{prefix}nothing: its metadata object does not exist" in text


def _corrupt(seaweed, prefix: str, mutate) -> str:  # type: ignore[no-untyped-def]
    path = f"s3://{BUCKET}/{prefix}bad"
    dcp.save({"w": torch.randn(256, 256)}, storage_writer=writer(seaweed, path))
    client = make_client(seaweed)
    key = f"{prefix}bad/__0_0.distcp"
    data = bytearray(client.get_object(BUCKET, key).read())
    client.put(BUCKET, key, bytes(mutate(data)))
    return path


def test_truncated_distcp_is_reported(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    path = _corrupt(seaweed, prefix, lambda d: d[: len(d) // 2])
    with pytest.raises(CheckpointException) as ei:
        dcp.load({"w": torch.zeros(256, 256)}, storage_reader=reader(seaweed, path))
    assert "__0_0.distcp" in str(ei.value) and "item w" in str(ei.value)


def test_corrupt_distcp_fails_its_checksum(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    def flip(d: bytearray) -> bytearray:
        d[len(d) // 2] ^= 0xFF  # one byte inside the tensor data
        return d

    path = _corrupt(seaweed, prefix, flip)
    with pytest.raises(CheckpointException) as ei:
        dcp.load({"w": torch.zeros(256, 256)}, storage_reader=reader(seaweed, path))
    assert "CRC32" in str(ei.value) and "item w" in str(ei.value)
    assert issubclass(CheckpointCorruptError, Exception)


def test_shape_mismatch_is_reported(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    path = f"s3://{BUCKET}/{prefix}shape"
    dcp.save({"w": torch.randn(10, 10)}, storage_writer=writer(seaweed, path))
    with pytest.raises(CheckpointException, match="Size mismatch.*w"):
        dcp.load({"w": torch.zeros(10, 11)}, storage_reader=reader(seaweed, path))


def test_overwrite_false_refuses_before_writing(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    path = f"s3://{BUCKET}/{prefix}once"
    dcp.save({"w": torch.ones(3)}, storage_writer=writer(seaweed, path))
    client = make_client(seaweed)
    before = {o.key: o.etag for p in client.list_objects(BUCKET, prefix) for o in p.object_info}
    with pytest.raises(CheckpointException, match="already exists"):
        dcp.save({"w": torch.zeros(3), "x": torch.zeros(5)}, storage_writer=writer(seaweed, path, overwrite=False))
    after = {o.key: o.etag for p in client.list_objects(BUCKET, prefix) for o in p.object_info}
    assert before == after


class _FailingPlanner(DefaultSavePlanner):
    """Fails while the third tensor is being written, as a crashing save would."""

    calls = 0

    def resolve_data(self, write_item):  # type: ignore[no-untyped-def]
        type(self).calls += 1
        if type(self).calls == 3:
            raise RuntimeError("device lost mid-save")
        return super().resolve_data(write_item)


@pytest.mark.parametrize("threads", [1, 3])
def test_failed_save_leaves_no_metadata_and_no_uploads(seaweed, prefix: str, threads: int) -> None:  # type: ignore[no-untyped-def]
    # With several writer threads the failure happens in one of them; it still fails the save
    # (torch's own loop would lose it with its thread) and every upload is aborted.
    path = f"s3://{BUCKET}/{prefix}failed"
    sd = {f"t{i}": torch.randn(1024, 1024) for i in range(5)}  # 4 MiB each: a multipart upload is under way
    _FailingPlanner.calls = 0
    with pytest.raises(CheckpointException, match="device lost"):
        dcp.save(sd, storage_writer=writer(seaweed, path, thread_count=threads), planner=_FailingPlanner())
    keys = [o.key for p in make_client(seaweed).list_objects(BUCKET, prefix) for o in p.object_info]
    assert keys == []  # no .metadata, no half-written .distcp
    ups = seaweed.boto3_client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
    assert ups == []


@pytest.mark.filterwarnings("ignore:Detected an existing checkpoint")
def test_failed_overwrite_leaves_nothing_loadable(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    path = f"s3://{BUCKET}/{prefix}again"
    dcp.save({f"t{i}": torch.zeros(1024, 1024) for i in range(5)}, storage_writer=writer(seaweed, path))
    _FailingPlanner.calls = 0
    with pytest.raises(CheckpointException, match="device lost"):
        dcp.save(
            {f"t{i}": torch.ones(1024, 1024) for i in range(5)},
            storage_writer=writer(seaweed, path),
            planner=_FailingPlanner(),
        )
    # The old metadata was removed before any data was replaced: nothing at this path loads,
    # rather than a mix of old and new tensors.
    with pytest.raises(CheckpointException, match="no DCP checkpoint"):
        dcp.load({f"t{i}": torch.empty(1024, 1024) for i in range(5)}, storage_reader=reader(seaweed, path))


def test_writer_accepts_filesystemwriter_options(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    w = writer(
        seaweed,
        f"s3://{BUCKET}/{prefix}opts",
        single_file_per_rank=False,
        sync_files=True,
        per_thread_copy_ahead=0,
        cache_staged_state_dict=False,
        overwrite=True,
    )
    assert w.sync_files is False  # never fsync/os.sync for S3
    dcp.save({"a": torch.ones(2), "b": torch.zeros(3)}, storage_writer=w)
    keys = {o.key for p in make_client(seaweed).list_objects(BUCKET, prefix) for o in p.object_info}
    assert {f"{prefix}opts/__0_0.distcp", f"{prefix}opts/__0_1.distcp"} <= keys
    with pytest.raises(TypeError, match="unexpected"):
        writer(seaweed, f"s3://{BUCKET}/{prefix}x", no_such_option=1)


def test_fresh_destinations_are_made_resident_ahead_of_the_gets(seaweed, prefix: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A restore into memory no one has written yet (``model.to_empty()``) hands the tensors a
    GET lands in straight to the prefaulting thread (the records that come whole with the probe
    are copied, not fetched), the loading thread helps it while it waits for each GET, and every
    byte lands as saved."""
    from s3torch.dcp import _parallel_load

    handed: List[List[tuple]] = []
    real = _parallel_load.Prefaulter

    helps: List[int] = []

    class Recorder(real):  # type: ignore[misc, valid-type]
        def __init__(self, buffers: List[torch.Tensor]) -> None:
            handed.append(sorted((b.data_ptr(), b.numel()) for b in buffers))
            super().__init__(buffers)

        def help_until(self, done) -> None:  # type: ignore[no-untyped-def]
            helps.append(1)
            super().help_until(done)

    monkeypatch.setattr(_parallel_load, "Prefaulter", Recorder)
    g = torch.Generator().manual_seed(5)
    sd = {
        "big": torch.randn(2048, 1024, generator=g),
        "mid": torch.randn(300, 100, generator=g),
        "small": torch.ones(10),
    }
    path = f"s3://{BUCKET}/{prefix}fresh"
    dcp.save(sd, storage_writer=writer(seaweed, path))
    out = {k: torch.empty_like(v) for k, v in sd.items()}
    r = reader(seaweed, path)
    dcp.load(out, storage_reader=r)
    assert_same(sd, out)
    assert handed == [sorted((out[k].data_ptr(), out[k].numel() * 4) for k in ("big", "mid"))]
    assert len(helps) == 2  # the loading thread offered a hand while it waited for each GET
    assert r.last_load_stats["direct"] == 2, r.last_load_stats
