"""s3torch.safetensors into CUDA and pinned memory, byte-exact against the CPU load (SeaweedFS on
loopback). The CPU-side counterpart CI runs is test_the_cuda_path_on_cpu in
tests/integration/test_safetensors.py."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch

from s3torch.safetensors import load_file, safe_open, save_file
from tests.conftest import BUCKET, make_client
from tests.integration.test_safetensors import _model
from tests.unit.test_safetensors_header import _same


def test_load_into_cuda_pinned_and_cast(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    d = _model(7)
    uri = f"s3://{BUCKET}/{prefix}m.safetensors"
    save_file(d, uri, client=client)
    out = load_file(uri, device="cuda", client=client, staging_bytes=4 << 20, staging_slot_bytes=1 << 20)
    assert all(t.device.type == "cuda" for t in out.values())
    assert all(_same(out[k].cpu(), d[k]) for k in d)
    pinned = load_file(uri, pin_memory=True, client=client)
    assert all(t.is_pinned() for t in pinned.values() if t.numel())
    assert all(_same(pinned[k], d[k]) for k in d)
    with safe_open(uri, device=0, dtype=torch.float16, client=client) as f:
        big = f.get_tensor("big")
        assert big.device == torch.device("cuda", 0) and big.dtype == torch.float16
        # The model's bytes are random: NaNs among them, whose payloads a cast on the device
        # need not keep as the CPU's does. Every other value must match exactly.
        exact = dict(rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(big.cpu(), d["big"].half(), **exact)
        torch.testing.assert_close(f.get_slice("big")[3:9].cpu(), d["big"][3:9].half(), **exact)
    # Saving from CUDA tensors writes the same bytes.
    save_file(out, f"s3://{BUCKET}/{prefix}again.safetensors", client=client)
    again = client.get_object(BUCKET, f"{prefix}again.safetensors").read()
    assert again == client.get_object(BUCKET, f"{prefix}m.safetensors").read()


def test_hf_storage_reader_into_cuda_state_dict(seaweed_env, prefix) -> None:  # type: ignore[no-untyped-def]
    """dcp.load through S3HuggingFaceStorageReader into CUDA destinations (the rows land in host
    memory, then copy_ to the device), a cast among them. CPU counterpart: the cast and batch
    test in tests/integration/test_hf_storage_reader.py."""
    import torch.distributed.checkpoint as dcp

    from s3torch._servers import REGION
    from s3torch.dcp import S3HuggingFaceStorageReader
    from tests.integration.test_hf_storage_reader import _model as _hf_model
    from tests.integration.test_hf_storage_reader import _save_sharded

    sd = _hf_model(5)
    base = _save_sharded(seaweed_env, prefix, sd)
    got = {k: torch.zeros(v.shape, dtype=v.dtype, device="cuda") for k, v in sd.items()}
    got["layers.0.attn.weight"] = torch.zeros(96, 96, dtype=torch.bfloat16, device="cuda")  # a cast
    reader = S3HuggingFaceStorageReader(REGION, base, endpoint=seaweed_env.endpoint, batch_bytes=1 << 16)
    dcp.load(got, storage_reader=reader)
    torch.cuda.synchronize()
    for k in sd:
        assert torch.equal(got[k].cpu(), sd[k].to(got[k].dtype)), k
    assert sorted(reader.last_load_checksums.values()) == ["CRC32C checked", "CRC32C checked"]


def test_model_saved_from_and_loaded_into_cuda(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    from s3torch.safetensors import load_model, save_torch_model
    from tests.integration.test_safetensors_model import Tiny, _same_model

    client = make_client(seaweed)
    folder = f"s3://{BUCKET}/{prefix}"
    model = Tiny(1).cuda()
    save_torch_model(model, folder, client=client, max_shard_size="4KB")
    fresh = Tiny(2).cuda()
    ptrs = {k: v.data_ptr() for k, v in fresh.state_dict().items()}
    assert load_model(fresh, folder, client=client) == ([], [])
    assert _same_model(fresh, model) and {k: v.data_ptr() for k, v in fresh.state_dict().items()} == ptrs


MiB = 1024 * 1024


def _pinned_ring() -> Any:
    from s3torch.dcp import _staged_save, _staging

    key = (os.getpid(), _staged_save.DEFAULT_SAVE_RING_BYTES, _staged_save.DEFAULT_SAVE_SLOT_BYTES, True)
    return _staging._pool.get(key)


def test_a_save_from_cuda_goes_through_the_pinned_ring(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    """Every dtype, a 0-dim and an empty tensor, from CUDA: the package's bytes for the same
    tensors on the host, every non-empty tensor's bytes through the pooled pinned ring. CPU
    counterpart: tests/integration/test_safetensors_staged_save.py."""
    import safetensors.torch as sts

    from s3torch.dcp import _staging

    client = make_client(seaweed)
    d = _model(9)
    on_gpu = {k: v.cuda() for k, v in d.items()}
    torch.cuda.synchronize()
    _staging.release_staging_memory()
    save_file(on_gpu, f"s3://{BUCKET}/{prefix}from-gpu.safetensors", {"format": "pt"}, client=client)
    raw = client.get_object(BUCKET, f"{prefix}from-gpu.safetensors").read()
    assert raw == sts.save(d, {"format": "pt"})
    ring = _pinned_ring()
    assert ring is not None and ring.uses >= sum(1 for t in d.values() if t.numel())
    assert len(ring.free) == ring.nslots


def test_a_sharded_save_waits_for_the_callers_stream(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    """The tensors are written on a side stream behind a ~0.5 s sleep kernel, and
    save_torch_state_dict is called on that stream: its four upload threads (whose current
    stream is the default one) copy after the caller's queued work, so the new values are
    saved. They hold 7 before: a 7 is a copy that ran too early, a 0 a slot read before its
    copy landed."""
    from s3torch.safetensors import load_file, save_torch_state_dict

    client = make_client(seaweed)
    sd = {f"w{i}": torch.full((2048, 1024), 7.0, device="cuda") for i in range(6)}  # 8 MiB each
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    folder = f"s3://{BUCKET}/{prefix}stream/"
    with torch.cuda.stream(s):
        torch.cuda._sleep(1_000_000_000)
        for i, t in enumerate(sd.values()):
            t.fill_(float(i))
        save_torch_state_dict(sd, folder, client=client, max_shard_size="10MB")
    for i, k in enumerate(sd):
        got = load_file(f"{folder}model-{i + 1:05d}-of-00006.safetensors", client=client)[k]
        assert bool((got == float(i)).all()), f"{k}: values {got.unique().tolist()[:5]}"


def test_host_memory_of_a_save_from_cuda_is_the_ring_and_the_upload_window(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    """A 2 GiB CUDA tensor saves with host memory growing by at most the ring + 384 MiB;
    the package copies the whole tensor (the whole file) to host memory first."""
    from s3torch.dcp import _staging
    from tests.gpu.test_cuda_save import _PeakRss

    client = make_client(seaweed)
    big = torch.full((32768, 32768), 1.5, dtype=torch.bfloat16, device="cuda")  # 2 GiB
    torch.cuda.synchronize()
    save_file({"small": torch.ones(10, device="cuda")}, f"s3://{BUCKET}/{prefix}warm.safetensors", client=client)
    _staging.release_staging_memory()  # the ring's page-locking counts
    with _PeakRss() as rss:
        save_file({"big": big}, f"s3://{BUCKET}/{prefix}big.safetensors", client=client)
    grew = rss.peak - rss.base
    assert grew <= 64 * MiB + 384 * MiB, f"host memory grew by {grew / MiB:.0f} MiB"
    assert _pinned_ring().uses == 2 * 1024 // 8
    (size,) = [o.size for p in client.list_objects(BUCKET, f"{prefix}big.") for o in p.object_info]
    assert size > big.nbytes


def test_an_injected_cuda_error_in_a_save_is_a_staging_error(seaweed, prefix, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The 3rd slot's copy fails: StagingError naming the object and the tensor, no object,
    no upload left open, the ring whole."""
    import re

    from s3torch.dcp import StagingError
    from tests.unit.test_staged_save import fail_copy

    fail_copy(monkeypatch, 3, torch.OutOfMemoryError("CUDA out of memory (injected)"))
    client = make_client(seaweed)
    sd = {"a": torch.randn(2048, 1024, device="cuda"), "b": torch.randn(4096, 1024, device="cuda")}  # 8 + 16 MiB
    with pytest.raises(StagingError) as ei:
        save_file(sd, f"s3://{BUCKET}/{prefix}err/x.safetensors", client=client)
    assert re.match(rf"s3://{BUCKET}/{re.escape(prefix)}err/x\.safetensors tensor 'b': copying", str(ei.value))
    assert [o for p in client.list_objects(BUCKET, f"{prefix}err/") for o in p.object_info] == []
    assert client.list_multipart_uploads(BUCKET, f"{prefix}err/") == []
    ring = _pinned_ring()
    assert len(ring.free) == ring.nslots
