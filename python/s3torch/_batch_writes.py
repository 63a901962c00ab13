"""Objects written together, all or none: the files of a save (safetensors shards, a Hugging
Face checkpoint's files on one rank, a consolidation's outputs).

``BatchWrite`` runs the writes a few at a time. After one fails, none not yet begun begins;
every write already begun ends (completes, or its upload is aborted) before the first error is
raised; and the objects the batch completed are deleted, so a failed save leaves none of its
files behind (those that cannot be deleted are logged and noted on the error). ``delete_keys``
is the deletion the savers share: a key gone already is fine.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Tuple, TypeVar

from . import _crt
from ._notes import add_note

if TYPE_CHECKING:
    from ._client import S3Client

log = logging.getLogger("s3torch")
T = TypeVar("T")


def delete_keys(s3: "S3Client", bucket: str, keys: Sequence[str], what: str) -> None:
    """Delete ``keys`` in order (gone already is fine); the first failure is raised, noting
    ``what`` the object is."""
    for key in keys:
        try:
            s3.delete_object(bucket, key)
        except _crt.S3NotFoundError:
            pass
        except _crt.S3Exception as e:
            add_note(e, f"s3torch: s3://{bucket}/{key} is {what}; delete it, or save again")
            raise


class BatchWrite:
    """A context manager: ``run`` the writes; an exception leaving the block deletes every
    object ``run`` completed (and any ``written`` added), then propagates."""

    def __init__(self, s3: "S3Client", bucket: str, thread_name: str = "s3torch-write") -> None:
        self.s3, self.bucket, self.thread_name = s3, bucket, thread_name
        self.written: List[str] = []  # keys completed by this batch (list.append is atomic)

    def __enter__(self) -> "BatchWrite":
        return self

    def __exit__(self, kind: Any, e: Optional[BaseException], tb: Any) -> None:
        if e is None:
            return
        left = []
        for key in self.written:
            try:
                delete_keys(self.s3, self.bucket, [key], "a file of a failed save")
            except _crt.S3Exception as err:
                log.warning("s3torch: could not delete s3://%s/%s after a failed save: %s", self.bucket, key, err)
                left.append(f"s3://{self.bucket}/{key}")
        if left:
            add_note(e, f"s3torch: files this save wrote could not be deleted: {', '.join(left)}")

    def run(self, writes: Sequence[Tuple[str, Callable[[], T]]], threads: int) -> List[T]:
        """Each ``(key, write)``'s ``write()``, ``threads`` at a time; their results in order.
        The first error is raised once every write begun has ended; none begins after it."""
        failed = threading.Event()

        def one(key: str, write: Callable[[], T]) -> Optional[T]:
            if failed.is_set():
                return None
            try:
                out = write()
            except BaseException:
                failed.set()
                raise
            self.written.append(key)
            return out

        results: List[Any] = []
        first: Optional[BaseException] = None
        with ThreadPoolExecutor(max(1, min(threads, len(writes))), thread_name_prefix=self.thread_name) as pool:
            futures = [pool.submit(one, key, write) for key, write in writes]
            for f in futures:
                try:
                    results.append(f.result())
                except BaseException as e:
                    first = first or e
        if first is not None:
            raise first
        return results
