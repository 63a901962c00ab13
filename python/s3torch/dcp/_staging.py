"""The staging ring: bounded host memory through which tensor bytes reach destinations that
cannot take a GET directly (CUDA tensors, non-contiguous views, permuted stored layouts).

A ring is a fixed amount of host memory (page-locked when it feeds CUDA devices) cut into
equal slots. ``RingLoad`` moves each staged tensor as a series of slot-sized ranged GETs
into free slots; slots land in the order their GETs complete, not the order they started
(one slow GET holds only its own slot, never the slots behind it). As a slot lands, its
CRC32 is computed (on worker threads, or by the copy itself where it is the tiled transpose;
a tensor's slot CRCs are combined in byte order once its last slot has landed, and the tensor
is committed only if they match) and its bytes are copied to the matching block of the
destination (for CUDA: one asynchronous host-to-device copy on a side stream of the
destination's device, followed by a CUDA event that returns the slot to the ring once the
copy has read it). GETs for other slots are in flight while a slot copies, so memory stays
at the ring's size whatever the checkpoint's; the out-of-order window is the ring: at most
``nslots`` GETs are in flight, whichever tensors they belong to.

Who owns what: a ring belongs to one load at a time (``borrow_ring``); between loads it waits
in a per-process pool, so the page-locking cost is paid once per process, not per load. Only
the loading thread touches a ring and its ``RingLoad``; the CRT writes into a slot only
between the start of its GET and the end of that GET's wait.

Stream semantics: copies into a device's tensors run on a side stream that first waits for
the device's current stream (so work already queued on the destinations finishes first).
Before a tensor is committed, and when the load ends, the current stream waits for the side
stream: the destinations are safe to use on the current stream without a synchronize.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, Iterator, List, Optional, Tuple

import torch

from .. import _crt
from .._crc import crc32_of_parts
from .._prefault import Prefaulter
from .._versions import ObjectVersions
from ._errors import StagingError, crc_mismatch, read_error, short_read

MiB = 1024 * 1024
DEFAULT_RING_BYTES = 256 * MiB
DEFAULT_SLOT_BYTES = 8 * MiB
# s3torch.safetensors' ring for CUDA devices: weights kept pace with the pinned-CPU load only
# with larger slots (benchmarks/ring_sweep.py on an H200: 0.88x pinned at 256 MiB / 8 MiB,
# 0.98x at 512 MiB / 16 MiB; DCP loads 1.00x and 1.01x).
SAFETENSORS_RING_BYTES = 512 * MiB
SAFETENSORS_SLOT_BYTES = 16 * MiB
SLOT_ALIGN = 64  # slot sizes are multiples of this: every dtype's element divides it


def check_ring_size(ring_bytes: int, slot_bytes: int) -> None:
    """Raise ValueError unless the sizes make a ring of at least one slot."""
    for name, v in (("staging_bytes", ring_bytes), ("staging_slot_bytes", slot_bytes)):
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    if slot_bytes < SLOT_ALIGN or slot_bytes % SLOT_ALIGN:
        raise ValueError(f"staging_slot_bytes must be a positive multiple of {SLOT_ALIGN}, got {slot_bytes}")
    if ring_bytes < slot_bytes:
        raise ValueError(
            f"staging_bytes ({ring_bytes}) is too small for one slot of staging_slot_bytes "
            f"({slot_bytes}): make the ring at least one slot"
        )


# How a pinned slot is page-locked: in place (True), or by torch's pinned allocator (False).
# benchmarks/pin_bench.py on an H200, 512 MiB in 8 MiB slots from a fresh process: in place
# 2.77 GB/s, torch's 1.93 GB/s; 4 threads at once gain 3-14% and delay the first slot 2-4x.
PIN_BY_REGISTER = True


def _resident_host(n: int) -> torch.Tensor:
    """``n`` bytes of host memory (a ``HostBuffer``, which the tensor holds), its pages faulted
    in on this thread (the kernel zeroes them, ``_crt.prefault``); in transparent huge pages
    where ``S3TORCH_HUGE_PAGES=1`` (the buffer then starts on one): fewer faults."""
    t = torch.frombuffer(_crt.HostBuffer(n), dtype=torch.uint8)
    _crt.advise_huge_pages(t)
    _crt.prefault(t)
    return t


class _LockedHost:
    """``n`` bytes of host memory page-locked in place for CUDA: allocated, its pages faulted
    in (the kernel zeroes them on this thread, ``_crt.prefault``), then locked
    (``cudaHostRegister``, portable to every device): faster than torch's pinned allocator
    (``cudaHostAlloc``, see PIN_BY_REGISTER). Unlocked when this object goes, which is before
    the memory can be freed (it holds the buffer); never in a forked child (CUDA does not
    survive fork)."""

    def __init__(self, n: int) -> None:
        self.tensor = _resident_host(n)  # holds its buffer; in huge pages, fewer pages to lock
        self._ptr, self._pid = self.tensor.data_ptr(), os.getpid()
        err = int(torch.cuda.cudart().cudaHostRegister(self._ptr, n, 1))  # 1: cudaHostRegisterPortable
        if err != 0:
            self._pid = -1
            raise RuntimeError(f"cudaHostRegister of {n} bytes failed with CUDA error {err}")

    def __del__(self) -> None:
        if self._pid == os.getpid():
            try:
                torch.cuda.cudart().cudaHostUnregister(self._ptr)
            except Exception:  # interpreter shutdown
                pass


class StagingRing:
    """``ring_bytes // slot_bytes`` slots of ``slot_bytes`` host memory, pinned if asked.

    Slots are allocated when a load first needs them (a load smaller than the ring takes
    only what it needs), by a background thread that ``prepare`` starts, slot 0 first (or by
    the loading thread, when it needs a slot before that thread got to it): page-locking
    memory is slow, and this way it overlaps with the GETs into the slots that are already
    there instead of delaying the first of them."""

    def __init__(self, ring_bytes: int, slot_bytes: int, pinned: bool) -> None:
        check_ring_size(ring_bytes, slot_bytes)
        self.slot_bytes, self.pinned = slot_bytes, pinned
        self.nslots = ring_bytes // slot_bytes
        # memory[i] is written once, by the thread that claimed slot i, before ready[i] is set.
        self.memory: List[Optional[torch.Tensor]] = [None] * self.nslots
        self._locked: List[Optional[_LockedHost]] = [None] * self.nslots  # what keeps memory[i] pinned
        self._ready = [threading.Event() for _ in range(self.nslots)]
        # A slot is allocated by whoever claims it first: the background thread that prepare
        # starts, or the loading thread when it needs a slot no prepare covered. Never twice:
        # a second allocation would swap the memory under a GET or copy already using it.
        self._claimed = [False] * self.nslots
        self._claim_lock = threading.Lock()
        self._planned = 0  # prepare has sent slots [0, _planned) to the background thread
        self._alloc_error: Optional[BaseException] = None
        self.free: Deque[int] = deque(range(self.nslots))  # slots no GET, copy or CRC is using
        self.uses = 0  # slot fills since the ring was made (tests read slot reuse from it)

    @property
    def nbytes(self) -> int:
        return self.nslots * self.slot_bytes

    def prepare(self, nbytes: int) -> None:
        """Start allocating the slots a load of ``nbytes`` staged bytes will use."""
        want = min(self.nslots, -(-nbytes // self.slot_bytes))
        if want <= self._planned:
            return
        first, self._planned = self._planned, want
        threading.Thread(target=self._allocate, args=(first, want), name="s3torch-ring-alloc", daemon=True).start()

    def _claim(self, i: int) -> bool:
        with self._claim_lock:
            if self._claimed[i]:
                return False
            self._claimed[i] = True
            return True

    def _fill(self, i: int) -> None:
        """Allocate slot i (claimed by this thread); errors are reported by slot()."""
        try:
            if self._alloc_error is None:
                self.memory[i] = self._new_slot(i)
        except BaseException as e:
            self._alloc_error = e
        self._ready[i].set()

    def _allocate(self, first: int, end: int) -> None:
        for i in range(first, end):
            if self._claim(i):
                self._fill(i)

    def _new_slot(self, i: int) -> torch.Tensor:
        if self.pinned and PIN_BY_REGISTER:
            try:
                locked = self._locked[i] = _LockedHost(self.slot_bytes)
                return locked.tensor
            except (RuntimeError, AssertionError, AttributeError):  # cannot register: torch's allocator
                pass
        if self.pinned:
            return torch.empty(self.slot_bytes, dtype=torch.uint8, pin_memory=True)
        # Resident now, on the allocating thread, while the first GETs are in flight; else every
        # page faults inside the event-loop thread whose socket reads land in it. In huge pages
        # where enabled: fewer TLB misses too, for the transposes reading it.
        return _resident_host(self.slot_bytes)

    def slot(self, i: int, n: int) -> torch.Tensor:
        m = self.memory[i]
        if m is None:
            if self._claim(i):
                self._fill(i)  # not prepared (or not yet reached): allocated here
            self._ready[i].wait()
            m = self.memory[i]
            if m is None:
                raise StagingError(f"cannot allocate the staging ring's memory: {self._alloc_error}")
        return m[:n]


# Rings waiting between loads, per process (a fork()ed child never reuses the parent's
# page-locked memory): at most one idle ring per (size, slot size, pinned).
_pool_lock = threading.Lock()
_pool: Dict[Tuple[int, int, int, bool], StagingRing] = {}


@contextmanager
def borrow_ring(ring_bytes: int, slot_bytes: int, pinned: bool) -> Iterator[StagingRing]:
    """A ring for one load: from the pool when one is idle, else a new one; returned after."""
    key = (os.getpid(), ring_bytes, slot_bytes, pinned)
    with _pool_lock:
        ring = _pool.pop(key, None)
    if ring is None:
        ring = StagingRing(ring_bytes, slot_bytes, pinned)
    try:
        yield ring
    finally:
        # Only a whole, healthy ring waits for the next load (RingLoad returns every slot,
        # also after an error; a ring whose memory could not be allocated is dropped).
        if len(ring.free) == ring.nslots and ring._alloc_error is None:
            with _pool_lock:
                _pool.setdefault(key, ring)


def release_staging_memory() -> None:
    """Free the idle staging rings of this process (their page-locked memory included)."""
    with _pool_lock:
        _pool.clear()


def blocks(dst: torch.Tensor, limit: int) -> Iterator[torch.Tensor]:
    """Views of ``dst`` that cover its elements in row-major order, each at most ``limit``
    bytes (limit >= the element size): whole runs along the outermost dimension that fits."""
    if dst.dim() == 0:
        dst = dst.unsqueeze(0)
    if dst.numel() * dst.element_size() <= limit:
        if dst.numel():
            yield dst
        return
    inner = dst[0].numel() * dst.element_size()
    if inner <= limit:
        step = limit // inner
        for i in range(0, dst.shape[0], step):
            yield dst[i : i + step]
    else:
        for i in range(dst.shape[0]):
            yield from blocks(dst[i], limit)


def _column_major(t: torch.Tensor) -> bool:
    """A 2-D host view whose columns are contiguous (a transpose of a row-major block): what
    the native tiled transpose writes."""
    return (
        _host_strided(t)
        and t.dim() == 2
        and t.shape[0] > 1
        and t.shape[1] > 1
        and t.stride(0) == 1
        and t.stride(1) >= t.shape[0]
        and t.element_size() in (1, 2, 4, 8, 16)
    )


def _host_strided(t: torch.Tensor) -> bool:
    """A dense-layout CPU tensor with non-negative strides: one span of host memory. (The
    layout is asked first: a sparse tensor has no strides to ask.)"""
    return (
        t.device.type == "cpu" and t.layout == torch.strided and not t.is_quantized and min(t.stride(), default=0) >= 0
    )


def _span_bytes(t: torch.Tensor) -> torch.Tensor:
    """The bytes from ``t``'s first element to its last (a non-empty strided CPU tensor with
    non-negative strides), as a flat uint8 tensor (no copy)."""
    n = (sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) + 1) * t.element_size()
    return torch.empty(0, dtype=torch.uint8).set_(
        t.untyped_storage(), t.storage_offset() * t.element_size(), (n,), (1,)
    )


def transposes(dst: torch.Tensor, src_dtype: Optional[torch.dtype] = None) -> bool:
    """Whether ``land`` writes ``dst`` with the native tiled transpose (which can compute the
    source's CRC32 as it reads it)."""
    return (src_dtype is None or src_dtype == dst.dtype) and _column_major(dst)


def land(
    dst: torch.Tensor,
    src: torch.Tensor,
    non_blocking: bool = False,
    src_dtype: Optional[torch.dtype] = None,
    crc32: Optional[int] = None,
) -> Optional[int]:
    """Copy raw bytes ``src`` (uint8, host) into the view ``dst`` (same element count), read
    as ``src_dtype`` (default: dst's) and cast by the copy when it differs. A transposed 2-D
    host destination is written by the native tiled transpose (torch's elementwise strided
    copy runs at a third of its speed there). With ``crc32`` (0 to start; only where
    ``transposes``), returns the CRC32 of ``src`` continuing it, computed by the transpose."""
    if transposes(dst, src_dtype):
        rows, cols = dst.shape
        return _crt.transpose_copy(_span_bytes(dst), src, rows, cols, dst.element_size(), dst.stride(1), crc32)
    if crc32 is not None:
        raise ValueError("land: a CRC32 is computed only by the transpose (see transposes())")
    dst.copy_(src.view(src_dtype or dst.dtype).view(dst.shape), non_blocking=non_blocking)
    return None


@dataclass
class StagedTensor:
    """One tensor to move through the ring: ``nbytes`` stored bytes at ``start`` in ``key``,
    landing in row-major order in ``dst`` (a view of the destination). With ``src_dtype``
    the stored elements are of that dtype and each copy casts them to dst's."""

    key: str
    start: int
    nbytes: int
    dst: torch.Tensor
    crc32: Optional[int]  # expected CRC32 of the bytes, or None when they are a part of the record
    where: str  # "s3://bucket/key item fqn", for errors
    on_done: Callable[[], None]  # called once every byte is copied (or queued on the device)
    src_dtype: Optional[torch.dtype] = None
    # Shown each landed slot's stored bytes and their offset in the object (any order), on the
    # loading thread, while the slot's copy proceeds (safetensors' whole-file checksums).
    on_bytes: Optional[Callable[[int, torch.Tensor], None]] = None
    landed: int = 0
    # Slot CRC32s by the slot's block number in the tensor (slots land in any order):
    # block -> (CRC32 of the slot, its length); combined in block order when the last lands.
    parts: Dict[int, Tuple["Future[int]", int]] = field(default_factory=dict)


@dataclass
class _Fill:
    slot: int
    handle: Any
    t: StagedTensor
    dst: torch.Tensor
    n: int
    block: int  # the block's number in its tensor (byte order)
    pos: int  # its offset in the object


@dataclass
class _Busy:
    """A landed slot that is still being read: by a queued CUDA copy (``event``) and/or a
    CRC worker (``crc``). It returns to the ring when both are done."""

    slot: int
    event: Any = None
    crc: Optional["Future[int]"] = None

    def done(self) -> bool:
        return (self.event is None or self.event.query()) and (self.crc is None or self.crc.done())

    def wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()
        if self.crc is not None:
            self.crc.result()


class RingLoad:
    """Moves StagedTensors through a ring (see the module docstring).

    Threads: the loading thread runs everything here except the CRC32s of the slots, which
    ``crc_pool``'s threads compute while the loading thread goes on starting GETs and copies
    (crc32 releases the GIL), but for slots copied by the tiled transpose, which computes
    their CRC32 as it reads them; a tensor's slot CRCs are combined in byte order when its
    last slot lands. No pool: no verification."""

    def __init__(
        self,
        native: "_crt.NativeClient",
        bucket: str,
        ring: StagingRing,
        crc_pool: Optional[ThreadPoolExecutor],
        versions: Optional[ObjectVersions] = None,
    ) -> None:
        self.native, self.bucket, self.ring, self._crc_pool = native, bucket, ring, crc_pool
        self.versions = versions  # each GET's answer checked against the load's first of its object
        self.bytes_read = 0
        self.landed_out_of_order = 0  # slots that landed before a GET started earlier (tests, stats)
        self._fetching: List[_Fill] = []  # GETs in flight, in start order
        self._busy: Deque[_Busy] = deque()  # landed slots still being read, oldest first
        self._side: Dict[torch.device, Any] = {}  # device -> side stream
        self._events: Dict[Tuple[int, torch.device], Any] = {}  # (slot, device) -> its copy's CUDA event

    # --- streams -------------------------------------------------------------------------
    def _stream(self, dev: torch.device) -> Any:
        s = self._side.get(dev)
        if s is None:
            s = torch.cuda.Stream(device=dev)
            s.wait_stream(torch.cuda.current_stream(dev))
            self._side[dev] = s
        return s

    # --- the pipeline --------------------------------------------------------------------
    def run(self, tensors: List[StagedTensor]) -> None:
        ring = self.ring
        ring.prepare(sum(t.nbytes for t in tensors))
        # Host destinations no one has written yet (a cast's fresh tensors, ``to_empty()``) are
        # made resident ahead of the copies into them (_prefault), which would otherwise fault
        # them page by page on this thread.
        fresh = [_span_bytes(t.dst) for t in tensors if _host_strided(t.dst) and t.nbytes]
        with Prefaulter(fresh):
            self._run(tensors)

    def _run(self, tensors: List[StagedTensor]) -> None:
        ring = self.ring
        try:
            for t in tensors:
                if t.nbytes == 0:
                    t.on_done()
                    continue
                pos = t.start
                # Blocks whose stored bytes fill at most a slot (with a cast, in the stored dtype).
                src_size = t.src_dtype.itemsize if t.src_dtype is not None else t.dst.element_size()
                for block, dst in enumerate(blocks(t.dst, ring.slot_bytes // src_size * t.dst.element_size())):
                    n = dst.numel() * src_size
                    slot = self._take_slot()
                    try:
                        view = ring.slot(slot, n)
                        h = self.native.start_get_into(self.bucket, t.key, view, pos, n)
                    except BaseException as e:
                        ring.free.append(slot)
                        if isinstance(e, _crt.S3Exception):
                            raise read_error(t.where, e) from e
                        raise
                    ring.uses += 1
                    self._fetching.append(_Fill(slot, h, t, dst, n, block, pos))
                    pos += n
            while self._fetching:
                self._land_next()
            while self._busy:
                self._reap(block=True)
            for dev, s in self._side.items():
                torch.cuda.current_stream(dev).wait_stream(s)
        except BaseException:
            self._abandon()
            raise

    def _take_slot(self) -> int:
        ring = self.ring
        while not ring.free:
            self._reap(block=False)
            if ring.free:
                break
            if self._busy and not any(f.handle.done() for f in self._fetching):
                self._reap(block=True)  # a copy or CRC of one slot: far shorter than a GET
            else:
                self._land_next()
        return ring.free.popleft()

    def _reap(self, block: bool) -> None:
        """Return the slots nothing reads any more (block: wait for the oldest)."""
        while self._busy:
            b = self._busy[0]
            if not b.done():
                if not block:
                    return
                b.wait()
                block = False
            self._busy.popleft()
            self.ring.free.append(b.slot)

    def _land_next(self) -> None:
        """Land the GET that finishes first (of those already finished, the oldest)."""
        i = self.native.wait_any([f.handle for f in self._fetching])
        assert i is not None  # no timeout given
        f = self._fetching.pop(i)
        if i > 0:
            self.landed_out_of_order += 1
        t = f.t
        busy = _Busy(f.slot)
        try:
            try:
                got = f.handle.wait()
            except _crt.S3Exception as e:
                raise read_error(t.where, e) from e
            if self.versions is not None:
                self.versions.check(t.key, t.where, f.handle)
            if got != f.n:
                raise short_read(t.where, t.nbytes, t.landed + got)
            self.bytes_read += got
            src = self.ring.slot(f.slot, f.n)
            verify = self._crc_pool is not None and t.crc32 is not None
            t.landed += got
            if verify and transposes(f.dst, t.src_dtype):
                # The transpose computes the slot's CRC32 as it reads the slot: no second pass
                # over it on a worker thread.
                crc = land(f.dst, src, crc32=0)
                assert crc is not None
                part: "Future[int]" = Future()
                part.set_result(crc)
                t.parts[f.block] = (part, got)
            else:
                if verify:
                    assert self._crc_pool is not None
                    busy.crc = self._crc_pool.submit(_crt.crc32, src)
                    t.parts[f.block] = (busy.crc, got)
                busy.event = self._copy(t, f.slot, f.dst, src)
            if t.on_bytes is not None:
                t.on_bytes(f.pos, src)
        except BaseException:
            self._busy.append(busy)  # _abandon waits for what still reads the slot
            raise
        self._busy.append(busy)
        if t.landed == t.nbytes:
            if t.parts and t.crc32 is not None:  # parts are only kept when there is a CRC to check
                crc = crc32_of_parts((part.result(), n) for _, (part, n) in sorted(t.parts.items()))
                t.parts.clear()
                if crc != t.crc32:
                    raise crc_mismatch(t.where, t.crc32, crc)
            if busy.event is not None:
                torch.cuda.current_stream(f.dst.device).wait_event(busy.event)
            t.on_done()

    def _copy(self, t: StagedTensor, slot: int, dst: torch.Tensor, src: torch.Tensor) -> Optional[Any]:
        """Queue (CUDA) or do (host) the copy of a landed slot; the CUDA event marks its end."""
        try:
            if dst.device.type != "cuda":
                land(dst, src, src_dtype=t.src_dtype)
                return None
            s = self._stream(dst.device)
            with torch.cuda.stream(s):
                if t.src_dtype is None:
                    land(dst, src, non_blocking=self.ring.pinned)
                else:
                    # Cast on the device: torch would cast a host-to-device copy on the host.
                    # The raw bytes go up as they are, into memory of the side stream's.
                    raw = torch.empty(src.numel(), dtype=torch.uint8, device=dst.device)
                    raw.copy_(src, non_blocking=self.ring.pinned)
                    land(dst, raw, src_dtype=t.src_dtype)
            ev = self._events.get((slot, dst.device))
            if ev is None:  # one event per slot and device, re-recorded each time the slot is used
                ev = self._events[(slot, dst.device)] = torch.cuda.Event()
            ev.record(s)
            return ev
        except RuntimeError as e:  # torch.OutOfMemoryError and CUDA errors among them
            raise StagingError(
                f"{t.where}: copying its bytes into the destination on {dst.device} failed: {type(e).__name__}: {e}"
            ) from e

    def _abandon(self) -> None:
        """After an error: stop every GET, wait until nothing reads or writes a slot, return
        every slot to the ring. Errors met on the way are secondary and dropped."""
        for f in self._fetching:
            f.handle.cancel()
        while self._fetching:
            f = self._fetching.pop()
            try:
                f.handle.wait()
            except _crt.S3Exception:
                pass
            self.ring.free.append(f.slot)
        while self._busy:
            b = self._busy.popleft()
            try:
                b.wait()
            except Exception:
                pass
            self.ring.free.append(b.slot)
