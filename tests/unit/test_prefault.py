"""_crt.prefault: the staging ring's fresh slots are made resident on the thread that
allocates them (MADV_POPULATE_WRITE), so the GETs that land in them take no page faults."""

from __future__ import annotations

import os

import pytest
import torch

from s3torch import _crt
from s3torch.dcp._staging import StagingRing

MiB = 1 << 20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_pages_become_resident_and_contents_stay() -> None:
    fresh = torch.empty(64 * MiB, dtype=torch.uint8)  # mapped, not yet touched
    before = _rss()
    assert _crt.prefault(fresh) is True
    assert _rss() - before >= 60 * MiB
    data = torch.randint(0, 256, (3 * MiB + 5,), dtype=torch.uint8)
    copy = data.clone()
    assert _crt.prefault(data[7:]) is True  # an unaligned start
    assert torch.equal(data, copy)
    assert _crt.prefault(bytearray()) is False


def test_read_only_buffers_are_refused() -> None:
    with pytest.raises((TypeError, ValueError, BufferError)):
        _crt.prefault(b"read-only bytes")


def test_the_ring_makes_its_host_slots_resident() -> None:
    ring = StagingRing(4 * 8 * MiB, 8 * MiB, pinned=False)
    before = _rss()
    ring.prepare(4 * 8 * MiB)
    for i in range(4):
        ring.slot(i, 8 * MiB)  # waits for the allocating thread
    assert _rss() - before >= 30 * MiB
