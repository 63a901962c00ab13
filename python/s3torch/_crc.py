"""CRC-32 (zip polynomial) arithmetic in Python: combining the CRCs of adjacent pieces, so
pieces of one tensor can be checked on several threads at once and joined afterwards.

A CRC-32 is a remainder modulo the polynomial P over GF(2). For bytes A followed by B
(len(B) = n): crc(A+B) = crc(A) * x^(8n) mod P  xor  crc(B). The product is done bit by bit
in CRC-32's reflected bit order; x^(8n) comes from precomputed x^(2^k), and is cached per n
(the pieces of a load are mostly one size, so each combine is one multiplication).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterable, List, Tuple

_POLY = 0xEDB88320  # P, reflected
_ONE = 1 << 31  # the polynomial 1 in reflected order


def _mul(a: int, b: int) -> int:
    """a * b mod P (reflected 32-bit polynomials)."""
    p, m = 0, _ONE
    while a:
        if a & m:
            p ^= b
            a ^= m
        m >>= 1
        b = (b >> 1) ^ _POLY if b & 1 else b >> 1
    return p


def _powers() -> List[int]:
    t = [_ONE >> 1]  # x^1
    for _ in range(63):
        t.append(_mul(t[-1], t[-1]))  # x^(2^k)
    return t


_X2K = _powers()


@lru_cache(maxsize=256)
def _x8n(n: int) -> int:
    """x^(8n) mod P."""
    p, k = _ONE, 3
    while n:
        if n & 1:
            p = _mul(_X2K[k % 64], p)
        n >>= 1
        k += 1
    return p


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A+B from crc32(A), crc32(B) and len(B)."""
    return _mul(_x8n(len2), crc1) ^ crc2 if len2 else crc1


def crc32_of_parts(parts: Iterable[Tuple[int, int]]) -> int:
    """The CRC-32 of consecutive pieces from their (crc32, length) pairs, in order."""
    crc = 0
    for part, length in parts:
        crc = crc32_combine(crc, part, length)
    return crc
