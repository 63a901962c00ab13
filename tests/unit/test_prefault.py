"""_crt.prefault: the staging ring's fresh slots are made resident on the thread that
allocates them (MADV_POPULATE_WRITE), so the GETs that land in them take no page faults."""

from __future__ import annotations

import mmap
import os
from typing import List, Tuple

import pytest
import torch

from s3torch import _crt
from s3torch.dcp import _staging
from s3torch.dcp._staging import StagingRing

MiB = 1 << 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_pages_become_resident_and_contents_stay() -> None:
    fresh = mmap.mmap(-1, 64 * MiB)  # a new anonymous mapping: no page touched yet
    try:
        before = _rss()
        assert _crt.prefault(fresh) is True
        assert _rss() - before >= 60 * MiB
    finally:
        fresh.close()
    data = torch.randint(0, 256, (3 * MiB + 5,), dtype=torch.uint8)
    copy = data.clone()
    assert _crt.prefault(data[7:]) is True  # an unaligned start
    assert torch.equal(data, copy)
    assert _crt.prefault(bytearray()) is False


def test_read_only_buffers_are_refused() -> None:
    with pytest.raises((TypeError, ValueError, BufferError)):
        _crt.prefault(b"read-only bytes")


def test_the_ring_makes_each_host_slot_resident_as_it_allocates_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """(The allocator may hand a long-lived process memory that is resident already, so this
    checks the call, and the test above what it does.)"""
    seen: List[Tuple[int, int]] = []
    real = _crt.prefault

    def record(t: torch.Tensor) -> bool:
        seen.append((t.data_ptr(), t.numel()))
        return real(t)

    monkeypatch.setattr(_staging._crt, "prefault", record)
    ring = StagingRing(4 * 8 * MiB, 8 * MiB, pinned=False)
    ring.prepare(3 * 8 * MiB)  # three slots on the allocating thread
    slots = [ring.slot(i, 8 * MiB) for i in range(4)]  # the fourth on this thread
    assert sorted(seen) == sorted((s.data_ptr(), 8 * MiB) for s in slots)
