"""Errors of a DCP load, each naming the object and the item it hit."""

from __future__ import annotations

from .. import _crt
from .._carried import carry_request
from .._text import message


class CheckpointCorruptError(_crt.S3Exception):
    """A checkpoint file's bytes do not match its metadata (truncated, corrupt, wrong shape)."""


def crc_mismatch(where: str, stored: int, read: int) -> CheckpointCorruptError:
    return CheckpointCorruptError(
        f"{where}: tensor bytes fail their CRC32 check (stored {stored:#010x}, read {read:#010x}): "
        "the checkpoint file is corrupt"
    )


def short_read(where: str, want: int, got: int) -> CheckpointCorruptError:
    return CheckpointCorruptError(f"{where}: expected {want} tensor bytes, the file has {got} (truncated?)")


class StagingError(RuntimeError):
    """Copying staged bytes into a destination failed (a CUDA error, too little device memory)."""

    def __str__(self) -> str:  # it names a tensor of the checkpoint: outside text, shown
        return message(self)


class CheckpointReadError(_crt.S3Exception):
    """A checkpoint's bytes could not be read: the network, the server or throttling failed,
    not the checkpoint. Carries the failed request's ``code``, ``http_status``,
    ``request_id``, ... like the S3Exception it wraps."""


class CheckpointConnectionError(CheckpointReadError, ConnectionError):
    """A CheckpointReadError whose cause was a connection that failed (reset, refused)."""


def read_error(where: str, e: "_crt.S3Exception") -> "_crt.S3Exception":
    """The error for a failed read of an item, named after the item it hit: access,
    timeout and cancellation errors as they are; a missing file or a range past its end
    (the checkpoint is incomplete or truncated) is a CheckpointCorruptError; anything else
    (5xx, throttling, a dropped connection) a CheckpointReadError, a CheckpointConnectionError
    (also a ConnectionError) when the connection failed."""
    if isinstance(e, (_crt.S3PermissionError, _crt.S3TimeoutError, _crt.S3CancelledError)):
        return e
    status = getattr(e, "http_status", None)
    if isinstance(e, _crt.S3NotFoundError) or status == 416:
        hint = " (the file is shorter than the checkpoint metadata says: truncated?)" if status == 416 else ""
        return CheckpointCorruptError(f"{where}: cannot read its bytes: {e}{hint}")
    cls = CheckpointConnectionError if isinstance(e, ConnectionError) else CheckpointReadError
    out = cls(f"{where}: cannot read its bytes: {e} (the checkpoint itself may be intact)")
    carry_request(out, e)
    return out
