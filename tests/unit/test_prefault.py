"""_crt.prefault: the staging ring's fresh slots are made resident on the thread that
allocates them (MADV_POPULATE_WRITE), so the GETs that land in them take no page faults; and
_prefault.Prefaulter, the thread that does the same ahead of GETs already landing in fresh
tensors (safetensors into CPU memory, DCP restores into ``to_empty()`` state dicts, the
staging ring's copies into fresh host tensors), skipping memory in use."""

from __future__ import annotations

import mmap
import os
import threading
from typing import Callable, List, Tuple

import pytest
import torch

from s3torch import _crt, _prefault
from s3torch._prefault import Prefaulter
from s3torch.dcp import _staging
from s3torch.dcp._staging import StagingRing

MiB = 1 << 20


class PrefaulterRecorder:
    """A stand-in for Prefaulter (monkeypatched into a loader) that records what each one is
    handed, as (address, bytes) pairs, and how many GETs ``gets()`` counted by then."""

    def __init__(self, gets: Callable[[], int]) -> None:
        self.handed: List[List[Tuple[int, int]]] = []
        self.gets_before: List[int] = []
        outer = self

        class Recorder:
            def __init__(self, buffers: List[torch.Tensor]) -> None:
                outer.handed.append([(b.data_ptr(), b.numel()) for b in buffers])
                outer.gets_before.append(gets())

            def __enter__(self) -> "Recorder":
                return self

            def __exit__(self, *exc: object) -> None:
                pass

        self.cls = Recorder


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


def _fresh(n: int) -> Tuple[mmap.mmap, torch.Tensor]:
    """A new anonymous mapping (no page touched yet), and a tensor over it; the mapping is
    unmapped when both are gone."""
    m = mmap.mmap(-1, n)
    return m, torch.frombuffer(m, dtype=torch.uint8)


def test_without_a_write_fallback_it_populates_alike() -> None:
    m, t = _fresh(16 * MiB)
    before = _rss()
    assert _crt.prefault(t, write_fallback=False) is True  # this kernel populates (5.14+)
    assert _rss() - before >= 15 * MiB


def test_the_thread_makes_every_buffer_resident(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_prefault, "CHUNK_BYTES", 4 * MiB)
    maps = [_fresh(n) for n in (24 * MiB, 8 * MiB + 5)]
    before = _rss()
    p = Prefaulter([maps[0][1], torch.empty(0, dtype=torch.uint8), maps[1][1]])
    assert p._thread is not None
    p._thread.join()  # the work done (stop() would end it early)
    p.stop()
    assert p.populated == 32 * MiB + 5  # every byte of every buffer, the empty one skipped
    assert _rss() - before >= 30 * MiB
    assert Prefaulter([torch.empty(0, dtype=torch.uint8)])._thread is None  # nothing to do, no thread
    small = [torch.empty(_prefault.MIN_BYTES // 2 - 1, dtype=torch.uint8)] * 2
    assert Prefaulter(small)._thread is None  # a load of small tensors pays for no thread


def test_a_write_landing_meanwhile_is_never_undone() -> None:
    """The GETs write into the buffers while the thread populates them: every written byte
    must stay as written (populating maps pages and never writes)."""
    m, t = _fresh(64 * MiB)
    pattern = torch.arange(256, dtype=torch.uint8).repeat(4096)  # 1 MiB
    go = threading.Event()

    def land() -> None:  # from the end backwards, so the two threads cross in the middle
        go.wait()
        for at in range(63 * MiB, -1, -MiB):
            t[at : at + MiB].copy_(pattern)

    writer = threading.Thread(target=land)
    writer.start()
    with Prefaulter([t]):
        go.set()
        writer.join()
    assert torch.equal(t.view(64, MiB), pattern.expand(64, MiB))


def test_it_stops_promptly_and_ends_where_the_kernel_cannot_populate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_prefault, "CHUNK_BYTES", MiB)
    calls: List[int] = []
    release, in_hand = threading.Event(), threading.Event()

    def slow(t: torch.Tensor, write_fallback: bool = True) -> bool:
        assert write_fallback is False  # the GETs write these pages: the fallback would race them
        calls.append(t.numel())
        in_hand.set()
        release.wait()
        return True

    monkeypatch.setattr(_prefault._crt, "prefault", slow)
    m, fresh = _fresh(64 * MiB)  # (torch.empty may hand back memory in use: the thread would skip it)
    p = Prefaulter([fresh])
    assert in_hand.wait(5)
    stopper = threading.Thread(target=p.stop)  # asked to stop while the first chunk is in hand
    stopper.start()
    assert p._stopped.wait(5)
    release.set()
    stopper.join(5)
    assert not stopper.is_alive()  # stop() returned once the chunk in hand was done
    assert calls == [MiB] and p.populated == MiB  # and no chunk was begun after it was asked
    monkeypatch.setattr(_prefault._crt, "prefault", lambda t, write_fallback=True: False)
    m, fresh = _fresh(8 * MiB)
    p = Prefaulter([fresh] * 3)
    assert p._thread is not None
    p._thread.join(5)
    assert not p._thread.is_alive() and p.populated == 0  # gave up at the first chunk
    p.stop()


def test_looks_resident_tells_memory_in_use_from_fresh() -> None:
    m, t = _fresh(16 * MiB)
    assert _crt.looks_resident(t) is False
    t[0] = 1  # the first page only: the middle and last are still fresh
    assert _crt.looks_resident(t) is False
    assert _crt.prefault(t) is True
    assert _crt.looks_resident(t) is True
    assert _crt.looks_resident(t[5 * MiB + 3 : 9 * MiB]) is True  # an unaligned piece of it
    assert _crt.looks_resident(b"read-only bytes in use") is True  # reading needs no write access
    assert _crt.looks_resident(bytearray()) is False


def test_the_thread_skips_buffers_in_use() -> None:
    """A destination someone has written (an initialized model's state dict) is not walked:
    only the fresh buffer is populated."""
    in_use = torch.ones(8 * MiB, dtype=torch.uint8)
    m, fresh = _fresh(8 * MiB)
    p = Prefaulter([in_use, fresh])
    assert p._thread is not None
    p._thread.join()
    p.stop()
    assert p.populated == 8 * MiB
    assert _crt.looks_resident(fresh)
