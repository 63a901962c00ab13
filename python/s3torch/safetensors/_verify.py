"""Checking a whole file against the checksum S3 stores for it.

S3 keeps one checksum per object when the upload sent one: a single PUT's covers the object,
and so does a multipart upload's of type ``FULL_OBJECT`` (what s3torch's uploads write by
default, ``S3ClientConfig(checksum_type=...)``); a ``COMPOSITE`` one is a CRC of the parts'
CRCs and needs the part boundaries, which a load does not have. A HEAD with checksum mode
returns it. When a load reads every byte of a file (its header and all of its tensors), the
CRCs of the pieces it read are combined in file order and compared with the stored one; a
difference is :class:`ChecksumMismatchError`, raised before the load returns.

Only CRC32, CRC32C and CRC64NVME combine this way; SHA checksums cannot be checked from
pieces. The outcome for each file is a short phrase (``"CRC32C checked"``, or why not) in
``safe_open.last_load_checksums``.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from .. import _crt
from ._errors import SafetensorsError

CHECKED = "checked"
_WIDTH = {"CRC32": 4, "CRC32C": 4, "CRC64NVME": 8}
_MULTIPART_ETAG = re.compile(r'^"?[0-9a-fA-F]+-\d+"?$')


class ChecksumMismatchError(SafetensorsError):
    """The bytes a load read do not match the checksum S3 stores for the object: corrupted in
    transit or at rest, or the object was replaced while it was being read."""


@dataclass(frozen=True)
class Stored:
    """The checksum a HEAD reported: ``algorithm`` (S3's name) and ``value`` when a whole-file
    check is possible, else ``why_not``."""

    algorithm: str = ""
    value: int = 0
    why_not: str = ""


def stored_checksum(info: Any) -> Stored:
    """What an ObjectInfo from ``head(..., checksum=True)`` allows to check.

    A full-object checksum is one typed ``FULL_OBJECT`` (S3's spelling), or an untyped one of a
    single-PUT object (its value and ETag carry no ``-<parts>``). Anything else is not
    trusted to cover the object: a composite checksum, a type spelled otherwise (moto 5 writes
    ``full_object`` and stores a CRC32 under the CRC32C name), an untyped one on a multipart
    object."""
    algorithm, value, kind = info.checksum_algorithm, info.checksum, info.checksum_type
    if not algorithm:
        return Stored(why_not="the object has no stored checksum")
    if algorithm not in _WIDTH:
        return Stored(why_not=f"its {algorithm} checksum cannot be combined from pieces")
    if kind == "COMPOSITE" or "-" in value:
        return Stored(why_not=f"its {algorithm} checksum is composite (of the parts' checksums)")
    if kind not in ("FULL_OBJECT", ""):
        return Stored(why_not=f"its checksum type {kind[:32]!r} is not S3's FULL_OBJECT")
    if kind == "" and _MULTIPART_ETAG.match(info.etag or ""):
        return Stored(why_not=f"its {algorithm} checksum has no type and the object is multipart")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _WIDTH[algorithm]:
        return Stored(why_not=f"its {algorithm} checksum {value[:24]!r} is not {_WIDTH[algorithm]} bytes of base64")
    return Stored(algorithm, int.from_bytes(raw, "big"))


class FileCheck:
    """The CRCs of the pieces of one object a load reads, combined and compared once they
    tile it. ``add`` may be called from any thread (the CRC runs with the GIL released)."""

    def __init__(self, where: str, size: int, stored: Stored) -> None:
        assert stored.algorithm
        self.where, self.size, self.stored = where, size, stored
        self._alg = stored.algorithm.lower()
        self._pieces: List[Tuple[int, int, int]] = []  # (offset, length, crc)
        self._lock = threading.Lock()

    def add(self, offset: int, data: Any) -> None:
        """The bytes read at ``offset`` (a buffer or a uint8 tensor)."""
        n = data.numel() if hasattr(data, "numel") else len(memoryview(data).cast("B"))
        self.add_crc(offset, n, _crt.checksum(self._alg, data) if n else 0)

    def add_crc(self, offset: int, n: int, crc: int) -> None:
        """A piece whose CRC (this check's algorithm) is already known."""
        with self._lock:
            self._pieces.append((offset, n, crc))

    def verify(self) -> str:
        """Compare; returns the outcome, raises ChecksumMismatchError on a difference."""
        with self._lock:
            pieces = sorted(self._pieces)
        crc, end = 0, 0
        for offset, n, piece in pieces:
            if offset != end:
                return f"not checked: bytes {end}..{offset} were not read"
            crc = _crt.checksum_combine(self._alg, crc, piece, n)
            end += n
        if end != self.size:
            return f"not checked: read {end} of {self.size} bytes"
        if crc != self.stored.value:
            width = _WIDTH[self.stored.algorithm] * 2
            raise ChecksumMismatchError(
                f"{self.where}: the bytes read do not match the object's stored {self.stored.algorithm} "
                f"(stored {self.stored.value:0{width}x}, read {crc:0{width}x}): corrupted in transit or at rest, "
                "or the object was replaced during the load; nothing was returned"
            )
        return f"{self.stored.algorithm} {CHECKED}"


def tiles(data_start: int, size: int, ranges: List[Tuple[int, int]]) -> bool:
    """Whether the header [0, data_start) and the data ranges (begin, end), offsets in the data
    section, cover [0, size) exactly."""
    end = data_start
    for begin, stop in sorted(ranges):
        if data_start + begin != end:
            return False
        end = data_start + stop
    return end == size


def outcome_without_check(stored: Optional[Stored]) -> str:
    if stored is None:
        return "not checked: verify_checksums=False"
    return f"not checked: {stored.why_not}"


__all__ = ["ChecksumMismatchError", "FileCheck", "Stored", "stored_checksum", "tiles", "outcome_without_check"]
