"""Checking a safetensors file against the checksum S3 stores for it (``_stored_checksum.py``):
when a load reads every byte of a file (its header and all of its tensors), the CRCs of the
pieces it read are combined in file order and compared with the stored one; a difference is
:class:`ChecksumMismatchError`, raised before the load returns. The outcome for each file is a
short phrase (``"CRC32C checked"``, or why not) in ``safe_open.last_load_checksums``.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

from .. import _stored_checksum
from .._stored_checksum import CHECKED, Stored, stored_checksum, with_part_sizes
from ._errors import SafetensorsError


class ChecksumMismatchError(SafetensorsError, _stored_checksum.ChecksumMismatch):
    """The bytes a load read do not match the checksum S3 stores for the object: corrupted in
    transit or at rest, or the object was replaced while it was being read."""


class FileCheck(_stored_checksum.FileCheck):
    """A file's check whose mismatch is a :class:`ChecksumMismatchError`."""

    error = ChecksumMismatchError


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


__all__ = [
    "CHECKED",
    "ChecksumMismatchError",
    "FileCheck",
    "Stored",
    "stored_checksum",
    "with_part_sizes",
    "tiles",
    "outcome_without_check",
]
