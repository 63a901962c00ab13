"""Deleting many objects: DeleteObjects, up to 1,000 keys a request.

``S3Client.delete_objects`` is the one path every remover takes (``s3torch rm``,
``remove_checkpoint``, ``prune_checkpoints``, fsspec's ``rm``):

- keys go in batches of ``_crt.MAX_DELETE_KEYS``, ``JOBS`` batches in flight, each answer
  naming every key deleted or refused (the core refuses an answer that leaves one out); keys
  may come from a listing still under way (fsspec's ``rm`` of a prefix): each batch goes when
  it is full;
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

from collections import deque
from typing import TYPE_CHECKING, Callable, Deque, Iterable, List, Optional, Tuple

from . import _crt

if TYPE_CHECKING:  # concurrent.futures is imported when a delete needs it: `import s3torch` stays lean
    from concurrent.futures import Future, ThreadPoolExecutor

    from ._client import S3Client

JOBS = 8  # DeleteObjects requests in flight at once
ALONE_JOBS = 32  # single deletes in flight at once, per batch that falls back to them
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
    from concurrent.futures import ThreadPoolExecutor

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
    client: "S3Client", bucket: str, keys: Iterable[str], removed: Callable[[int], None] = lambda n: None
) -> List[Failure]:
    """Delete ``keys`` of ``bucket`` (see the module); ``removed(n)`` as n more are gone. The
    (key, error) of each key not deleted, in no particular order. ``keys`` may be an iterator (a
    listing): each batch goes as soon as it is full, while the iterator goes on, and at most
    ``2 * JOBS`` batches wait, so the keys held stay bounded whatever its length."""
    from concurrent.futures import ThreadPoolExecutor

    native = client._get_native()
    size = _crt.MAX_DELETE_KEYS

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

    failures: List[Failure] = []
    alone: List[str] = []
    part: List[str] = []
    pool: Optional[ThreadPoolExecutor] = None
    waiting: Deque["Future[List[Failure]]"] = deque()
    try:
        for key in keys:
            if not key or not _crt.xml_can_carry(key):  # "" fails alone (a bad argument), not its batch
                alone.append(key)
                continue
            part.append(key)
            if len(part) < size:
                continue
            if pool is None:
                pool = ThreadPoolExecutor(JOBS, thread_name_prefix="s3torch-delete")
            waiting.append(pool.submit(batch, part))
            part = []
            while len(waiting) >= 2 * JOBS:
                failures.extend(waiting.popleft().result())
        if part and not waiting:  # one batch in all: no thread needed
            failures.extend(batch(part))
        elif part:
            waiting.append(pool.submit(batch, part))  # type: ignore[union-attr]
        while waiting:
            failures.extend(waiting.popleft().result())
    except BaseException:
        for f in waiting:  # a failed listing, Ctrl-C: nothing more is sent
            f.cancel()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    return failures + _alone(client, bucket, alone, removed)
