"""``saved_size``: about what ``torch.save`` writes, the size hint of a Lightning checkpoint's
upload (so that one past S3's 10,000 parts gets larger parts)."""

from __future__ import annotations

import io

import pytest
import torch

from s3torch._saved_size import ALLOWANCE, saved_size


def test_saved_size_counts_each_storage_once_and_never_less_than_torch_save_writes() -> None:
    base = torch.randn(1000, 100)
    ckpt = {
        "state_dict": {"w": base, "w_view": base[10:20], "b": torch.zeros(7, dtype=torch.bfloat16)},
        "optimizer": [{"exp_avg": torch.ones(5000)}, ({"step": 3},)],
        "epoch": 4,
        "loop": {"again": None},
    }
    ckpt["loop"]["again"] = ckpt["loop"]  # a cycle: walked once
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    hint = saved_size(ckpt)
    storages = base.nbytes + 7 * 2 + 5000 * 4
    assert buf.tell() <= hint <= storages + 4 * ALLOWANCE  # the view adds nothing: its base is counted
    assert saved_size({"x": 1}) == ALLOWANCE


def test_s3torch_exports_the_estimate() -> None:
    import s3torch

    assert s3torch.saved_size is saved_size


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_tensors_without_a_storage_of_their_own_count_what_torch_save_writes() -> None:
    dense = torch.zeros(1000, 1000)
    dense[3, 4] = 1.0
    sparse = {"coo": dense.to_sparse(), "csr": dense.to_sparse_csr()}  # untyped_storage() raises for both
    buf = io.BytesIO()
    torch.save(sparse, buf)
    hint = saved_size(sparse)
    assert buf.tell() <= hint <= 8 * ALLOWANCE  # the non-zeros, not the 4 MB the dense size would say


def test_a_dtensor_counts_its_local_shard(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import socket

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        d = distribute_tensor(torch.randn(100, 10), init_device_mesh("cpu", (1,)), [Shard(0)])
        buf = io.BytesIO()
        torch.save({"d": d}, buf)
        assert buf.tell() <= saved_size({"d": d}) <= 100 * 10 * 4 + 3 * ALLOWANCE
    finally:
        dist.destroy_process_group()
