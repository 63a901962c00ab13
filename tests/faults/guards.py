"""Guard bytes around a destination buffer: a GET that writes outside its destination (a lying
server's longer body, a piece landing at the wrong offset) shows in them."""

from __future__ import annotations

from typing import Tuple

GUARD = 64


def guarded(n: int) -> Tuple[bytearray, memoryview]:
    """A buffer of ``n`` bytes with ``GUARD`` bytes of 0xab on each side: (the whole, the view
    of the ``n`` in the middle)."""
    buf = bytearray(b"\xab" * (GUARD + n + GUARD))
    return buf, memoryview(buf)[GUARD : GUARD + n]


def guards_intact(buf: bytearray) -> bool:
    """Whether the guard bytes around ``guarded``'s view are as they were."""
    return buf[:GUARD] == b"\xab" * GUARD and buf[-GUARD:] == b"\xab" * GUARD
