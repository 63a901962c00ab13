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

import threading
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

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
    in small pages). No thread for less than ``MIN_BYTES`` in all. The thread holds the
    buffers until it ends; ``stop()`` joins it."""

    def __init__(self, buffers: Sequence[Buffer]) -> None:
        self._buffers = [b for b in buffers if _nbytes(b) and not _crt.looks_resident(b)]
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._at = (0, 0)  # the next chunk: (buffer, offset)
        self.populated = 0  # bytes; read after stop()
        self.helped = 0  # of which by help_until
        self._thread: Optional[threading.Thread] = None
        if sum(_nbytes(b) for b in self._buffers) >= MIN_BYTES:
            for b in self._buffers:
                _crt.advise_huge_pages(b)
            self._thread = threading.Thread(target=self._run, name="s3torch-prefault", daemon=True)
            self._thread.start()
        else:
            self._buffers = []

    def _next(self) -> Optional[Buffer]:
        with self._lock:
            i, at = self._at
            if self._stopped.is_set() or i >= len(self._buffers):
                return None
            b = self._buffers[i]
            self._at = (i, at + CHUNK_BYTES) if at + CHUNK_BYTES < _nbytes(b) else (i + 1, 0)
            return b[at : at + CHUNK_BYTES]

    def _populate(self, piece: Buffer, helping: bool = False) -> bool:
        if not _crt.prefault(piece, write_fallback=False):
            self._stopped.set()  # this kernel cannot populate: the GETs fault their pages themselves
            return False
        with self._lock:
            self.populated += _nbytes(piece)
            if helping:
                self.helped += _nbytes(piece)
        return True

    def _run(self) -> None:
        while (piece := self._next()) is not None and self._populate(piece):
            pass
        with self._lock:
            self._buffers = []  # done: let them go

    def help_until(self, done: Callable[[], bool]) -> None:
        """Populate the next chunks on this thread until ``done()`` (a GET this thread would
        otherwise wait for has finished) or none is left. On a 2-core machine the prefaulting
        thread gets its share of the cores beside two event-loop threads and the server, and
        falls behind them, which then take those faults themselves; the waiting thread's share
        keeps it ahead (``benchmarks/results/event-loops/README.md``)."""
        while not done() and (piece := self._next()) is not None and self._populate(piece, helping=True):
            pass

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "Prefaulter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _nbytes(b: Buffer) -> int:
    """Bytes of a flat uint8 tensor or a byte memoryview (``s3torch cp``'s file maps: this
    module imports no torch, which the command line never loads)."""
    return b.numel() if hasattr(b, "numel") else len(b)
