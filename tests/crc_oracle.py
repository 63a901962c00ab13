"""The tests' oracle for the CRCs S3 stores: reflected CRCs with all-ones init and final xor,
a byte at a time from a table built bit by bit from the polynomial. Independent of the native
code under test (which folds with PCLMULQDQ or uses the ARMv8 CRC32 instructions)."""

from __future__ import annotations

from functools import lru_cache
from typing import Tuple

CRC32C_POLY = 0x82F63B78
CRC64NVME_POLY = 0x9A6C9329AC4BC9B5


@lru_cache(maxsize=None)
def _table(poly: int) -> Tuple[int, ...]:
    out = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ (poly if crc & 1 else 0)
        out.append(crc)
    return tuple(out)


def reflected_crc(data: bytes, poly: int, width: int) -> int:
    """The reflected CRC of ``data`` for the ``width``-bit polynomial ``poly`` (reversed form)."""
    table, mask = _table(poly), (1 << width) - 1
    crc = mask
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc ^ mask


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as S3's x-amz-checksum-crc32c carries it (before base64)."""
    return reflected_crc(data, CRC32C_POLY, 32)
