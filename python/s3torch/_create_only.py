"""Create-only writes where s3torch itself chose them (a DCP save with ``overwrite=False``, ``s3torch
cp`` without ``--overwrite``), on servers that do not implement conditional writes.

The user asked not to replace a checkpoint, and s3torch checked there was none before writing;
the conditional write (``If-None-Match: *``) makes that hold against a writer racing it. A
server that answers 501 Not Implemented to the header gets the write again without it, and a
warning: the check made before is then all that holds, as before conditional writes.
(``exclusive=True`` asked for by the caller, and fsspec's ``"xb"``, raise the 501 instead.)
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

from ._crt import S3Exception

log = logging.getLogger("s3torch")
T = TypeVar("T")


def write_create_only(write: Callable[[bool], T], where: str) -> T:
    """``write(True)``, the create-only write; ``write(False)`` where the server does not
    implement conditional writes (501 / ``NotImplemented``)."""
    try:
        return write(True)
    except S3Exception as e:
        if getattr(e, "http_status", None) != 501 and getattr(e, "code", None) != "NotImplemented":
            raise
        log.warning(
            "s3torch: the server does not implement conditional writes (%s); %s written without If-None-Match: "
            "a writer racing this one could replace it",
            e.code or "HTTP 501",
            where,
        )
        return write(False)
