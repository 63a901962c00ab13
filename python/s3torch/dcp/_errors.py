"""Errors of a DCP load, each naming the object and the item it hit."""

from __future__ import annotations

from .. import _crt


class CheckpointCorruptError(_crt.S3Exception):
    """A checkpoint file's bytes do not match its metadata (truncated, corrupt, wrong shape)."""


class StagingError(RuntimeError):
    """Copying staged bytes into a destination failed (a CUDA error, too little device memory)."""


def read_error(where: str, e: "_crt.S3Exception") -> "_crt.S3Exception":
    """The error for a failed read of an item: access and timeout errors as they are,
    anything else named after the item it hit."""
    if isinstance(e, (_crt.S3PermissionError, _crt.S3TimeoutError)):
        return e
    hint = (
        " (the file is shorter than the checkpoint metadata says: truncated?)"
        if getattr(e, "http_status", None) == 416
        else ""
    )
    return CheckpointCorruptError(f"{where}: cannot read its bytes: {e}{hint}")
