"""Saves through the staging ring (SeaweedFS): the path CUDA tensors take, device-to-host a
slot at a time into the multipart upload, run here on CPU tensors forced through an unpinned
ring (``S3StorageWriter._force_staging``) so that CI covers it without a GPU. The objects are
byte for byte torch's FileSystemWriter's; a failed copy names its tensor and leaves nothing
behind. The CUDA runs are in tests/gpu/test_cuda_save.py."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException

from s3torch.dcp import S3StorageWriter, _save_mark, _staging
from s3torch.dcp._errors import StagingError
from tests.conftest import BUCKET, make_client
from tests.integration.test_dcp import reader, writer
from tests.unit.test_staged_save import dtypes, fail_copy, filled, views

MiB = 1024 * 1024


def every_kind(device: str = "cpu") -> dict:
    """Every dtype, and every layout of views (transposed, sliced, offset, expanded, 0-dim,
    empty), plus tensors of many slots and the non-tensor items a state dict carries; the
    tensors and the views' bases on ``device``."""
    sd: dict = {str(d).replace("torch.", ""): filled((37, 29), d, i).to(device) for i, d in enumerate(dtypes())}
    sd.update({f"bf16_{k}": v for k, v in views(torch.bfloat16, device).items()})
    sd.update({f"i32_{k}": v for k, v in views(torch.int32, device).items()})
    g = torch.Generator().manual_seed(5)
    sd["big"] = torch.randn(512, 600, generator=g).to(device)
    sd["big_t"] = torch.randn(700, 400, generator=g).to(device).t()
    sd["nested"] = {"w": torch.randn(64, 64, generator=g).to(torch.bfloat16).to(device), "step": 3}
    sd["blob"] = b"\x00raw\xff"
    return sd


def tensors_in(sd: dict) -> int:
    return sum(tensors_in(v) if isinstance(v, dict) else isinstance(v, torch.Tensor) for v in sd.values())


def as_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def forced(server: Any, path: str, **kw: Any) -> S3StorageWriter:
    w = writer(server, path, **kw)
    w._force_staging = True
    return w


def objects(client: Any, prefix: str) -> dict:
    return {
        o.key.rsplit("/", 1)[1]: client.get_object(BUCKET, o.key).read()
        for page in client.list_objects(BUCKET, prefix)
        for o in page.object_info
    }


def rings_whole() -> bool:
    return all(len(r.free) == r.nslots for r in _staging._pool.values())


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("slot, nslots", [(512, 1), (512, 3), (8 * MiB, 8)])
def test_forced_ring_save_is_torch_filesystemwriters_bytes(seaweed, prefix: str, tmp_path: Path, slot, nslots) -> None:  # type: ignore[no-untyped-def]
    """Through rings of 1 and 3 slots of 512 B (thousands of slots per large tensor) and of
    the default 8 x 8 MiB (a slot holds any tensor here), with 2 writer threads."""
    sd = every_kind()
    path = f"s3://{BUCKET}/{prefix}ck"
    w = forced(seaweed, path, thread_count=2, staging_bytes=slot * nslots, staging_slot_bytes=slot)
    dcp.save(sd, storage_writer=w)
    assert w.last_save_stats["staged"] == tensors_in(sd)
    big = sd["big"].nbytes + sd["big_t"].nbytes
    assert w.last_save_stats["ring_slot_uses"] >= (big // slot if slot < big else 2)
    assert rings_whole()
    assert pickle.loads(pickle.dumps(w)).staging_slot_bytes == slot  # writers pickle (async_save, MSC)
    dcp.save(sd, storage_writer=FileSystemWriter(str(tmp_path / "fs"), thread_count=2))
    got = objects(make_client(seaweed), f"{prefix}ck/")
    want = {p.name: p.read_bytes() for p in (tmp_path / "fs").glob("*.distcp")}
    # torch's bytes, each file ending with its save mark
    ours = {k: _save_mark.split(v) for k, v in got.items() if k.endswith(".distcp")}
    assert len(want) == 2 and {k: v[0] for k, v in ours.items()} == want
    assert all(v[1] for v in ours.values())
    # and it loads, bit for bit
    out = {k: (torch.zeros_like(v) if isinstance(v, torch.Tensor) else v) for k, v in sd.items() if k != "nested"}
    dcp.load(out, storage_reader=reader(seaweed, path))
    for k, v in out.items():
        if isinstance(v, torch.Tensor):
            assert as_bytes(v) == as_bytes(sd[k]), k


def test_cpu_tensors_skip_the_ring_unless_forced(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    w = writer(seaweed, f"s3://{BUCKET}/{prefix}plain")
    dcp.save({"w": torch.ones(100)}, storage_writer=w)
    assert w.last_save_stats == {"staged": 0, "ring_slot_uses": 0}


@pytest.mark.parametrize(
    "threads, error",
    [
        (1, torch.OutOfMemoryError("CUDA out of memory (injected)")),
        (2, RuntimeError("CUDA error: an illegal memory access was encountered (injected)")),
    ],
)
def test_a_failed_copy_names_the_tensor_and_leaves_nothing(seaweed, prefix: str, monkeypatch, threads, error) -> None:  # type: ignore[no-untyped-def]
    """The 12th slot's copy fails, after more than a part (8 MiB) of the file went to its
    multipart upload: a StagingError naming the item and the object, the upload aborted, no
    file and no .metadata, and the ring back in the pool with every slot free."""
    uploads_then: list = []
    s3 = seaweed.boto3_client()
    fail_copy(
        monkeypatch,
        12,
        error,
        lambda: uploads_then.extend(s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])),
    )
    _staging.release_staging_memory()
    sd = {f"t{i}": torch.randn(1024, 1024) for i in range(6)}  # 4 MiB each
    path = f"s3://{BUCKET}/{prefix}failed"
    w = forced(seaweed, path, thread_count=threads, staging_bytes=3 * MiB, staging_slot_bytes=MiB)
    with pytest.raises(CheckpointException) as ei:
        dcp.save(sd, storage_writer=w)
    ((failure, _),) = ei.value.failures.values()  # torch keeps (exception, its traceback)
    assert isinstance(failure, StagingError), repr(failure)
    item = "t2" if threads == 1 else r"t\d"
    assert isinstance(failure.__cause__, type(error))
    pattern = rf"s3://{BUCKET}/{prefix}failed/__0_\d\.distcp item {item}: copying its bytes to host memory"
    assert re.match(pattern, str(failure)), str(failure)
    assert objects(make_client(seaweed), prefix) == {}  # no .metadata, no .distcp
    if threads == 1:  # t0, t1 and t2's first slot were written: the upload had begun
        assert len(uploads_then) == 1
    assert s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", []) == []
    rings = [r for k, r in _staging._pool.items() if k[0] == os.getpid() and k[1:] == (3 * MiB, MiB, False)]
    assert rings and rings_whole()


def test_ring_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="staging_slot_bytes must be a positive multiple of 64"):
        S3StorageWriter("us-east-1", f"s3://{BUCKET}/x", staging_slot_bytes=100)
    with pytest.raises(ValueError, match="too small for one slot"):
        S3StorageWriter("us-east-1", f"s3://{BUCKET}/x", staging_bytes=MiB, staging_slot_bytes=2 * MiB)


def test_one_writer_thread_with_cuda_writes_smallest_first(seaweed, prefix: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Where CUDA is available, torch's loop with one writer thread (_OverlappingCpuLoader)
    writes a file's tensors smallest first; the writer keeps that order so its files stay
    torch's bytes (compared on a GPU by tests/gpu/test_cuda_save.py)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    sd = {"c": torch.zeros(300), "a": torch.zeros(500), "b": torch.zeros(100), "d": torch.zeros(300)}
    w = writer(seaweed, f"s3://{BUCKET}/{prefix}order", thread_count=1)
    dcp.save(sd, storage_writer=w)
    md = reader(seaweed, f"s3://{BUCKET}/{prefix}order").read_metadata()
    offsets = {idx.fqn: info.offset for idx, info in md.storage_data.items()}
    assert sorted(offsets, key=offsets.__getitem__) == ["b", "c", "d", "a"]  # by size, stable
