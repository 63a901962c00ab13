"""Errors of s3torch.safetensors, each naming the object (and the tensor) it hit.

Bytes that are not a valid safetensors file are ``SafetensorsError`` (a ``ValueError``, like the
errors of the ``safetensors`` package, and an ``S3Exception`` like every s3torch error); a read
that failed for reasons outside the file (network, server, throttling) is
``SafetensorsReadError``, carrying the failed request's details.
"""

from __future__ import annotations

from .. import _crt
from .._carried import carry_request


class SafetensorsError(_crt.S3Exception, ValueError):
    """An object is not a valid safetensors file (or index) for the request made of it."""


class HeaderError(SafetensorsError):
    """A safetensors header (or an index) is malformed or lies: a length past the bound, bad
    JSON, an unknown dtype, offsets outside the data or overlapping, a byte length that does
    not match the shape, metadata that is not str -> str. Raised before any tensor memory is
    allocated."""


class TruncatedFileError(SafetensorsError):
    """The object is shorter than its header says (or was shortened while being read)."""


class UnsupportedDtypeError(SafetensorsError):
    """A tensor's dtype is valid safetensors but this torch has no dtype for it."""


class MissingShardError(_crt.S3NotFoundError):
    """A file an index names (or the object asked for) does not exist. Also a
    ``FileNotFoundError``."""


class SafetensorsReadError(_crt.S3Exception):
    """A file's bytes could not be read: the network, the server or throttling failed, not the
    file. Carries the failed request's ``code``, ``http_status``, ``request_id``, ... like the
    S3Exception it wraps."""


class FileChangedError(SafetensorsReadError):
    """The object was replaced while a load read it: two of the load's GETs answered with
    different ETags, so tensors located in one version would be filled from the other. The
    file itself may be whole: load again once its writer is done."""


def read_error(where: str, e: "_crt.S3Exception") -> "_crt.S3Exception":
    """The error for a failed GET of ``where`` ("s3://bucket/key" or "... tensor NAME"):
    access, timeout and cancellation errors as they are; a missing object is a
    MissingShardError; a range past its end a TruncatedFileError; a GET held to the version
    read first that found another (412) a FileChangedError; anything else a
    SafetensorsReadError."""
    if isinstance(e, (_crt.S3PermissionError, _crt.S3TimeoutError, _crt.S3CancelledError)):
        return e
    status = getattr(e, "http_status", None)
    if isinstance(e, _crt.S3ObjectChangedError):
        out: _crt.S3Exception = FileChangedError(f"{where}: the object was replaced while this load read it: {e}")
    elif isinstance(e, _crt.S3NotFoundError) and status != 416:
        out = MissingShardError(f"{where}: no such object: {e}")
    elif status == 416:
        return TruncatedFileError(f"{where}: the object is shorter than its header says (truncated?): {e}")
    else:
        out = SafetensorsReadError(f"{where}: cannot read its bytes: {e} (the file itself may be intact)")
    carry_request(out, e)
    return out
