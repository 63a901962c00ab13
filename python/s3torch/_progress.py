"""Progress of long operations (DCP saves and loads, the command line's cp, verify, du).

Callers only count: ``add(n)`` is a locked integer add, cheap enough for every tensor or
part. A daemon thread renders, so the hot path never formats or writes anything:

- ``"bar"``: a live bar (done, total, percent, rate, ETA when the total is known) redrawn
  every 0.2 s on a terminal, through ``tqdm`` when it is installed, else a built-in one.
- ``"lines"``: one line every ``interval`` seconds (default 5) to the ``s3torch`` logger,
  or to the stream when that logger is not enabled for INFO.
- ``"off"``: nothing while running.

``mode=None`` picks ``"bar"`` when the stream is a terminal, else ``"lines"``. ``done()``
closes the bar and emits one summary line (unless ``summary=False``), then resets the
counters so the object can time the next operation.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from typing import Any, Callable, Optional, TextIO

from . import _crt

log = logging.getLogger("s3torch")

BAR_TICK = 0.2  # seconds between redraws of a live bar
LINE_INTERVAL = 5.0  # seconds between periodic lines


def human(n: float, unit: str = "B") -> str:
    """``n`` in decimal units: 1.23 GB, 456 MB, 12 B; 1.2 k objects for other units."""
    if unit != "B":
        return f"{n:,.0f} {unit}"
    for prefix in ("", "k", "M", "G", "T", "P"):
        if abs(n) < 1000 or prefix == "P":
            return f"{n:.0f} {prefix}B" if prefix == "" else f"{n:.2f} {prefix}B"
        n /= 1000
    raise AssertionError("unreachable")


def _duration(s: float) -> str:
    s = int(s + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Counts the bytes (or items) of one operation at a time and reports them.

    Args:
        what, target: how lines start: ``"s3torch: DCP load from s3://b/ckpt: ..."``.
        enabled: False: count, report nothing (the library's default).
        total: the expected count, for percent and ETA (``set_total`` later also works).
        unit: ``"B"`` (shown in kB/MB/GB, rates in GB/s) or a noun such as ``"objects"``.
        stream: where bars and unlogged lines go (default: ``sys.stderr`` when used).
        mode: ``"bar"``, ``"lines"``, ``"off"``, or None to choose by ``stream``.
        interval: seconds between periodic lines.
        summary: emit the final summary line in ``done()``.
        summary_to: where the summary goes when the logger is not enabled for INFO
            (default: ``sys.stdout``, the library's place for it).
    """

    def __init__(
        self,
        what: str,
        target: str = "",
        enabled: bool = True,
        *,
        total: Optional[int] = None,
        unit: str = "B",
        stream: Optional[TextIO] = None,
        mode: Optional[str] = None,
        interval: float = LINE_INTERVAL,
        summary: bool = True,
        summary_to: Optional[TextIO] = None,
    ) -> None:
        if mode not in (None, "bar", "lines", "off"):
            raise ValueError(f"mode must be 'bar', 'lines', 'off' or None, got {mode!r}")
        self.what, self.target, self.enabled, self.unit = what, target, enabled, unit
        self._stream, self._mode, self.interval = stream, mode, interval
        self._summary, self._summary_to = summary, summary_to
        self._lock = threading.Lock()  # guards n and total (add() may come from many threads)
        self.n = 0
        self.total = total
        self.t0: Optional[float] = None
        # Owned by the thread that calls start()/done(): the renderer and its thread.
        self._renderer: Optional[_Renderer] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def __getstate__(self) -> dict:
        # Pickled (async_save, spawn) as its settings: no lock, thread or bar crosses over.
        state = {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_renderer", "_thread", "_stop")}
        return dict(state, n=0, total=None, t0=None)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._renderer, self._thread = None, None

    # --- counting (any thread) --------------------------------------------------------------
    def add(self, n: int) -> None:
        with self._lock:
            self.n += n

    def set_total(self, total: Optional[int]) -> None:
        with self._lock:
            self.total = total

    def add_total(self, n: int) -> None:
        with self._lock:
            self.total = (self.total or 0) + n

    def snapshot(self) -> "tuple[int, Optional[int], float]":
        """(count, total, seconds since start)."""
        with self._lock:
            n, total = self.n, self.total
        return n, total, (time.perf_counter() - self.t0) if self.t0 is not None else 0.0

    # --- lifecycle (the operation's thread) ---------------------------------------------------
    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def mode(self) -> str:
        if not self.enabled:
            return "off"
        if self._mode is not None:
            return self._mode
        return "bar" if is_terminal(self.stream) else "lines"

    def start(self) -> None:
        """Start timing (and rendering); a second call while running does nothing."""
        if self.t0 is not None:
            return
        self.t0 = time.perf_counter()
        mode = self.mode
        if mode == "off":
            return
        self._renderer = _make_bar(self) if mode == "bar" else _Lines(self)
        self._stop.clear()
        tick = BAR_TICK if mode == "bar" else self.interval
        self._thread = threading.Thread(target=self._run, args=(tick,), name="s3torch-progress", daemon=True)
        self._thread.start()

    def _run(self, tick: float) -> None:
        while not self._stop.wait(tick):
            renderer = self._renderer
            if renderer is not None:
                renderer.update()

    def done(self) -> Optional[str]:
        """Stop rendering, emit the summary; returns it (None when nothing was started)."""
        if self.t0 is None:
            return None
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._renderer is not None:
            self._renderer.close()
        n, _, secs = self.snapshot()
        secs = max(secs, 1e-9)
        if self.unit == "B":
            msg = f"s3torch: {self.what} {self.target}: {n / 1e6:.1f} MB in {secs:.2f}s, {n / 1e9 / secs:.2f} GB/s"
        else:
            msg = f"s3torch: {self.what} {self.target}: {human(n, self.unit)} in {secs:.2f}s"
        if self.enabled and self._summary:
            _emit(msg, self._summary_to if self._summary_to is not None else sys.stdout)
        self._renderer, self._thread, self.t0 = None, None, None
        with self._lock:
            self.n, self.total = 0, None
        return msg

    def __enter__(self) -> "Progress":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.done()
        else:  # stop drawing, no summary of a failed operation
            summary, self._summary = self._summary, False
            try:
                self.done()
            finally:
                self._summary = summary

    def status(self) -> str:
        """``1.23 GB of 4.30 GB (28%), 0.95 GB/s, ETA 3s`` (what a periodic line says)."""
        n, total, secs = self.snapshot()
        parts = [
            human(n, self.unit)
            + (f" of {human(total, self.unit)} ({min(100, 100 * n // max(total, 1))}%)" if total else "")
        ]
        if secs > 0 and self.unit == "B":
            parts.append(f"{n / 1e9 / secs:.2f} GB/s")
        elif secs > 0:
            parts.append(f"{n / secs:,.0f} {self.unit}/s")
        if total and n and secs > 0 and n < total:
            parts.append(f"ETA {_duration((total - n) * secs / n)}")
        retrying = _crt.retry_status()  # "retrying 12 s: SlowDown (HTTP 503)" while requests retry
        if retrying:
            parts.append(retrying)
        return ", ".join(parts)


def _emit(msg: str, stream: TextIO) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info(msg)
    else:
        print(msg, file=stream, flush=True)


class _Renderer:
    def update(self) -> None:  # called on the renderer thread
        raise NotImplementedError

    def close(self) -> None:  # called on the operation's thread, after the renderer thread ended
        raise NotImplementedError


class _Lines(_Renderer):
    """A line every interval: ``s3torch: DCP load from s3://b/c: 1.2 GB of 4.3 GB (28%), ...``."""

    def __init__(self, p: Progress) -> None:
        self.p = p

    def update(self) -> None:
        _emit(f"s3torch: {self.p.what} {self.p.target}: {self.p.status()}", self.p.stream)

    def close(self) -> None:
        pass


class _TextBar(_Renderer):
    """The built-in bar: one line redrawn in place with a carriage return."""

    def __init__(self, p: Progress) -> None:
        self.p = p

    def update(self) -> None:
        n, total, _ = self.p.snapshot()
        width = shutil.get_terminal_size((80, 24)).columns
        status = self.p.status()
        bar = ""
        if total:
            cells = min(30, max(10, width - 60))  # fixed per terminal width, so the bar does not jump
            full = min(cells, cells * n // max(total, 1))
            bar = "|" + "#" * full + "-" * (cells - full) + "| "
        label = f"{self.p.what} {self.p.target}"
        room = max(10, width - 1 - len(bar) - len(status) - 2)
        if len(label) > room:
            label = "..." + label[-(room - 3) :]
        self.p.stream.write(f"\r{label}: {bar}{status}".ljust(width - 1)[: width - 1])
        self.p.stream.flush()

    def close(self) -> None:
        self.update()
        self.p.stream.write("\n")
        self.p.stream.flush()


class _TqdmBar(_Renderer):
    def __init__(self, p: Progress, tqdm: Callable[..., Any]) -> None:
        self.p = p
        byte = p.unit == "B"
        try:  # a terminal that reports no size (a pty nobody sized) would get an empty bar
            sized = os.get_terminal_size(p.stream.fileno()).columns > 0
        except (AttributeError, OSError, ValueError):
            sized = False
        self.bar = tqdm(
            total=p.total,
            desc=f"{p.what} {p.target}",
            unit=p.unit if byte else f" {p.unit}",
            unit_scale=byte,
            unit_divisor=1000,
            file=p.stream,
            dynamic_ncols=sized,
            ncols=None if sized else 80,
            nrows=None if sized else 24,
            mininterval=BAR_TICK,
            leave=True,
        )

    def update(self) -> None:
        n, total, _ = self.p.snapshot()
        if total != self.bar.total and total is not None:
            self.bar.total = total
        retrying = _crt.retry_status()
        if retrying != getattr(self, "_retrying", ""):
            self._retrying = retrying
            self.bar.set_postfix_str(retrying, refresh=False)
        self.bar.update(n - self.bar.n)

    def close(self) -> None:
        self.update()
        self.bar.close()


def _make_bar(p: Progress) -> _Renderer:
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextBar(p)
    return _TqdmBar(p, tqdm)
