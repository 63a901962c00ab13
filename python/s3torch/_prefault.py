"""Fresh destination memory made resident ahead of the GETs that land in it.

A load into tensors no one has written yet (safetensors into the CPU tensors it allocates, a
DCP restore into a state dict from ``model.to_empty()``) would take every page fault inside the
CRT's event-loop threads, which copy each response's bytes into their destination. On a 2-core
machine (then with one event-loop thread) that thread was the bound, and the faults were half
its time (``perf``: ``clear_page``, ``do_anonymous_page`` under its ``memmove``). A thread of
its own walks the destinations in the order the GETs go and populates them (``_crt.prefault``,
``MADV_POPULATE_WRITE``, about 0.2 CPU-s/GB cheaper here than the same faults taken one at a
time), a chunk at a time so that it stops promptly; the loading thread takes chunks from the
same queue while it waits for a GET (``help_until``). A page a GET reaches first is faulted by
the GET, as before: populating never changes contents, so the race is harmless. On a kernel
without ``MADV_POPULATE_WRITE`` (before 5.14) nothing is done (``write_fallback=False``: the
fallback writes, and these pages are being written). A buffer that is resident already (its
first, middle and last pages: a state dict in use) is skipped: walking it would cost ~0.08
CPU-s/GB for nothing. With ``S3TORCH_HUGE_PAGES=1`` the rest are advised transparent huge
pages first (``_crt.advise_huge_pages``; prefault.h says why it is opt-in): one fault per 2 MiB
instead of 512 (``benchmarks/results/huge-pages/``).
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING, Any, Callable, Deque, List, Optional, Sequence, Tuple, Union

from . import _crt

if TYPE_CHECKING:
    import torch

    Buffer = Union[torch.Tensor, memoryview]
else:
    Buffer = Any

# Per call, and the least worth a thread: the core's own (prefault.h says why).
CHUNK_BYTES = _crt.POPULATE_CHUNK_BYTES
MIN_BYTES = _crt.POPULATE_MIN_BYTES


class Prefaulter:
    """Populates ``buffers`` (flat CPU uint8 tensors, or byte memoryviews), in order, a chunk at a time, on a thread
    of its own until done or stopped; a thread that would only wait for a GET can lend a hand
    (``help_until``), taking the next chunks from the same queue. Those resident already are
    skipped, and where huge pages are enabled the rest are advised them here, before the
    caller's first GET can touch them (a 2 MiB range a GET has faulted one small page of stays
    in small pages). No thread until ``MIN_BYTES`` in all are queued. A caller that maps its
    destinations as it goes (``s3torch cp``, a file at a time) queues each with ``add`` and
    takes it back with ``discard`` before unmapping it. The thread holds the queued buffers
    until it ends (when the queue is empty: the next ``add`` starts another); ``stop()`` joins
    it."""

    def __init__(self, buffers: Sequence[Buffer] = ()) -> None:
        self._queue: Deque[List[Any]] = collections.deque()  # [buffer, next offset], in order
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._chunk_done = threading.Condition(self._lock)
        self._busy: List[Buffer] = []  # the buffers a chunk of which is being populated now
        self._queued = 0  # bytes ever queued: the thread starts at MIN_BYTES
        self.populated = 0  # bytes; read after stop()
        self.helped = 0  # of which by help_until
        self._thread: Optional[threading.Thread] = None  # the latest (the earlier ones ended)
        self._running = False  # a thread is at work (or about to end, the queue empty)
        self._active = False  # MIN_BYTES queued: until then nothing is populated
        self.add(buffers)

    def add(self, buffers: Sequence[Buffer]) -> None:
        """Queue more buffers, after those queued (they are populated in that order)."""
        fresh = [b for b in buffers if _nbytes(b) and not _crt.looks_resident(b)]
        with self._lock:
            if self._stopped.is_set():
                return
            self._queue.extend([b, 0] for b in fresh)
            self._queued += sum(_nbytes(b) for b in fresh)
            if self._queued < MIN_BYTES:  # a load of small tensors pays for no thread
                return
            for b in fresh if self._active else [e[0] for e in self._queue]:  # the first time: all queued
                _crt.advise_huge_pages(b)
            self._active = True
            if self._queue and not self._running:
                self._running = True
                self._thread = threading.Thread(target=self._run, name="s3torch-prefault", daemon=True)
                self._thread.start()

    def discard(self, buffer: Buffer) -> None:
        """Take ``buffer`` out of the queue, waiting for a chunk of it in hand: once this
        returns, nothing here holds it (a file's map can close)."""
        with self._lock:
            self._queue = collections.deque(e for e in self._queue if e[0] is not buffer)
            while any(b is buffer for b in self._busy):
                self._chunk_done.wait()

    def _next(self) -> Optional[Tuple[Buffer, Buffer]]:
        """The next chunk, as (its buffer, the chunk), marked in hand until ``_populate`` ends."""
        with self._lock:
            while self._active and not self._stopped.is_set() and self._queue:
                entry = self._queue[0]
                b, at = entry
                if at >= _nbytes(b):
                    self._queue.popleft()
                    continue
                entry[1] = at + CHUNK_BYTES
                self._busy.append(b)
                return b, b[at : at + CHUNK_BYTES]
            return None

    def _populate(self, chunk: Tuple[Buffer, Buffer], helping: bool = False) -> bool:
        b, piece = chunk
        n = _nbytes(piece)
        try:
            ok = _crt.prefault(piece, write_fallback=False)
        finally:
            if isinstance(piece, memoryview):
                piece.release()  # a slice of a file's map: let the map close
            del piece, chunk
            with self._lock:
                del self._busy[next(i for i, x in enumerate(self._busy) if x is b)]
                self._chunk_done.notify_all()
        if not ok:
            self._stopped.set()  # this kernel cannot populate: the GETs fault their pages themselves
            return False
        with self._lock:
            self.populated += n
            if helping:
                self.helped += n
        return True

    def _run(self) -> None:
        while True:
            chunk = self._next()
            if chunk is not None and self._populate(chunk):
                del chunk
                continue
            with self._lock:
                if chunk is None and self._queue and not self._stopped.is_set():
                    continue  # added since _next looked
                self._running = False
                self._queue.clear()  # done, stopped, or this kernel cannot: let them go
            return

    def help_until(self, done: Callable[[], bool]) -> None:
        """Populate the next chunks on this thread until ``done()`` (a GET this thread would
        otherwise wait for has finished) or none is left. On a 2-core machine the prefaulting
        thread gets its share of the cores beside two event-loop threads and the server, and
        falls behind them, which then take those faults themselves; the waiting thread's share
        keeps it ahead (``benchmarks/results/event-loops/README.md``)."""
        while not done() and (chunk := self._next()) is not None:
            if not self._populate(chunk, helping=True):
                return
            del chunk

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()
        with self._lock:
            self._thread = None
            self._queue.clear()

    def __enter__(self) -> "Prefaulter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _nbytes(b: Buffer) -> int:
    """Bytes of a flat uint8 tensor or a byte memoryview (``s3torch cp``'s file maps: this
    module imports no torch, which the command line never loads)."""
    return b.numel() if hasattr(b, "numel") else len(b)
