"""Incomplete multipart uploads: nothing of a failed upload should stay behind.

A failed or cancelled upload is aborted by the core. When the abort itself cannot reach the
server (an outage), the core remembers the upload on its client; this module tries those
again (at the start and end of every DCP save, and when the process exits) and removes the
incomplete uploads an earlier failed save, in any process, left under a checkpoint's prefix.
"""

from __future__ import annotations

import atexit
import logging
import weakref
from typing import TYPE_CHECKING, List, Tuple

if TYPE_CHECKING:
    from ._client import S3Client

log = logging.getLogger("s3torch")

# Every live client, for the exit hook (asking one with nothing pending costs nothing).
_clients: "weakref.WeakSet[S3Client]" = weakref.WeakSet()
# How long the exit hook may spend on a client's remembered uploads (tried all at once).
EXIT_WAIT_S = 5.0


def retry_pending_aborts(client: "S3Client", wait_s: float = 15.0) -> List[Tuple[str, str, str]]:
    """Try again the aborts ``client`` could not do; log and return the uploads still left."""
    if not client.pending_aborts():
        return []
    left = client.pending_aborts(retry=True, wait_s=wait_s)
    if left:
        log.warning(
            "s3torch: %d multipart upload(s) could not be aborted yet (the server is not answering): %s; "
            "they are retried later, or remove them with `s3torch uploads --abort s3://BUCKET/PREFIX`",
            len(left),
            ", ".join(f"s3://{b}/{k} ({u})" for b, k, u in left[:5]),
        )
    return left


def abort_uploads_under(client: "S3Client", bucket: str, prefix: str) -> Tuple[int, List[Tuple[str, str, str]]]:
    """Abort every incomplete multipart upload under ``prefix``. Only call this when nothing
    may still be uploading there (a DCP save's coordinator, after every rank has written).
    Returns the number aborted and the ``(key, upload_id, initiated)`` of those left."""
    retry_pending_aborts(client)
    found = client.list_multipart_uploads(bucket, prefix)
    results = client.abort_multipart_uploads(bucket, [(key, upload_id) for key, upload_id, _ in found])
    refused = [r for r in results if isinstance(r, BaseException)]
    if refused:
        raise refused[0]  # e.g. access denied: as one abort at a time raised it
    left = [upload for upload, gone in zip(found, results) if not gone]
    if found:
        log.info(
            "s3torch: aborted %d incomplete multipart upload(s) an earlier save left under s3://%s/%s",
            len(found) - len(left),
            bucket,
            prefix,
        )
    return len(found) - len(left), left


def track(client: "S3Client") -> None:
    """Have the exit hook try the aborts ``client`` could not do."""
    _clients.add(client)


@atexit.register
def _abort_at_exit() -> None:
    for client in list(_clients):
        try:
            retry_pending_aborts(client, EXIT_WAIT_S)
        except Exception:  # never fail interpreter exit
            pass
