"""Reading a checkpoint's ``.metadata`` so that a failure reaches the user as s3torch's typed
error, once.

torch's ``dcp.load`` (2.11-2.13) calls ``read_metadata()`` and, when it raises, logs the
error with its traceback ("Global metadata is not found. Falling back to rank local
metadata."), calls ``read_metadata(rank=r)`` for a rank-local ``__r.metadata`` (a second
retry round against an endpoint that is down), logs that traceback too, and finally raises
``AssertionError: metadata is None`` with both errors flattened into its message.

So a read that fails does not raise from ``read_metadata``: it returns an
:class:`UnreadableMetadata` that carries the error, and the reader raises that error from
``set_up_storage_reader`` (torch's next call, in the same step); a planner that looks into
the metadata first gets the same error. torch then raises its ``CheckpointException`` with
that one error as the rank's failure, with nothing logged and no second attempt. The one
case torch's fallback is for, a checkpoint saved with ``use_collectives=False`` (rank-local
metadata only), still raises from ``read_metadata``, so that torch reads it; a failure of
that rank-local read is deferred the same way (torch 2.11 swallows it: its fallback catches
the error, logs one line at INFO and raises a bare ``AssertionError: metadata is None``, so
a refused ``__0.metadata`` reached the user with no word of the refusal).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch.distributed as dist
from torch.distributed.checkpoint.metadata import Metadata

from .._carried import carry_request
from .._crt import S3Exception, S3NotFoundError
from ._errors import CheckpointCorruptError, read_error
from ._safe_unpickle import CheckpointUnsafeError


class UnreadableMetadata:
    """Stands in for the Metadata that could not be read; every use raises ``error``."""

    def __init__(self, error: BaseException) -> None:
        object.__setattr__(self, "error", error)

    def __getattr__(self, name: str) -> Any:
        raise object.__getattribute__(self, "error")

    def __bool__(self) -> bool:
        return True  # torch tests `not metadata` before its fallback


def read_or_defer(
    read: Callable[[], Metadata],
    path: str,
    rank_local_exists: Callable[[int], bool],
    instead: Callable[[], str] = lambda: "",
) -> "Metadata | UnreadableMetadata":
    """``read()`` the global metadata; an S3 failure becomes an UnreadableMetadata (a missing
    checkpoint: S3NotFoundError, with ``instead()``, what the path holds instead, appended;
    server or network: the CheckpointReadError family), except a missing ``.metadata`` beside
    an existing rank-local one (raised, for torch's fallback)."""
    try:
        return read()
    except S3NotFoundError as e:
        if rank_local_exists(_rank()):
            raise
        err: S3Exception = S3NotFoundError(
            f"no DCP checkpoint at {path}: its metadata object does not exist ({e}){instead()}"
        )
        carry_request(err, e)
        return UnreadableMetadata(err)
    except (CheckpointUnsafeError, CheckpointCorruptError) as e:  # the bytes, not the transfer: as they are
        return UnreadableMetadata(e)
    except S3Exception as e:  # access and timeouts as they are; server and network: a read error
        return UnreadableMetadata(read_error(f"{path}/.metadata", e))


def read_rank_local_or_defer(read: Callable[[], Metadata], path: str) -> "Metadata | UnreadableMetadata":
    """``read()`` a rank-local metadata (torch's fallback, called when one exists); a failure
    becomes an UnreadableMetadata, raised at set-up, as for the global one."""
    try:
        return read()
    except (CheckpointUnsafeError, CheckpointCorruptError) as e:  # the bytes, not the transfer: as they are
        return UnreadableMetadata(e)
    except S3Exception as e:
        return UnreadableMetadata(read_error(path, e))


def raise_if_unreadable(metadata: Any) -> None:
    if isinstance(metadata, UnreadableMetadata):
        raise object.__getattribute__(metadata, "error")


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def rank_local_name(rank: Optional[int]) -> str:
    return ".metadata" if rank is None else f"__{rank}.metadata"
