"""``saved_size``: about what ``torch.save`` writes, the size hint of a Lightning checkpoint's
upload (so that one past S3's 10,000 parts gets larger parts)."""

from __future__ import annotations

import io

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
