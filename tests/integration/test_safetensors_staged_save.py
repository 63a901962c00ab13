"""s3torch.safetensors saves through the staging ring (SeaweedFS): the way CUDA tensors go,
device-to-host a slot at a time into the multipart upload, run here on CPU tensors forced
through an unpinned ring (``_save.FORCE_STAGING``) so that CI covers it without a GPU. The
files are the ones written without the ring, byte for byte; a failed copy names its tensor
and leaves nothing behind. The CUDA runs are in tests/gpu/test_cuda_safetensors.py."""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List

import pytest
import safetensors.torch as sts
import torch

from s3torch.dcp import StagingError, _staging
from s3torch.safetensors import _save, save_file, save_torch_state_dict
from tests.conftest import BUCKET, make_client
from tests.integration.test_safetensors import _model
from tests.integration.test_staged_save import objects, rings_whole
from tests.unit.test_staged_save import fail_copy

MiB = 1024 * 1024


@pytest.fixture
def forced(monkeypatch: Any) -> Any:
    """Host tensors through the ring; returns a function setting the ring's size."""
    monkeypatch.setattr(_save, "FORCE_STAGING", True)
    _staging.release_staging_memory()

    def size(ring: int, slot: int) -> None:
        monkeypatch.setattr(_save, "DEFAULT_SAVE_RING_BYTES", ring)
        monkeypatch.setattr(_save, "DEFAULT_SAVE_SLOT_BYTES", slot)

    yield size
    _staging.release_staging_memory()


def _ring(ring: int, slot: int) -> _staging.StagingRing:
    return _staging._pool[(os.getpid(), ring, slot, False)]


@pytest.mark.parametrize("slot, nslots", [(512, 3), (8 * MiB, 8)])
def test_forced_ring_save_is_the_packages_bytes(seaweed, prefix: str, forced, slot, nslots) -> None:  # type: ignore[no-untyped-def]
    """Every dtype, a 0-dim and an empty tensor, and a 2.4 MB one: through 3 slots of 512 B
    (thousands of slot uses) and through the default 8 x 8 MiB."""
    forced(slot * nslots, slot)
    d = _model(3)
    seen: List[int] = []
    uri = f"s3://{BUCKET}/{prefix}m.safetensors"
    planned = _save.plan(d, {"format": "pt"})
    _save.write(make_client(seaweed), BUCKET, f"{prefix}m.safetensors", d, planned, on_bytes=seen.append)
    raw = make_client(seaweed).get_object(BUCKET, f"{prefix}m.safetensors").read()
    assert raw == sts.save(d, {"format": "pt"})
    assert sum(seen) == len(raw)
    nonempty = [t for t in d.values() if t.numel()]
    slots_used = sum(-(-t.numel() * t.element_size() // slot) for t in nonempty)
    assert _ring(slot * nslots, slot).uses == slots_used and rings_whole()
    save_file(d, uri, {"format": "pt"}, client=make_client(seaweed))  # the public entry point too
    assert make_client(seaweed).get_object(BUCKET, f"{prefix}m.safetensors").read() == raw


def test_a_sharded_save_through_rings_is_the_same_folder(seaweed, prefix: str, forced, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Four shards written at once, each through a ring of its own: the same files as
    without the ring."""
    client = make_client(seaweed)
    g = torch.Generator().manual_seed(4)
    sd = {f"layers.{i}.w": torch.randn(300, 200, generator=g).to(torch.bfloat16) for i in range(8)}
    sd["norm"] = torch.randn(200, generator=g)
    monkeypatch.setattr(_save, "FORCE_STAGING", False)
    save_torch_state_dict(sd, f"s3://{BUCKET}/{prefix}plain/", client=client, max_shard_size="250KB")
    forced(4 * 4096, 4096)
    save_torch_state_dict(sd, f"s3://{BUCKET}/{prefix}ring/", client=client, max_shard_size="250KB")
    plain, ring = objects(client, f"{prefix}plain/"), objects(client, f"{prefix}ring/")
    assert len(plain) > 4 and ring == plain
    assert rings_whole()


@pytest.mark.parametrize(
    "error",
    [torch.OutOfMemoryError("CUDA out of memory (injected)"), RuntimeError("CUDA error: an illegal memory access")],
)
def test_a_failed_copy_names_the_tensor_and_leaves_nothing(seaweed, prefix: str, forced, monkeypatch, error) -> None:  # type: ignore[no-untyped-def]
    """The 12th slot's copy fails, after more than a part (8 MiB) of the file went to its
    multipart upload: a StagingError naming the object and the tensor, the upload aborted,
    no object, and the ring back in the pool with every slot free."""
    forced(3 * MiB, MiB)
    s3 = seaweed.boto3_client()
    uploads_then: List[Dict[str, Any]] = []
    fail_copy(
        monkeypatch,
        12,
        error,
        lambda: uploads_then.extend(s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])),
    )
    sd = {f"t{i}": torch.randn(1024, 1024) for i in range(6)}  # 4 MiB each: t2's last slot fails
    with pytest.raises(StagingError) as ei:
        save_file(sd, f"s3://{BUCKET}/{prefix}failed.safetensors", client=make_client(seaweed))
    pattern = rf"s3://{BUCKET}/{re.escape(prefix)}failed\.safetensors tensor 't2': copying its bytes to host memory"
    assert re.match(pattern, str(ei.value)), str(ei.value)
    assert isinstance(ei.value.__cause__, type(error))
    assert len(uploads_then) == 1  # the upload had begun
    assert objects(make_client(seaweed), prefix) == {}
    assert s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", []) == []
    assert _ring(3 * MiB, MiB).uses == 11 and rings_whole()


def test_host_tensors_skip_the_ring_unless_forced(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    _staging.release_staging_memory()
    save_file({"w": torch.ones(100)}, f"s3://{BUCKET}/{prefix}w.safetensors", client=make_client(seaweed))
    assert _staging._pool == {}
