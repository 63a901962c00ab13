"""_tiling.py: whether pieces (boxes) tile a tensor, checked against a brute-force
count of every element."""

from __future__ import annotations

import itertools
import math
from typing import List, Optional, Sequence, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3torch._tiling import TooManyPieces, find, missing, outside, overlap, split_tiles

Box = Tuple[Sequence[int], Sequence[int]]


def problem(size: Sequence[int], boxes: Sequence[Box]) -> Optional[Tuple[str, str]]:
    """What the readers and verify make of ``find``: the kind, and the reason in words."""
    u = find(size, boxes)
    return None if u is None else (u.kind, u.words(boxes))


def _counts(size: Sequence[int], boxes: Sequence[Box]) -> List[int]:
    """How many boxes hold each element, element by element."""
    out = []
    for point in itertools.product(*(range(n) for n in size)):
        out.append(sum(all(o <= p < o + n for p, o, n in zip(point, off, sz)) for off, sz in boxes))
    return out


def _grid(size: Sequence[int], cuts: Sequence[Sequence[int]]) -> List[Box]:
    """The boxes of a grid cutting each dimension at ``cuts[d]``."""
    edges = [[0, *sorted(set(c) - {0, n}), n] for c, n in zip(cuts, size)]
    spans = [list(zip(e, e[1:])) for e in edges]
    return [([a for a, _ in cell], [b - a for a, b in cell]) for cell in itertools.product(*spans)]


@st.composite
def _boxes(draw):  # type: ignore[no-untyped-def]
    ndim = draw(st.integers(1, 3))
    size = [draw(st.integers(1, 5)) for _ in range(ndim)]
    cuts = [draw(st.lists(st.integers(0, n), max_size=3)) for n in size]
    boxes = _grid(size, cuts)
    change = draw(st.sampled_from(["none", "drop", "grow", "shift", "past"]))
    i = draw(st.integers(0, len(boxes) - 1))
    d = draw(st.integers(0, ndim - 1))
    off, sz = list(boxes[i][0]), list(boxes[i][1])
    if change == "drop":
        boxes.pop(i)
    elif change == "grow" and off[d] > 0:  # into the box before it
        off[d] -= 1
        sz[d] += 1
        boxes[i] = (off, sz)
    elif change == "shift" and off[d] + sz[d] < size[d]:  # over the next, leaving a gap
        off[d] += 1
        boxes[i] = (off, sz)
    elif change == "past":  # beyond the end of the array
        sz[d] += size[d]
        boxes[i] = (off, sz)
    return size, boxes


@settings(max_examples=300, deadline=None)
@given(_boxes())
def test_agrees_with_counting_every_element(case) -> None:  # type: ignore[no-untyped-def]
    size, boxes = case
    counts = _counts(size, boxes)
    found = problem(size, boxes)
    beyond = outside(size, boxes)
    assert (beyond is not None) == any(
        all(sz) and any(o + n > m for o, n, m in zip(off, sz, size)) for off, sz in boxes
    )
    if beyond is not None:
        assert found is not None and found[0] == "outside"
        return
    assert (found is None) == all(c == 1 for c in counts)
    both = overlap(boxes)
    assert (both is not None) == any(c > 1 for c in counts)
    if both is not None:
        (o1, s1), (o2, s2) = boxes[both[0]], boxes[both[1]]
        assert all(a < b + m and b < a + n for a, n, b, m in zip(o1, s1, o2, s2))
        return
    gap = missing(size, boxes)
    assert (gap is None) == all(c == 1 for c in counts)
    if gap is not None and gap.endswith("elements"):
        assert gap == f"{counts.count(0)} of {math.prod(size)} elements"


@settings(max_examples=300, deadline=None)
@given(_boxes(), st.booleans(), st.booleans())
def test_the_split_dimension_check_agrees_with_counting_every_element(case, twice, empty) -> None:  # type: ignore[no-untyped-def]
    """split_tiles (a DCP load's check of a tensor split along one dimension): where it
    answers, it says whether every element is in exactly one box, a box listed twice counted
    once and an empty box holding nothing; boxes split along two dimensions it leaves to find."""
    size, boxes = case
    if twice and boxes:
        boxes = boxes + [boxes[0]]
    if empty:
        boxes = boxes + [([size[0], *[0] * (len(size) - 1)], [0, *size[1:]])]
    got = split_tiles(size, boxes)
    once = sorted({(tuple(o), tuple(z)) for o, z in boxes})
    split = {k for o, z in once for k in range(len(size)) if all(z) and (o[k] != 0 or z[k] != size[k])}
    if len(split) > 1:
        assert got is None
    if got is None:
        return
    counts = _counts(size, [b for b in once if all(b[1])])
    assert got == (all(c == 1 for c in counts) and outside(size, once) is None)


def test_the_split_dimension_check_is_as_cheap_as_a_sum() -> None:
    """400 tensors of 1,024 shards each (a 1,024-rank FSDP checkpoint): in a DCP load's
    prepare step on every rank, so it must stay a sort, not a sweep."""
    per = 8
    boxes = [([i * per, 0], [per, 4096]) for i in range(1024)]
    assert split_tiles([1024 * per, 4096], boxes) is True
    assert split_tiles([1024 * per, 4096], boxes[:-1]) is False
    assert split_tiles([1024 * per, 4096], boxes[:3] + [([20, 0], [8, 4096])] + boxes[4:]) is False
    assert split_tiles([4, 4], [([0, 0], [2, 2]), ([0, 2], [2, 2]), ([2, 0], [2, 4])]) is None  # a grid


def test_what_is_missing_is_said_in_rows_where_it_can_be() -> None:
    rows = [((0, 0), (2, 4)), ((5, 0), (1, 4)), ((7, 0), (1, 4))]
    assert missing((9, 4), rows) == "rows 2..5, 6..7, 8..9 of 9"
    assert missing((4, 6), [((0, 2), (4, 4))]) == "indexes of dimension 1 0..2 of 6"
    assert missing((), [((), ())]) is None  # a 0-dim tensor, whole
    assert missing((0, 3), []) is None  # nothing to hold
    assert overlap([((), ()), ((), ())]) == (0, 1)
    assert problem((4,), [((0,), (2,)), ((2,), (2,))]) is None
    assert problem((4,), [((0,), (2,))]) == ("missing", "rows 2..4 of 4 are in no piece")
    assert problem((4,), [((0,), (3,)), ((2,), (2,))]) == ("overlap", "the pieces at [0] and [2] overlap")
    assert problem((4,), [((-1,), (2,))])[0] == "outside"  # type: ignore[index]
    assert problem((4, 2), [((0,), (4,))])[0] == "outside"  # type: ignore[index]  # another rank
    # Uneven sharding: a rank's shard of no rows, placed at (or past) the end.
    assert problem((3, 2), [((0, 0), (2, 2)), ((2, 0), (1, 2)), ((3, 0), (0, 2)), ((4, 0), (0, 2))]) is None
    assert missing((3, 2), [((0, 0), (2, 2)), ((9, 0), (0, 2))]) == "rows 2..3 of 3"
    assert overlap([((0,), (0,)), ((0,), (0,)), ((0,), (2,))]) is None  # empty pieces hold nothing


def test_a_grid_of_many_pieces_is_checked_within_the_budget() -> None:
    boxes = _grid((1024, 64), [range(0, 1024, 1), range(0, 64, 8)])  # 8192 pieces, 8 columns
    assert overlap(boxes, budget=8 * len(boxes)) is None and missing((1024, 64), boxes) is None
    stacked = [((0, c), (1, 1)) for c in range(3000)] + [((0, 0), (1, 3000))]  # all begin at row 0
    with pytest.raises(TooManyPieces):
        overlap([((r, c), (1, 1)) for r in range(100) for c in range(100)] + [((0, 0), (100, 100))], budget=1000)
    assert overlap(stacked) is not None
