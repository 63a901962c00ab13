"""SharedLoad._broadcast without a process group: the chunking, the device round trip NCCL
needs (host -> device -> broadcast -> host) and the scratch memory of ranks that do not need
a record, on a fake ``dist``. NCCL itself needs a GPU per rank (not on CI, not on the one-GPU
machine); real gloo ranks, with CPU and CUDA destinations, are in
tests/integration/test_shared_reads.py and tests/gpu/test_cuda_dcp.py."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import pytest
import torch

from s3torch.dcp import _shared_reads
from s3torch.dcp._shared_reads import SharedLoad, SharedRecord


class FakeDist:
    """One rank of a group whose broadcasts come from ``payload`` (the fetcher's bytes)."""

    def __init__(self, rank: int, backend: str, payload: bytes) -> None:
        self.rank, self.backend, self.payload = rank, backend, payload
        self.offset = 0
        self.calls: List[Tuple[str, int, int]] = []  # (device type, src, bytes) per broadcast

    def get_rank(self, group: Any = None) -> int:
        return self.rank

    def get_backend(self, group: Any = None) -> str:
        return self.backend

    def get_global_rank(self, group: Any, rank: int) -> int:
        return rank + 10  # a subgroup: the source is named by its global rank

    def broadcast(self, t: torch.Tensor, src: int, group: Any = None) -> None:
        n = t.numel()
        self.calls.append((t.device.type, src, n))
        if self.rank + 10 != src:  # a receiver: the fetcher's bytes arrive
            t.copy_(torch.frombuffer(bytearray(self.payload[self.offset : self.offset + n]), dtype=torch.uint8))
        else:
            assert bytes(t.cpu().numpy().tobytes()) == self.payload[self.offset : self.offset + n]
        self.offset += n


def _load(monkeypatch: pytest.MonkeyPatch, fake: FakeDist, device: Optional[torch.device]) -> SharedLoad:
    monkeypatch.setattr(_shared_reads, "dist", fake)
    if device is not None:  # stands in for the CUDA device NCCL would use
        monkeypatch.setattr(_shared_reads, "collective_device", lambda group: device)
    return SharedLoad(loader=None, schedule=None, group=object(), where="s3://b/ckpt")  # type: ignore[arg-type]


@pytest.mark.parametrize("device", [None, torch.device("cpu")], ids=["gloo", "nccl-path"])
@pytest.mark.parametrize("role", ["fetcher", "needer", "bystander"])
def test_broadcast_chunks_and_device_round_trip(monkeypatch: pytest.MonkeyPatch, device: Any, role: str) -> None:
    payload = bytes(range(256)) * 10  # 2,560 bytes: 3 chunks of at most 1,000
    monkeypatch.setattr(_shared_reads, "CHUNK", 1000)
    rank = {"fetcher": 0, "needer": 1, "bystander": 2}[role]
    fake = FakeDist(rank, "nccl" if device is not None else "gloo", payload)
    sl = _load(monkeypatch, fake, device)
    rec = SharedRecord(("__0_0.distcp", 0, len(payload)), fetcher=0, needers=(0, 1))
    fetched = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if role == "fetcher" else None
    got = sl._broadcast(rec, fetched)
    assert [c[2] for c in fake.calls] == [1000, 1000, 560]
    assert all(c[1] == 10 for c in fake.calls)  # the fetcher's global rank
    if device is not None:
        assert all(c[0] == device.type for c in fake.calls)
    if role == "bystander":
        assert got is None  # received into scratch memory and dropped
    else:
        assert got is not None and got.device.type == "cpu" and bytes(got.numpy().tobytes()) == payload


def test_nccl_means_the_current_cuda_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_shared_reads, "dist", FakeDist(0, "nccl", b""))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert _shared_reads.collective_device(None) == torch.device("cuda", 3)
    monkeypatch.setattr(_shared_reads, "dist", FakeDist(0, "gloo", b""))
    assert _shared_reads.collective_device(None) is None
