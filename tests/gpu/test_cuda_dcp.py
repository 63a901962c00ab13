"""DCP loads into CUDA state dicts through the pinned staging ring, and saves from them,
byte-exact against the saved tensors (SeaweedFS on loopback)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as tmp
from torch.distributed.checkpoint.api import CheckpointException

from s3torch._servers import free_port
from s3torch.dcp import _staging
from tests.conftest import BUCKET
from tests.integration.test_dcp import (
    FULL_SHAPE,
    _dist_worker,
    _full,
    make_client,
    reader,
    writer,
)

DEV = torch.device("cuda")


def _source() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "bf16": torch.randn(1024, 1536, generator=g).to(torch.bfloat16),
        "fp16": torch.randn(333, 777, generator=g).to(torch.float16),
        "fp32": torch.randn(2048, 1024, generator=g),
        "int64": torch.arange(300_000),
        "bool": torch.rand(500_000, generator=g) > 0.5,
        "saved_t": torch.randn(512, 300, generator=g).t(),  # a permuted stored layout
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 7),
        "small": torch.randn(5, generator=g),
        "nested": {"w": torch.randn(700, 700, generator=g).to(torch.bfloat16)},
    }


def _cuda_dest(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        if isinstance(v, dict):
            out[k] = _cuda_dest(v)
        elif k == "fp32":  # a transposed CUDA destination
            out[k] = torch.zeros(v.shape[::-1], device=DEV).t()
        elif k == "int64":  # a strided view of a larger CUDA tensor
            out[k] = torch.zeros(v.numel() * 2, dtype=v.dtype, device=DEV)[::2]
        else:
            out[k] = torch.full(v.shape, 7, dtype=v.dtype, device=DEV)
    return out


def _assert_exact(expected: dict, got: dict) -> None:
    for k, v in expected.items():
        if isinstance(v, dict):
            _assert_exact(v, got[k])
            continue
        assert got[k].device.type == "cuda", k
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k].cpu(), v), k  # bit-exact (bf16/fp16 compared as stored)


@pytest.fixture(scope="module")
def ckpt(seaweed, prefix: str):  # type: ignore[no-untyped-def]
    sd = _source()
    path = f"s3://{BUCKET}/{prefix}cuda"
    dcp.save(sd, storage_writer=writer(seaweed, path))
    return sd, path


@pytest.fixture(scope="module")
def prefix() -> str:
    import uuid

    return f"gpu/{uuid.uuid4().hex[:8]}/"


@pytest.mark.parametrize("ring", [(64 * 1024, 16 * 1024), (256 << 20, 8 << 20), (4 << 20, 4 << 20)])
def test_load_into_cuda_state_dict(seaweed, ckpt, ring) -> None:  # type: ignore[no-untyped-def]
    sd, path = ckpt
    out = _cuda_dest(sd)
    expected = {k: v.to(DEV) for k, v in sd.items() if isinstance(v, torch.Tensor) and v.numel()}
    r = reader(seaweed, path, staging_bytes=ring[0], staging_slot_bytes=ring[1])
    torch.cuda.synchronize()
    dcp.load(out, storage_reader=r)
    # No synchronize: comparisons queued on the current stream run after the staging copies.
    same = {k: (out[k] == e).all() for k, e in expected.items()}
    assert all(bool(v) for v in same.values()), same
    _assert_exact(sd, out)
    st = r.last_load_stats
    assert st["fallback"] == 0 and st["direct"] == 0 and st["staged"] >= 6, st


def test_load_on_a_side_stream_is_ordered_on_that_stream(seaweed, ckpt) -> None:  # type: ignore[no-untyped-def]
    sd, path = ckpt
    out = _cuda_dest(sd)
    expected = sd["bf16"].to(DEV)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        dcp.load(out, storage_reader=reader(seaweed, path))
        same = (out["bf16"] == expected).all()  # queued on s, after the copies
    s.synchronize()
    assert bool(same)
    _assert_exact(sd, out)


def test_pinned_memory_is_the_ring_and_is_reused(seaweed, ckpt) -> None:  # type: ignore[no-untyped-def]
    sd, path = ckpt
    _staging.release_staging_memory()
    ring = 32 << 20
    stats = getattr(torch.cuda, "host_memory_stats", None)
    if stats is not None:
        torch.cuda.reset_peak_host_memory_stats()
    for _ in range(2):
        out = _cuda_dest(sd)
        dcp.load(out, storage_reader=reader(seaweed, path, staging_bytes=ring, staging_slot_bytes=4 << 20))
        _assert_exact(sd, out)
    pooled = [r for r in _staging._pool.values() if r.pinned]
    assert len(pooled) == 1 and pooled[0].nbytes == ring  # one ring, kept for the next load
    # Its slots are page-locked (in place: cudaHostRegister), so copies from them are asynchronous.
    assert all(m is not None and m.is_pinned() for m in pooled[0].memory)
    assert all(lock is not None for lock in pooled[0]._locked)
    if stats is not None:
        peak = torch.cuda.host_memory_stats().get("allocated_bytes.all.peak", 0)
        assert peak <= ring, f"pinned host memory peaked at {peak} bytes, the ring is {ring}"


def test_corrupt_bytes_into_cuda_name_the_item(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    path = f"s3://{BUCKET}/{prefix}bad"
    dcp.save({"w": torch.randn(512, 512)}, storage_writer=writer(seaweed, path))
    client = make_client(seaweed)
    key = f"{prefix}bad/__0_0.distcp"
    data = bytearray(client.get_object(BUCKET, key).read())
    data[len(data) // 2] ^= 0xFF
    client.put(BUCKET, key, bytes(data))
    with pytest.raises(CheckpointException) as ei:
        dcp.load(
            {"w": torch.zeros(512, 512, device=DEV)},
            storage_reader=reader(seaweed, path, staging_bytes=1 << 20, staging_slot_bytes=64 << 10),
        )
    assert "CRC32" in str(ei.value) and "item w" in str(ei.value)
    for ring in _staging._pool.values():
        assert len(ring.free) == ring.nslots


def test_reshard_saved_by_2_ranks_loads_into_one_cuda_rank(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    kw = {"s3client_config": make_client(seaweed).s3client_config, "endpoint": seaweed.endpoint}
    path = f"s3://{BUCKET}/{prefix}ws2"
    tmp.spawn(_dist_worker, args=(2, free_port(), "save", path, kw), nprocs=2, join=True)
    out = {"rows": torch.zeros(FULL_SHAPE, device=DEV), "cols": torch.zeros(FULL_SHAPE, device=DEV)}
    dcp.load(out, storage_reader=reader(seaweed, path))
    assert torch.equal(out["rows"].cpu(), _full()) and torch.equal(out["cols"].cpu(), _full() * 2)


def test_save_from_cuda_state_dict_round_trips(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    src = _source()
    cuda_sd = {
        k: (v.to(DEV) if isinstance(v, torch.Tensor) else {kk: vv.to(DEV) for kk, vv in v.items()})
        for k, v in src.items()
    }
    path = f"s3://{BUCKET}/{prefix}from-cuda"
    dcp.save(cuda_sd, storage_writer=writer(seaweed, path, thread_count=2))
    out = _cuda_dest(src)
    dcp.load(out, storage_reader=reader(seaweed, path))
    _assert_exact(src, out)
    # and into CPU memory, the direct path
    cpu = {
        k: (
            torch.zeros_like(v.contiguous())
            if isinstance(v, torch.Tensor)
            else {kk: torch.zeros_like(vv) for kk, vv in v.items()}
        )
        for k, v in src.items()
    }
    dcp.load(cpu, storage_reader=reader(seaweed, path))
    for k, v in src.items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(cpu[k], v), k


def test_a_slow_slot_into_cuda_holds_only_itself(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """Issue 22: slots land in completion order on the CUDA path too. The proxy holds the GET
    of the first slot for 2 s; the other slots are copied to the device around it."""
    from tests.integration.test_staging import load_with_a_held_slot

    out = torch.zeros(256, 1024, device=DEV)
    src, stats, held = load_with_a_held_slot(seaweed, prefix, out)
    assert held == 1
    assert torch.equal(out.cpu(), src)
    assert stats["staged"] == 1 and stats["ring_out_of_order"] >= 3, stats


def test_first_load_pins_the_ring_while_the_probe_runs(seaweed, ckpt, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Issue 22: a fresh process's first load into CUDA starts page-locking its ring before
    the probe's GETs, not after them."""
    from s3torch.dcp import _parallel_load

    sd, path = ckpt
    _staging.release_staging_memory()
    events: list = []
    orig_prepare, orig_probe = _staging.StagingRing.prepare, _parallel_load.ParallelLoader._probe

    def prepare(self, nbytes):  # type: ignore[no-untyped-def]
        events.append(("prepare", self.pinned))
        return orig_prepare(self, nbytes)

    def probe(self, items):  # type: ignore[no-untyped-def]
        events.append(("probe", None))
        return orig_probe(self, items)

    monkeypatch.setattr(_staging.StagingRing, "prepare", prepare)
    monkeypatch.setattr(_parallel_load.ParallelLoader, "_probe", probe)
    out = _cuda_dest(sd)
    dcp.load(out, storage_reader=reader(seaweed, path))
    _assert_exact(sd, out)
    assert events[:2] == [("prepare", True), ("probe", None)], events


def _shared_cuda_worker(rank: int, port: int, path: str, kw: dict, out: str) -> None:
    import json
    import os
    import sys

    import torch.distributed as dist

    from s3torch.dcp import S3StorageReader

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    res: dict = {}
    try:
        src = _source()
        dest = _cuda_dest(src)
        r = S3StorageReader("us-east-1", path, share_reads=True, share_round_bytes=4 << 20, **kw)
        dcp.load(dest, storage_reader=r)
        try:
            _assert_exact(src, dest)
            res["exact"] = True
        except AssertionError as e:
            res["exact"] = str(e)
        res.update(r.last_load_stats)
    except BaseException as e:
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        with open(os.path.join(out, f"{rank}.json"), "w") as f:
            json.dump(res, f)
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


def test_share_reads_into_cuda_over_gloo(seaweed, ckpt, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Issue 22: two gloo ranks on the one GPU restore the same CUDA state dict with
    share_reads: each record leaves S3 once, both ranks byte-exact. (NCCL between ranks
    needs a GPU per rank: not run here.)"""
    import json

    sd, path = ckpt
    kw = {"s3client_config": make_client(seaweed).s3client_config, "endpoint": seaweed.endpoint}
    tmp.spawn(_shared_cuda_worker, args=(free_port(), path, kw, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(2)]
    for r, res in enumerate(ranks):
        assert res.get("exact") is True, (r, res)
        assert res["bytes_shared_in"] > 0, (r, res)
    # Both ranks need every record, and each record left S3 once: together they read at most
    # the files' bytes (not exactly: a record with nothing to place, such as an empty
    # tensor's, is never fetched; on the H200, 2026-12-04: 16,560,305 of 16,561,818 bytes),
    # where two ranks each reading alone would read twice that.
    client = make_client(seaweed)
    key = path.split(f"s3://{BUCKET}/", 1)[1]
    stored = sum(
        o.size for p in client.list_objects(BUCKET, key + "/") for o in p.object_info if o.key.endswith(".distcp")
    )
    assert 0.99 * stored <= sum(res["bytes_from_s3"] for res in ranks) <= stored
