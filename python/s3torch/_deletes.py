"""Deleting many objects: DeleteObjects, up to 1,000 keys a request.

``S3Client.delete_objects`` is the one path every remover takes (``s3torch rm``,
``remove_checkpoint``, ``prune_checkpoints``, fsspec's ``rm``):

- keys go in batches of ``_crt.MAX_DELETE_KEYS``, ``JOBS`` batches in flight, each answer
  naming every key deleted or refused (the core refuses an answer that leaves one out);
- a key XML cannot carry (a control character other than tab, line feed, carriage return) is
  deleted alone: a DeleteObject names it in the URL;
- a key refused for a passing reason (S3 answers each key of a batch: ``InternalError``,
  ``SlowDown``, ``ServiceUnavailable``) is deleted again alone, through the client's retries;
- a server without DeleteObjects (``NotImplemented``, HTTP 501 or 405: some S3-compatible
  stores) has every key deleted alone, then and for the rest of the client's life; one that
  refuses a request for its form (another 4xx, but for access, a missing bucket and
  throttling) has that request's keys deleted alone.

What comes back is the ``(key, S3Exception)`` of each key not deleted; a batch whose request
failed gives its exception for each of its keys.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, List, Optional, Tuple

from . import _crt

if TYPE_CHECKING:
    from ._client import S3Client

JOBS = 8  # DeleteObjects requests in flight at once
ALONE_JOBS = 64  # single deletes in flight at once (as many as fsspec's other bulk calls)
PASSING = frozenset({"InternalError", "SlowDown", "ServiceUnavailable", "RequestTimeout"})

Failure = Tuple[str, _crt.S3Exception]


def _no_batch_deletes(e: _crt.S3Exception) -> bool:
    """Whether the server answered that it has no DeleteObjects."""
    code, status = getattr(e, "code", None), getattr(e, "http_status", None)
    return code in ("NotImplemented", "MethodNotAllowed") or status in (501, 405)


def _refused_as_asked(e: _crt.S3Exception) -> bool:
    """Whether the server refused this DeleteObjects request for its form (a 4xx but for
    access, a missing bucket and throttling): the keys may still go one by one."""
    code, status = getattr(e, "code", None), getattr(e, "http_status", None) or 0
    return 400 <= status < 500 and status not in (401, 403, 429) and code not in ("NoSuchBucket", "SlowDown")


def _alone(client: "S3Client", bucket: str, keys: List[str], removed: Callable[[int], None]) -> List[Failure]:
    """Delete each key with its own DeleteObject, ALONE_JOBS at once."""

    def one(key: str) -> Optional[Failure]:
        try:
            client.delete_object(bucket, key)
        except _crt.S3Exception as e:
            return key, e
        removed(1)
        return None

    if not keys:
        return []
    if len(keys) == 1:
        return [f for f in [one(keys[0])] if f is not None]
    with ThreadPoolExecutor(min(ALONE_JOBS, len(keys)), thread_name_prefix="s3torch-delete") as pool:
        return [f for f in pool.map(one, keys) if f is not None]


def delete_all(
    client: "S3Client", bucket: str, keys: List[str], removed: Callable[[int], None] = lambda n: None
) -> List[Failure]:
    """Delete ``keys`` of ``bucket`` (see the module); ``removed(n)`` as n more are gone. The
    (key, error) of each key not deleted, in no particular order."""
    native = client._get_native()
    alone = [k for k in keys if not _crt.xml_can_carry(k)]
    carried = [k for k in keys if _crt.xml_can_carry(k)] if alone else list(keys)
    size = _crt.MAX_DELETE_KEYS
    batches = [carried[i : i + size] for i in range(0, len(carried), size)]

    def batch(part: List[str]) -> List[Failure]:
        if client._single_deletes:
            return _alone(client, bucket, part, removed)
        try:
            refused = native.delete_objects(bucket, part)
        except _crt.S3Exception as e:
            if _no_batch_deletes(e):
                client._single_deletes = True
            elif not _refused_as_asked(e):
                return [(k, e) for k in part]
            return _alone(client, bucket, part, removed)
        again = [str(e.key) for e in refused if getattr(e, "code", None) in PASSING]
        failed: List[Failure] = [(str(e.key), e) for e in refused if getattr(e, "code", None) not in PASSING]
        removed(len(part) - len(refused))
        return failed + _alone(client, bucket, again, removed)

    failures = _alone(client, bucket, alone, removed)
    if len(batches) == 1:
        return failures + batch(batches[0])
    if batches:
        with ThreadPoolExecutor(min(JOBS, len(batches)), thread_name_prefix="s3torch-delete") as pool:
            for out in pool.map(batch, batches):
                failures.extend(out)
    return failures
