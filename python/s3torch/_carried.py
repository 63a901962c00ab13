"""What an error s3torch raises in place of an S3Exception keeps of it: the failed request's
``code``, ``http_status``, ``request_id`` and the rest, so user code that reads them off the
error it catches finds them whichever error that is."""

from __future__ import annotations

CARRIED = ("code", "s3_message", "http_status", "request_id", "crt_error", "operation", "bucket", "key")


def carry_request(out: BaseException, cause: BaseException) -> None:
    """Set ``out``'s request attributes to ``cause``'s (None where it has none)."""
    for name in CARRIED:
        setattr(out, name, getattr(cause, name, None))
