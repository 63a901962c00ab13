"""Checking a whole object against the checksum S3 stores for it (torch-free: the command
line's ``cp`` uses it, and s3torch.safetensors' loads and ``verify``).

S3 keeps one checksum per object when the upload sent one: a single PUT's covers the object,
and so does a multipart upload's of type ``FULL_OBJECT`` (what s3torch's uploads write by
default, ``S3ClientConfig(checksum_type=...)``); a ``COMPOSITE`` one (``<crc>-<parts>``) is
the CRC of the parts' CRCs, checked with the part sizes GetObjectAttributes lists. A HEAD
with checksum mode returns it (``stored_of``). When every byte of an object is read, the CRCs
of the pieces read (split at part boundaries for a composite one) are combined in order and
compared with the stored one (``FileCheck``); a difference raises ``FileCheck.error``.

Only CRC32, CRC32C and CRC64NVME combine this way; SHA checksums cannot be checked from
pieces.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import itertools
import re
import threading
from dataclasses import dataclass
from typing import Any, List, Tuple, Type

from . import _crt

CHECKED = "checked"
_WIDTH = {"CRC32": 4, "CRC32C": 4, "CRC64NVME": 8}
_MULTIPART_ETAG = re.compile(r'^"?[0-9a-fA-F]+-\d+"?$')


class ChecksumMismatch(_crt.S3Exception, ValueError):
    """The bytes read of an object do not match the checksum S3 stores for it: corrupted in
    transit or at rest, or the object was replaced while it was being read."""


@dataclass(frozen=True)
class Stored:
    """The checksum a HEAD reported: ``algorithm`` (S3's name) and ``value`` when a whole-file
    check is possible, else ``why_not``. A composite one names its part count (``parts``)
    and, once listed, each part's size (``part_sizes``)."""

    algorithm: str = ""
    value: int = 0
    why_not: str = ""
    parts: int = 0
    part_sizes: Tuple[int, ...] = ()


def stored_checksum(info: Any) -> Stored:
    """What an ObjectInfo from ``head(..., checksum=True)`` allows to check (a composite one:
    once its part sizes are known, :func:`with_part_sizes`).

    A full-object checksum is one typed ``FULL_OBJECT`` (S3's spelling), or an untyped one of a
    single-PUT object (its value and ETag carry no ``-<parts>``). A composite one carries its
    part count. Anything else is not trusted to cover the object: a type spelled otherwise
    (moto 5 writes ``full_object`` and stores a CRC32 under the CRC32C name), a composite one
    without a part count, an untyped one on a multipart object."""
    algorithm, value, kind = info.checksum_algorithm, info.checksum, info.checksum_type
    if not algorithm:
        return Stored(why_not="the object has no stored checksum")
    if algorithm not in _WIDTH:
        return Stored(why_not=f"its {algorithm} checksum cannot be combined from pieces")
    parts = 0
    if kind == "COMPOSITE" or "-" in value:
        value, _, count = value.partition("-")
        if not count.isdigit() or not 0 < int(count) <= 10000:
            return Stored(why_not=f"its {algorithm} checksum is composite without a part count")
        parts = int(count)
    elif kind not in ("FULL_OBJECT", ""):
        return Stored(why_not=f"its checksum type {kind[:32]!r} is not S3's FULL_OBJECT")
    elif kind == "" and _MULTIPART_ETAG.match(info.etag or ""):
        return Stored(why_not=f"its {algorithm} checksum has no type and the object is multipart")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != _WIDTH[algorithm]:
        return Stored(why_not=f"its {algorithm} checksum {value[:24]!r} is not {_WIDTH[algorithm]} bytes of base64")
    return Stored(algorithm, int.from_bytes(raw, "big"), parts=parts)


def with_part_sizes(stored: Stored, sizes: List[int], size: int) -> Stored:
    """A composite checksum made checkable by the part sizes listed for the object."""
    if len(sizes) != stored.parts or sum(sizes) != size:
        return Stored(
            why_not=f"its composite {stored.algorithm} names {stored.parts} parts; the object lists "
            f"{len(sizes)} of {sum(sizes)} bytes in all, not {size}"
        )
    return Stored(stored.algorithm, stored.value, parts=stored.parts, part_sizes=tuple(sizes))


class FileCheck:
    """The CRCs of the pieces of one object a load reads, combined and compared once they
    tile it. ``add`` may be called from any thread (the CRC runs with the GIL released).
    ``error``: the class a mismatch raises."""

    error: Type[ChecksumMismatch] = ChecksumMismatch

    def __init__(self, where: str, size: int, stored: Stored) -> None:
        assert stored.algorithm and (not stored.parts or stored.part_sizes)
        self.where, self.size, self.stored = where, size, stored
        self._alg = stored.algorithm.lower()
        self._pieces: List[Tuple[int, int, int]] = []  # (offset, length, crc)
        self._lock = threading.Lock()
        self._bounds = list(itertools.accumulate(stored.part_sizes))  # a composite checksum's part ends

    def add(self, offset: int, data: Any) -> None:
        """The bytes read at ``offset`` (a buffer or a uint8 tensor); a piece that crosses a
        part boundary of a composite checksum is split there."""
        n = data.numel() if hasattr(data, "numel") else len(memoryview(data).cast("B"))
        at = 0
        i = bisect.bisect_right(self._bounds, offset)
        while i < len(self._bounds) and self._bounds[i] < offset + n:
            cut = self._bounds[i] - offset
            if cut > at:
                self.add_crc(offset + at, cut - at, _crt.checksum(self._alg, data[at:cut]))
                at = cut
            i += 1
        if n > at:
            piece = data[at:] if at else data
            self.add_crc(offset + at, n - at, _crt.checksum(self._alg, piece))

    def add_crc(self, offset: int, n: int, crc: int) -> None:
        """A piece whose CRC (this check's algorithm) is already known; within one part."""
        with self._lock:
            self._pieces.append((offset, n, crc))

    def verify(self) -> str:
        """Compare; returns the outcome, raises ChecksumMismatchError on a difference."""
        with self._lock:
            pieces = sorted(self._pieces)
        crc, end, part_crcs = 0, 0, []
        bounds = iter(self._bounds)
        part_end = next(bounds, None)
        for offset, n, piece in pieces:
            if offset != end:
                return f"not checked: bytes {end}..{offset} were not read"
            crc = _crt.checksum_combine(self._alg, crc, piece, n)
            end += n
            while end == part_end:  # (a part of 0 bytes has CRC 0)
                part_crcs.append(crc)
                crc, part_end = 0, next(bounds, None)
        if end != self.size:
            return f"not checked: read {end} of {self.size} bytes"
        width = _WIDTH[self.stored.algorithm]
        what = self.stored.algorithm
        if self.stored.parts:
            crc = _crt.checksum(self._alg, b"".join(c.to_bytes(width, "big") for c in part_crcs))
            what = f"composite {what} of {self.stored.parts} parts"
        if crc != self.stored.value:
            raise self.error(
                f"{self.where}: the bytes read do not match the object's stored {what} "
                f"(stored {self.stored.value:0{width * 2}x}, read {crc:0{width * 2}x}): corrupted in transit or at "
                "rest, or the object was replaced during the load; nothing was returned"
            )
        return f"{what} {CHECKED}"


def stored_of(native: "_crt.NativeClient", bucket: str, key: str) -> Tuple[Stored, str]:
    """The object's stored checksum (a HEAD in checksum mode), and the ETag of the version it
    is of; for a composite one, with the part sizes it needs (GetObjectAttributes: when those
    cannot be listed, e.g. without s3:GetObjectAttributes, the object cannot be checked and
    ``why_not`` says why)."""
    info = native.head(bucket, key, False, True)
    stored = stored_checksum(info)
    if stored.parts:
        try:
            sizes = native.object_part_sizes(bucket, key)
        except _crt.S3Exception as e:
            return Stored(why_not=f"its composite {stored.algorithm} needs the part sizes, not listed: {e}"), info.etag
        stored = with_part_sizes(stored, sizes, info.size)
    return stored, info.etag
