"""DCP-optimized reader: for torch.distributed.checkpoint loads, which read a known, sorted
list of item byte ranges from each file, in order.

Item ranges closer than ``max_gap_size`` are coalesced into one ranged GET (a group); the
group lands in one buffer straight from the CRT and each item is a memoryview into it, so
no item is copied before the caller reads it. Only the current group is held: memory stays
at about one group (groups are capped at ``MAX_GROUP_BYTES`` unless one item is larger).
Access must move forward across items; going back to an earlier item raises ValueError.
"""

from __future__ import annotations

import bisect
import io
from dataclasses import dataclass
from typing import List, Optional, Sequence

from .. import _crt
from .._checks import is_number
from .s3reader import GetObjectInfo, S3Reader

DEFAULT_MAX_GAP_SIZE = 32 * 1024 * 1024
MAX_GROUP_BYTES = 256 * 1024 * 1024

GUIDANCE = (
    "The DCP-optimized reader only serves the item ranges of the load plan, in increasing "
    "order. If you see this with S3StorageReader's default reader, load with the generic "
    "reader instead: S3StorageReader(region, path, reader_constructor=S3ReaderConstructor.default())"
)
FALLBACK_GUIDANCE = GUIDANCE  # s3torchconnector's name for it
# Starts every message about a read outside the planned ranges or in the wrong order (as the
# peer's constant of this name does), so code can recognise them.
FIND_ITEM_ERROR_PREFIX = "DCPOptimizedS3Reader only supports sequentially accessing provided ranges: "


@dataclass(frozen=True)
class ItemRange:
    """Bytes [start, end) of one DCP item (tensor or bytes record) in a file."""

    start: int
    end: int


@dataclass
class RangeGroup:
    """Neighbouring item ranges fetched by one ranged GET."""

    start: int
    end: int
    items: List[ItemRange]


def coalesce(ranges: Sequence[ItemRange], max_gap_size: float) -> List[RangeGroup]:
    """Validate sorted, non-overlapping ranges and group those within max_gap_size."""
    groups: List[RangeGroup] = []
    prev_end = -1
    for r in ranges:
        if r.start < 0 or r.end < r.start:
            raise ValueError(f"invalid item range [{r.start}, {r.end})")
        if r.start < prev_end:
            raise ValueError(f"item ranges must be sorted and not overlap: [{r.start}, {r.end}) after end {prev_end}")
        prev_end = r.end
        if r.end == r.start:
            continue
        g = groups[-1] if groups else None
        if (
            g is not None
            and r.start - g.end <= max_gap_size
            and r.end - g.start <= max(MAX_GROUP_BYTES, r.end - r.start)
        ):
            g.end = r.end
            g.items.append(r)
        else:
            groups.append(RangeGroup(r.start, r.end, [r]))
    return groups


class DCPOptimizedS3Reader(S3Reader):
    """For DCP loads: fetches the given item ranges, coalesced across gaps up to ``max_gap_size``, and serves reads
    inside them."""

    def __init__(
        self,
        bucket: str,
        key: str,
        get_object_info: GetObjectInfo,
        native: "_crt.NativeClient",
        item_ranges: Sequence[ItemRange],
        max_gap_size: float = DEFAULT_MAX_GAP_SIZE,
    ) -> None:
        super().__init__(bucket, key, get_object_info)
        if not is_number(max_gap_size) or max_gap_size < 0:
            raise ValueError(f"max_gap_size must be a non-negative number, got {max_gap_size!r}")
        self._native = native
        self._groups = coalesce(list(item_ranges), max_gap_size)
        self._items = [it for g in self._groups for it in g.items]
        self._item_starts = [it.start for it in self._items]
        self._item_group = [gi for gi, g in enumerate(self._groups) for _ in g.items]
        self._cur_item = -1
        self._cur_group = -1
        self._group_buf: Optional[memoryview] = None

    def _item_at(self, pos: int, length: int) -> int:
        """Index of the item holding [pos, pos+length), enforcing forward order."""
        i = bisect.bisect_right(self._item_starts, pos) - 1
        if i < 0 or pos + max(length, 0) > self._items[i].end or (length > 0 and pos >= self._items[i].end):
            raise ValueError(
                f"{FIND_ITEM_ERROR_PREFIX}{self.uri}: read of [{pos}, {pos + length}) is outside the planned item "
                f"ranges. {GUIDANCE}"
            )
        if i < self._cur_item:
            raise ValueError(
                f"{FIND_ITEM_ERROR_PREFIX}{self.uri}: read at {pos} goes back to an earlier item "
                f"(item {i} after item {self._cur_item}). "
                f"{GUIDANCE}"
            )
        return i

    def _view(self, pos: int, length: int) -> memoryview:
        i = self._item_at(pos, length)
        gi = self._item_group[i]
        if gi != self._cur_group:
            g = self._groups[gi]
            self._group_buf = None  # drop the previous group before fetching the next
            host = _crt.HostBuffer(g.end - g.start)
            # Each group a GET of its own, all of the first one's version (s3reader.py).
            got = self._get_into(memoryview(host), g.start, g.end - g.start)
            if got != g.end - g.start:
                raise _crt.S3Exception(
                    f"GetObject {self.uri}: bytes [{g.start}, {g.end}) requested, {got} received: "
                    "the object is shorter than the checkpoint metadata says (truncated?)"
                )
            self._group_buf = memoryview(host)
            self._cur_group = gi
        self._cur_item = i
        g = self._groups[gi]
        assert self._group_buf is not None
        return self._group_buf[pos - g.start : pos - g.start + length]

    def _remaining_in_item(self, pos: int) -> int:
        i = bisect.bisect_right(self._item_starts, pos) - 1
        return max(0, self._items[i].end - pos) if i >= 0 else 0

    def _read(self, size: Optional[int]) -> bytes:
        return self._first_read(lambda: self._read_once(size))

    def _read_once(self, size: Optional[int]) -> bytes:
        if size is None:
            raise ValueError(
                f"{self.uri}: read() of a whole file is not supported by the DCP-optimized reader. {GUIDANCE}"
            )
        if size == 0:
            return b""
        n = min(size, self._remaining_in_item(self._pos))
        view = self._view(self._pos, n if n else size)
        self._pos += len(view)
        return bytes(view)

    def _readinto(self, mv: memoryview) -> int:
        return self._first_read(lambda: self._readinto_once(mv))

    def peek(self, size: int = 0, /) -> bytes:
        """As S3Reader.peek, within the planned item at the position (b"" at its end: a look
        ahead past it is no read of this plan)."""
        self._check_open()
        if self._remaining_in_item(self._pos) == 0:
            return b""
        return super().peek(size)

    def _forget_bytes(self) -> None:
        self._group_buf = None
        self._cur_group = -1

    def _readinto_once(self, mv: memoryview) -> int:
        if len(mv) == 0:
            return 0
        n = min(len(mv), self._remaining_in_item(self._pos))
        view = self._view(self._pos, n if n else len(mv))
        mv[: len(view)] = view
        self._pos += len(view)
        return len(view)

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        """As S3Reader.seek, with SEEK_SET and SEEK_CUR only."""
        if whence not in (io.SEEK_SET, io.SEEK_CUR):
            raise TypeError("the DCP-optimized reader supports SEEK_SET and SEEK_CUR only")
        return super().seek(offset, whence)

    def close(self) -> None:
        """Release the fetched ranges; later reads raise ValueError."""
        self._group_buf = None
        super().close()
