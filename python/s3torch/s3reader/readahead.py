"""Read-ahead: how a sequential reader reads an object it does not hold whole.

A sequential reader holds an object of known size up to ``WHOLE_MAX`` whole (one GET, parts
in parallel). A larger object, or one whose size nothing told the reader before its first
read (``S3Checkpoint.reader``, ``S3Client.get_object`` without a listing), is read through
segments instead, so the memory a reader takes is bounded whatever the object's size:

- a read that finds no segment at its position GETs one (``SEGMENT`` bytes from there; the
  reader's first, ``FIRST_SEGMENT``), and
  later reads inside it are served from memory: the small probes of a format's header or
  trailer (a ``torch.load``'s zip directory at the end, its pickle at the start) cost one GET
  each, not the whole object;
- a read that starts inside the previous one or where it ended (or up to ``SEQUENTIAL_GAP``
  bytes later) is a stream: segments are kept in flight ahead of it, ``SEGMENT`` bytes the first time,
  doubling up to ``READ_AHEAD_MAX``, so a long run of small reads (a ``torch.load``'s record
  headers and small tensors) waits for no request of its own;
- a part of a read that no segment holds, of at least ``DIRECT_MIN`` bytes, is a GET straight
  into the caller's memory (a ``torch.load``'s large storages): no copy, no memory of ours;
- segments behind a stream's position are dropped, then the least recently read ones, so at
  most ``HELD_MAX`` bytes are held (in flight or landed).

Every GET but the first is held to the first's version (s3reader.py); no GET starts before
the first has answered.
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, List, Optional, Tuple

from .. import _crt

if TYPE_CHECKING:
    from .s3reader import S3Reader

MiB = 1 << 20
SEGMENT = 8 * MiB
FIRST_SEGMENT = 1 * MiB  # the first GET: it may be all of a small object
READ_AHEAD_MAX = 64 * MiB
HELD_MAX = READ_AHEAD_MAX + 4 * SEGMENT
WHOLE_MAX = 128 * MiB
DIRECT_MIN = 1 * MiB
SEQUENTIAL_GAP = 64 * 1024


class _Segment:
    """Bytes [start, end) of the object: a GET in flight into ``buf``, or landed there."""

    __slots__ = ("start", "end", "buf", "view", "handle", "used")

    def __init__(self, start: int, end: int, used: int) -> None:
        self.start = start
        self.end = end
        self.buf = _crt.HostBuffer(end - start)
        self.view = memoryview(self.buf)
        self.handle: Optional["_crt.GetHandle"] = None
        self.used = used


class ReadAhead:
    """The segments of one reader's object (module docstring). Not thread-safe, like readers."""

    def __init__(self, reader: "S3Reader") -> None:
        self._reader = reader
        self._segs: List[_Segment] = []  # sorted by start, never overlapping
        self._starts: List[int] = []  # their starts, for bisect
        self._last_start = 0  # where the previous read started
        self._last_end: Optional[int] = None  # and where it ended
        self._ahead = 0  # bytes kept in flight ahead of the stream (0: not a stream)
        self._clock = 0
        self._hot: Optional[_Segment] = None  # the landed segment the last read ended in

    # --- what is held -----------------------------------------------------------------------
    @property
    def held_bytes(self) -> int:
        """Bytes of the object the segments hold or are fetching."""
        return sum(s.end - s.start for s in self._segs)

    def _find(self, pos: int) -> Tuple[Optional[_Segment], int]:
        """The segment holding ``pos`` (or None) and the start of the first segment after
        ``pos`` (the object's size when none follows)."""
        i = bisect.bisect_right(self._starts, pos) - 1
        following = self._starts[i + 1] if i + 1 < len(self._segs) else self._size()
        return (self._segs[i] if i >= 0 and self._segs[i].end > pos else None), following

    def _size(self) -> int:
        return self._reader._size

    # --- GETs ---------------------------------------------------------------------------------
    def _start(self, dest: memoryview, offset: int, length: int) -> "_crt.GetHandle":
        h = self._reader._start_get(dest, offset, length)
        if not self._reader._pinned:  # the first GET answers alone: the others are held to its version
            self._reader._landed(h)
        return h

    def _add(self, start: int, end: int) -> _Segment:
        self._clock += 1
        seg = _Segment(start, end, self._clock)
        seg.handle = self._start(seg.view, start, end - start)
        i = bisect.bisect_left(self._starts, start)
        self._segs.insert(i, seg)
        self._starts.insert(i, start)
        return seg

    def _wait(self, seg: _Segment) -> None:
        if seg.handle is None:
            return
        try:
            got = self._reader._landed(seg.handle)
        except BaseException:
            self._drop(seg)  # a later read makes its own GET
            raise
        if got < seg.end - seg.start:  # segments are planned within the pinned version's size
            self._drop(seg)
            raise _crt.S3Exception(
                f"GET {self._reader.uri}: the server sent {got} bytes at {seg.start} where the object's size, "
                f"{self._size()}, calls for {seg.end - seg.start}"
            )
        seg.handle = None

    def _drop(self, seg: _Segment) -> None:
        if seg is self._hot:
            self._hot = None
        i = self._segs.index(seg)
        del self._segs[i]
        del self._starts[i]
        # Dropping a handle in flight cancels its GET and waits (GIL released) until the CRT
        # no longer writes into the buffer.

    # --- reads --------------------------------------------------------------------------------
    def _in_hot(self, pos: int, n: int) -> Optional[_Segment]:
        """The landed segment of the last read when it holds [pos, pos + n): a small read
        inside it (pickle's, readline's) is a copy, nothing more; the read-ahead moves on at
        the next read that leaves it."""
        hot = self._hot
        if hot is not None and hot.start <= pos and pos + n <= hot.end:
            self._last_start, self._last_end = pos, pos + n
            return hot
        return None

    def read(self, pos: int, n: int) -> Optional[bytes]:
        """``n`` bytes at ``pos`` when the segment of the last read holds them, else None."""
        hot = self._in_hot(pos, n)
        return None if hot is None else bytes(hot.view[pos - hot.start : pos - hot.start + n])

    def readinto(self, dest: memoryview, pos: int) -> int:
        """Fill ``dest`` from the object at ``pos``; returns the bytes read (short at the end)."""
        hot = self._in_hot(pos, len(dest))
        if hot is not None:
            dest[:] = hot.view[pos - hot.start : pos - hot.start + len(dest)]
            return len(dest)
        if not self._reader._pinned:
            self._first(dest, pos)
        n = min(len(dest), self._size() - pos)
        if n <= 0:
            return 0
        end = pos + n
        # A stream: this read starts inside the previous one (a peek, then the read) or at most
        # SEQUENTIAL_GAP bytes after its end.
        stream = self._last_end is not None and self._last_start <= pos <= self._last_end + SEQUENTIAL_GAP
        copies: List[Tuple[_Segment, int, int, int]] = []  # (segment, its offset, dest offset, length)
        direct: List["_crt.GetHandle"] = []
        p = pos
        while p < end:
            seg, following = self._find(p)
            if seg is None:
                gap_end = min(end, following)
                if gap_end - p >= DIRECT_MIN:
                    direct.append(self._start(dest[p - pos : gap_end - pos], p, gap_end - p))
                    p = gap_end
                    continue
                seg = self._add(p, min(following, p + SEGMENT))
            k = min(end, seg.end) - p
            self._clock += 1
            seg.used = self._clock
            copies.append((seg, p - seg.start, p - pos, k))
            p += k
        self._last_start, self._last_end = pos, end
        if stream:
            self._ahead = min(READ_AHEAD_MAX, max(SEGMENT, 2 * self._ahead))
            self._read_ahead(end)
        else:
            self._ahead = 0
        for seg, at, to, k in copies:
            self._wait(seg)
            dest[to : to + k] = seg.view[at : at + k]
            self._hot = seg
        for h in direct:
            self._reader._landed(h)
        self._evict(pos if stream else None, end)
        return n

    def _first(self, dest: memoryview, pos: int) -> None:
        """The reader's first GET, which pins its version (and tells the size nobody told it):
        a segment of ``FIRST_SEGMENT`` bytes at ``pos``, whatever ``dest`` is (a small object
        takes no more); the read then proceeds as any other."""
        try:
            seg = self._add(pos, pos + min(FIRST_SEGMENT, SEGMENT))
        except _crt.S3Exception as e:
            if e.http_status != 416:  # 416: at or past the end of the object (the size: a HEAD)
                raise
            return
        seg.end = min(seg.end, self._size())

    def _read_ahead(self, pos: int) -> None:
        """Start segments over [pos, pos + the read-ahead) that none holds."""
        limit = min(self._size(), pos + self._ahead)
        p = pos
        while p < limit:
            seg, following = self._find(p)
            if seg is not None:
                p = seg.end
                continue
            p = self._add(p, min(following, p + SEGMENT)).end

    def _evict(self, behind: Optional[int], end: int) -> None:
        """Drop what a stream has passed (segments ending at or before ``behind``), then the
        least recently read segments until at most ``HELD_MAX`` bytes are held; segments in
        flight ahead of the stream stay."""
        if behind is not None:
            for seg in [s for s in self._segs if s.end <= behind]:
                self._drop(seg)
        held = self.held_bytes
        if held <= HELD_MAX:
            return
        ahead_end = end + self._ahead
        for seg in sorted(self._segs, key=lambda s: s.used):
            if held <= HELD_MAX:
                break
            if end <= seg.start < ahead_end:
                continue  # read-ahead of the stream
            held -= seg.end - seg.start
            self._drop(seg)

    def close(self) -> None:
        """Drop every segment (GETs in flight are cancelled)."""
        self._hot = None
        self._segs.clear()
        self._starts.clear()
