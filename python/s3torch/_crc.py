"""CRC-32 (zip polynomial) of consecutive pieces from their CRCs, so pieces of one tensor can be
checked on several threads at once and joined afterwards: aws-checksums' combine, through
``_crt.checksum_combine`` (crc(A+B) from crc(A), crc(B) and len(B))."""

from __future__ import annotations

from typing import Iterable, Tuple

from . import _crt


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A+B from crc32(A), crc32(B) and len(B)."""
    return _crt.checksum_combine("crc32", crc1, crc2, len2)


def crc32_of_parts(parts: Iterable[Tuple[int, int]]) -> int:
    """The CRC-32 of consecutive pieces from their (crc32, length) pairs, in order."""
    crc = 0
    for part, length in parts:
        crc = crc32_combine(crc, part, length)
    return crc
