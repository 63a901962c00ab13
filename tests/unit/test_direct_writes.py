"""A download's pieces (_download_pieces) and _direct_writes' ring, without a server (the
copies themselves: tests/integration/test_cp_direct.py)."""

from __future__ import annotations

import itertools
import mmap

from s3torch import _direct_writes, _download_pieces


def test_pieces_cover_every_file_in_order_and_are_made_as_taken() -> None:
    keys = [("a", 0, "ea"), ("b", 10, "eb"), ("c", 4, "ec")]
    assert list(_download_pieces.pieces(keys, 4)) == [
        ("a", 0, 0, 0, "ea"),  # a file of nothing: one GET of nothing, held to its version
        ("b", 0, 4, 1, "eb"),
        ("b", 4, 4, 1, "eb"),
        ("b", 8, 2, 1, "eb"),
        ("c", 0, 4, 2, "ec"),
    ]
    assert [_download_pieces.count(n, 4) for _, n, _ in keys] == [0, 3, 1]
    # A copy of terabytes: millions of pieces, none made before it is taken.
    huge = _download_pieces.pieces([("big", 10 << 40, "e")], _direct_writes.PIECE)
    assert list(itertools.islice(huge, 2)) == [("big", 0, 8 << 20, 0, "e"), ("big", 8 << 20, 8 << 20, 0, "e")]


def test_the_ring_follows_the_throughput_target_within_its_bounds() -> None:
    assert _direct_writes.ring_size(10.0) == 25  # aws-c-s3's connections for 10 Gbps: 200 MiB
    assert _direct_writes.ring_size(1.0) == _direct_writes.MIN_RING
    assert _direct_writes.ring_size(400.0) * _direct_writes.PIECE == _direct_writes.MAX_RING_BYTES
    assert _direct_writes.PIECE % _direct_writes.ALIGN == 0 and _direct_writes.ALIGN % mmap.PAGESIZE == 0
