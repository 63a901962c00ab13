"""s3torch.safetensors into CUDA and pinned memory, byte-exact against the CPU load (SeaweedFS on
loopback). The CPU-side counterpart CI runs is test_the_cuda_path_on_cpu in
tests/integration/test_safetensors.py."""

from __future__ import annotations

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
