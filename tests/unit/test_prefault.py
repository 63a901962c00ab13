"""_crt.prefault: the staging ring's fresh slots are made resident on the thread that
allocates them (MADV_POPULATE_WRITE), so the GETs that land in them take no page faults; and
_prefault.Prefaulter, the thread that does the same ahead of GETs already landing in fresh
tensors (safetensors into CPU memory, DCP restores into ``to_empty()`` state dicts, the
staging ring's copies into fresh host tensors), skipping memory in use and advising
transparent huge pages for the rest (_crt.advise_huge_pages)."""

from __future__ import annotations

import mmap
import os
import pathlib
import subprocess
import sys
import threading
from typing import Any, Callable, List, Tuple

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

            def help_until(self, done: Callable[[], bool]) -> None:
                outer.helps += 1

        self.helps = 0  # help_until calls: a waiting thread offered to populate
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


def _fresh(n: int, private: bool = False) -> Tuple[mmap.mmap, torch.Tensor]:
    """A new anonymous mapping (no page touched yet), and a tensor over it; the mapping is
    unmapped when both are gone. Shared unless ``private`` (as torch's large allocations are)."""
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) if private else mmap.mmap(-1, n)
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


def test_file_maps_are_populated_and_can_close_after_stop(tmp_path: pathlib.Path) -> None:
    """s3torch cp's buffers: memoryviews of a shared file mapping (no torch), every byte
    walked, no view of them kept once stopped (the maps then close without BufferError)."""
    f = open(tmp_path / "f", "wb+")
    f.truncate(9 * MiB + 3)
    m = mmap.mmap(f.fileno(), 9 * MiB + 3)
    view = memoryview(m)
    p = Prefaulter([view])
    assert p._thread is not None
    p._thread.join()
    p.stop()
    assert p.populated == 9 * MiB + 3
    view.release()
    m.close()
    f.close()


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
    assert Prefaulter([in_use, fresh])._thread is None  # all in use now: asked when made, no thread


# --- transparent huge pages ------------------------------------------------------------------
def _vm_flags(addr: int) -> List[str]:
    """The kernel's VmFlags for the mapping that holds ``addr`` (/proc/self/smaps): "hg" is
    MADV_HUGEPAGE's mark."""
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("VmFlags:"):
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


HUGE = _crt.huge_page_bytes()


def test_this_kernel_has_transparent_huge_pages() -> None:
    """(The tests below need them; a machine without them would run every load in small
    pages, as S3TORCH_HUGE_PAGES=0 does.)"""
    assert HUGE >= 2 * MiB and HUGE & (HUGE - 1) == 0


def test_huge_pages_are_advised_on_the_whole_huge_pages_inside_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3TORCH_HUGE_PAGES", "1")
    m, t = _fresh(6 * HUGE, private=True)
    base = t.data_ptr()
    lo = (base + HUGE - 1) // HUGE * HUGE  # the first huge page boundary inside the mapping
    piece = t[lo - base + HUGE // 2 : lo - base + HUGE // 2 + 3 * HUGE]  # starts and ends mid-page
    assert _crt.advise_huge_pages(piece) is True
    start, end = piece.data_ptr(), piece.data_ptr() + piece.numel()
    first, last = lo + HUGE, lo + 3 * HUGE  # the whole huge pages inside: [first, last)
    assert "hg" in _vm_flags(first) and "hg" in _vm_flags(last - 1)
    assert "hg" not in _vm_flags(start) and "hg" not in _vm_flags(end - 1)  # partial ones are left
    copy = torch.arange(piece.numel(), dtype=torch.int64).to(torch.uint8)
    piece.copy_(copy)
    assert torch.equal(piece, copy)  # memory as usual once advised
    assert _crt.advise_huge_pages(t[: HUGE - 1]) is False  # no whole huge page can be inside
    assert _crt.advise_huge_pages(t[lo - base + 1 : lo - base + 2 * HUGE - 1]) is False  # none is
    assert _crt.advise_huge_pages(bytearray()) is False
    with pytest.raises((TypeError, ValueError, BufferError)):
        _crt.advise_huge_pages(bytes(4 * HUGE))  # read-only


def test_by_default_the_thread_populates_in_small_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    m, t = _fresh(4 * HUGE, private=True)
    monkeypatch.delenv("S3TORCH_HUGE_PAGES", raising=False)
    assert _crt.advise_huge_pages(t) is False
    assert all("hg" not in _vm_flags(t.data_ptr() + at) for at in range(0, 4 * HUGE, HUGE))
    p = Prefaulter([t])  # the thread still populates, in small pages
    assert p._thread is not None
    p._thread.join()
    p.stop()
    assert p.populated == 4 * HUGE
    assert all("hg" not in _vm_flags(t.data_ptr() + at) for at in range(0, 4 * HUGE, HUGE))
    monkeypatch.setenv("S3TORCH_HUGE_PAGES", "yes")  # malformed: refused when the runtime is built (below)
    assert _crt.advise_huge_pages(t) is False  # and never raises here, on a prefaulting thread


def test_a_malformed_s3torch_huge_pages_is_refused_by_name() -> None:
    """Read when the process's CRT runtime is built (its first client), as
    S3TORCH_EVENT_LOOP_THREADS is: so in a fresh interpreter."""
    probe = (
        "from s3torch import S3Client, S3ClientConfig, _crt\n"
        "c = S3Client('us-east-1', endpoint='http://127.0.0.1:1', "
        "s3client_config=S3ClientConfig(unsigned=True, max_attempts=1))\n"
        "try:\n"
        "    c.head_object('b', 'k')\n"
        "except _crt.S3InvalidArgumentError as e:\n"
        "    print('refused:', e)\n"
        "except _crt.S3Exception:\n"
        "    print('built')\n"
    )
    for value, want in (
        ("yes", "refused: S3TORCH_HUGE_PAGES must be 0 or 1, got 'yes'"),
        ("0", "built"),
        ("1", "built"),
    ):
        env = dict(os.environ, S3TORCH_HUGE_PAGES=value)
        r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == want


def test_huge_pages_are_off_unless_s3torch_huge_pages_is_1(monkeypatch: pytest.MonkeyPatch) -> None:
    """Opt-in (prefault.h says why); a malformed value is refused by name."""
    m, t = _fresh(4 * HUGE, private=True)
    for off in (None, "", "0"):
        if off is None:
            monkeypatch.delenv("S3TORCH_HUGE_PAGES", raising=False)
        else:
            monkeypatch.setenv("S3TORCH_HUGE_PAGES", off)
        assert _crt.huge_pages_enabled() is False
        assert _crt.advise_huge_pages(t) is False
        assert "hg" not in _vm_flags(t.data_ptr() + 2 * HUGE)
    monkeypatch.setenv("S3TORCH_HUGE_PAGES", "1")
    assert _crt.huge_pages_enabled() is True
    for bad in ("yes", "2", " 1", "true"):
        monkeypatch.setenv("S3TORCH_HUGE_PAGES", bad)
        with pytest.raises(_crt.S3InvalidArgumentError, match=f"S3TORCH_HUGE_PAGES must be 0 or 1, got '{bad}'"):
            _crt.huge_pages_enabled()


def test_host_buffers_that_hold_a_huge_page_start_on_one_where_they_are_enabled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """So that every byte of a HostBuffer a GET lands in (or a staging slot) can be in huge
    pages, not all but its first and last partial ones. Otherwise page-aligned, as before."""
    monkeypatch.setenv("S3TORCH_HUGE_PAGES", "1")
    for n in (HUGE, 3 * HUGE + 5, 64 * MiB):
        assert torch.frombuffer(_crt.HostBuffer(n), dtype=torch.uint8).data_ptr() % HUGE == 0
    small = torch.frombuffer(_crt.HostBuffer(HUGE - 4096), dtype=torch.uint8)
    assert small.data_ptr() % 4096 == 0
    for setting in ("0", "yes"):  # off, and malformed (refused when the runtime is built; never here)
        monkeypatch.setenv("S3TORCH_HUGE_PAGES", setting)
        ptrs = [torch.frombuffer(_crt.HostBuffer(3 * HUGE + 4096 * k), dtype=torch.uint8).data_ptr() for k in range(8)]
        assert all(p % 4096 == 0 for p in ptrs)
        assert any(p % HUGE for p in ptrs)  # (one could start on a huge page by chance, not all eight)


def test_the_prefaulter_advises_fresh_buffers_before_any_get_can_touch_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2 MiB range one small page of which a GET has faulted stays in small pages: the advice
    is given when the Prefaulter is made (before the caller's first GET), not when its thread
    reaches each buffer. Buffers in use are left as they are."""
    monkeypatch.setenv("S3TORCH_HUGE_PAGES", "1")
    release = threading.Event()
    real = _crt.prefault

    def held(t: torch.Tensor, write_fallback: bool = True) -> bool:
        release.wait(5)  # the thread has populated nothing yet
        return bool(real(t, write_fallback=write_fallback))

    monkeypatch.setattr(_prefault._crt, "prefault", held)
    m1, fresh1 = _fresh(4 * HUGE, private=True)
    m2, fresh2 = _fresh(4 * HUGE, private=True)
    m3, in_use = _fresh(4 * HUGE, private=True)
    in_use.fill_(7)
    p = Prefaulter([fresh1, in_use, fresh2])
    try:
        for t in (fresh1, fresh2):
            lo = (t.data_ptr() + HUGE - 1) // HUGE * HUGE
            assert "hg" in _vm_flags(lo) and "hg" in _vm_flags(lo + HUGE)
        lo = (in_use.data_ptr() + HUGE - 1) // HUGE * HUGE
        assert "hg" not in _vm_flags(lo)
    finally:
        release.set()
        p.stop()


def test_a_waiting_thread_populates_the_next_chunks_from_the_same_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """help_until: the loading thread, while a GET it waits for is not done, takes the next
    chunks, so that the two threads together populate every chunk once, in order."""
    monkeypatch.setattr(_prefault, "CHUNK_BYTES", MiB)
    m, t = _fresh(8 * MiB)
    base = t.data_ptr()
    done_by: List[Tuple[str, int]] = []
    lock, release, in_hand = threading.Lock(), threading.Event(), threading.Event()
    real = _crt.prefault

    def record(piece: torch.Tensor, write_fallback: bool = True) -> bool:
        name = threading.current_thread().name
        if name == "s3torch-prefault" and not release.is_set():
            in_hand.set()
            release.wait(5)  # the thread holds its first chunk while the other helps
        with lock:
            done_by.append((name, (piece.data_ptr() - base) // MiB))
        return bool(real(piece, write_fallback=write_fallback))

    monkeypatch.setattr(_prefault._crt, "prefault", record)
    p = Prefaulter([t])
    assert in_hand.wait(5)
    polls = iter([False, False, False, True])  # the GET finishes after three chunks
    p.help_until(lambda: next(polls))
    me = threading.current_thread().name
    assert [c for who, c in done_by if who == me] == [1, 2, 3]  # the chunks after the one in hand
    release.set()
    assert p._thread is not None
    p._thread.join(5)
    p.stop()
    assert sorted(c for _, c in done_by) == list(range(8))  # every chunk once
    assert [c for who, c in done_by if who != me] == [0, 4, 5, 6, 7]
    assert p.populated == 8 * MiB and p.helped == 3 * MiB
    p.help_until(lambda: False)  # nothing left: returns at once
    assert p.helped == 3 * MiB


def test_buffers_added_later_are_populated_and_a_discarded_one_can_close(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """s3torch cp maps a file as its first GET starts and unmaps it once its last lands: each
    map is queued with ``add`` (a thread started again if the last one ended), and ``discard``
    returns only once no chunk of it is in hand, so that the map closes (no BufferError)."""
    monkeypatch.setattr(_prefault, "CHUNK_BYTES", MiB)
    release, in_hand = threading.Event(), threading.Event()
    real = _crt.prefault

    def slow(piece: Any, write_fallback: bool = True) -> bool:
        in_hand.set()
        assert release.wait(5)
        return bool(real(piece, write_fallback=write_fallback))

    maps = []
    for name in "ab":
        f = open(tmp_path / name, "wb+")
        f.truncate(_prefault.MIN_BYTES + 3 * MiB)
        m = mmap.mmap(f.fileno(), _prefault.MIN_BYTES + 3 * MiB)
        maps.append((f, m, memoryview(m)))
    p = Prefaulter()
    assert p._thread is None
    p.add([maps[0][2]])
    assert p._thread is not None
    p._thread.join()  # every byte; the thread ended with the queue empty
    assert p.populated == _prefault.MIN_BYTES + 3 * MiB
    monkeypatch.setattr(_prefault._crt, "prefault", slow)
    p.add([maps[1][2]])  # another thread
    assert in_hand.wait(5)
    discarded = threading.Event()
    discarder = threading.Thread(target=lambda: (p.discard(maps[1][2]), discarded.set()))
    discarder.start()
    assert not discarded.wait(0.2)  # a chunk of it is in hand
    release.set()
    assert discarded.wait(5)
    assert p._thread is not None
    p._thread.join(5)
    assert p.populated == _prefault.MIN_BYTES + 4 * MiB  # the chunk in hand, and none after
    for f, m, view in maps:
        view.release()
        m.close()  # nothing of the prefaulter holds a slice
        f.close()
    p.stop()


def test_small_buffers_added_one_by_one_start_the_thread_at_min_bytes() -> None:
    """A copy of many small files: no thread until MIN_BYTES in all are queued, then every
    buffer queued so far is populated."""
    small = [_fresh(_prefault.MIN_BYTES // 4)[1] for _ in range(5)]
    p = Prefaulter()
    for t in small[:3]:
        p.add([t])
        assert p._thread is None
    p.add([small[3]])
    assert p._thread is not None
    p._thread.join(5)
    assert p.populated == _prefault.MIN_BYTES
    p.add([small[4]])
    p._thread.join(5)
    assert p.populated == _prefault.MIN_BYTES * 5 // 4
    p.stop()
