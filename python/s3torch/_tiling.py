"""Whether boxes tile an array: every element of a tensor in exactly one of its saved pieces
(or chunks). A checkpoint's pieces that miss elements leave them, in a load, as they were in
the destination, with no error in torch; pieces that overlap hold two values for one element.

Pieces are boxes (offsets, sizes) in the tensor's index space. Overlaps are found by a sweep
along the dimension the pieces split most (pieces of a grid meet only the few beside them);
with none, the pieces tile the tensor exactly when they lie inside it and their volumes add
up to its own. Pure, torch-free: the DCP and safetensors readers and the command line use it.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

Box = Tuple[Sequence[int], Sequence[int]]  # (offsets, sizes)
BUDGET = 10_000_000  # pairs of pieces compared, at most, for one tensor


class TooManyPieces(ValueError):
    """Pieces that would take more than ``BUDGET`` comparisons to check (no checkpoint that
    torch writes: pieces of a grid meet a few others each)."""


def overlap(boxes: Sequence[Box], budget: int = BUDGET) -> Optional[Tuple[int, int]]:
    """The indexes of two boxes that share an element, or None. Empty boxes share none.
    ``TooManyPieces`` past ``budget`` comparisons."""
    if not boxes:
        return None
    ndim = len(boxes[0][0])
    if ndim == 0:  # 0-dim: every piece is the one element
        return (0, 1) if len(boxes) > 1 else None
    d = max(range(ndim), key=lambda k: len({b[0][k] for b in boxes}))
    order = sorted((i for i, b in enumerate(boxes) if all(boxes[i][1])), key=lambda i: boxes[i][0][d])
    active: List[Tuple[int, int]] = []  # (end along d, index), a heap
    for i in order:
        off, size = boxes[i]
        while active and active[0][0] <= off[d]:
            heapq.heappop(active)
        budget -= len(active)
        if budget < 0:
            raise TooManyPieces(f"{len(boxes)} pieces that overlap along every dimension")
        for _, j in active:  # each begins before i along d and ends after i begins
            o2, s2 = boxes[j]
            if all(off[k] < o2[k] + s2[k] and o2[k] < off[k] + size[k] for k in range(ndim)):
                return (j, i)
        heapq.heappush(active, (off[d] + size[d], i))
    return None


def split_tiles(size: Sequence[int], boxes: Sequence[Box]) -> Optional[bool]:
    """For boxes that each span every dimension but one (a tensor split along one dimension, as
    torch's FSDP and tensor-parallel shards are): whether they tile it, a box listed twice
    counted once (True, False); None for boxes of any other shape (``find`` checks those). A
    sort of the split dimension's ranges: about twice a sum of the boxes' volumes."""
    ndim = len(size)
    if not boxes or ndim == 0:
        return None
    first_off, first_size = boxes[0]
    if len(first_off) != ndim or len(first_size) != ndim:
        return None
    split = [k for k in range(ndim) if first_off[k] != 0 or first_size[k] != size[k]]
    if len(split) > 1:
        return None
    d = split[0] if split else 0
    whole = [k for k in range(ndim) if k != d]
    spans = []
    for off, sz in boxes:
        if len(off) != ndim or len(sz) != ndim or any(off[k] != 0 or sz[k] != size[k] for k in whole):
            return None
        spans.append((off[d], sz[d]))
    spans.sort()
    end, last = 0, None
    for span in spans:
        if span[1] == 0 or span == last:  # an empty piece holds nothing; a piece again, nothing new
            continue
        if span[0] != end:
            return False
        end, last = span[0] + span[1], span
    return end == size[d]


def missing(size: Sequence[int], boxes: Sequence[Box]) -> Optional[str]:
    """What of a tensor of ``size`` the non-overlapping ``boxes`` leave out ("rows 3..5 of
    8", "12 of 48 elements"), or None when they cover it all."""
    total = math.prod(size)
    boxes = [b for b in boxes if all(b[1])]  # empty pieces hold nothing, wherever they lie
    covered = sum(math.prod(s) for _, s in boxes)
    if covered >= total:
        return None
    # Pieces that each span every dimension but one (a tensor split along one dimension): the
    # ranges of that dimension none holds.
    for d in range(len(size)):
        if all(o[k] == 0 and s[k] == size[k] for o, s in boxes for k in range(len(size)) if k != d):
            gaps, end = [], 0
            for o, s in sorted((b[0][d], b[1][d]) for b in boxes):
                if o > end:
                    gaps.append(f"{end}..{o}")
                end = max(end, o + s)
            if end < size[d]:
                gaps.append(f"{end}..{size[d]}")
            what = "rows" if d == 0 else f"indexes of dimension {d}"
            return f"{what} {', '.join(gaps[:5])}{' ...' if len(gaps) > 5 else ''} of {size[d]}"
    return f"{total - covered} of {total} elements"


def outside(size: Sequence[int], boxes: Sequence[Box]) -> Optional[int]:
    """The index of a box that does not lie inside an array of ``size`` (or has another
    number of dimensions, or a negative offset or size), or None. An empty box (a rank's
    shard of no rows, as uneven sharding gives) may lie anywhere: it holds nothing."""
    for i, (off, sz) in enumerate(boxes):
        if len(off) != len(size) or len(sz) != len(size):
            return i
        if any(o < 0 or n < 0 for o, n in zip(off, sz)):
            return i
        if all(sz) and any(o + n > m for o, n, m in zip(off, sz, size)):
            return i
    return None


@dataclass(frozen=True)
class Untiled:
    """Why boxes do not tile an array: ``kind`` "outside" (``at``: that box), "overlap"
    (``at``: the two), "missing" (``what``: what no box holds, "rows 3..5 of 8") or
    "unchecked" (``what``: why)."""

    kind: str
    at: Tuple[int, ...] = ()
    what: str = ""

    def words(self, boxes: Sequence[Box], noun: str = "piece") -> str:
        """The reason in words, a box called a ``noun``."""
        if self.kind == "outside":
            (i,) = self.at
            return f"the {noun} at {list(boxes[i][0])} of shape {list(boxes[i][1])} lies outside it"
        if self.kind == "overlap":
            i, j = self.at
            return f"the {noun}s at {list(boxes[i][0])} and {list(boxes[j][0])} overlap"
        if self.kind == "missing":
            return f"{self.what} are in no {noun}"
        return f"cannot be checked: {self.what}"


def find(size: Sequence[int], boxes: Sequence[Box]) -> Optional[Untiled]:
    """Why ``boxes`` do not tile an array of ``size``, or None when they do: a box outside
    it, then two that overlap, then elements in none."""
    i = outside(size, boxes)
    if i is not None:
        return Untiled("outside", (i,))
    try:
        both = overlap(boxes)
    except TooManyPieces as e:
        return Untiled("unchecked", what=str(e))
    if both is not None:
        return Untiled("overlap", both)
    gap = missing(size, boxes)
    return None if gap is None else Untiled("missing", what=gap)


def shape_text(size: Sequence[int]) -> str:
    """``8x6``, as the checks name a tensor's shape ("0-dim" for a scalar)."""
    return "x".join(map(str, size)) or "0-dim"


__all__ = [
    "BUDGET",
    "TooManyPieces",
    "Untiled",
    "find",
    "missing",
    "outside",
    "overlap",
    "shape_text",
    "split_tiles",
]
