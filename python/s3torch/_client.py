"""S3Client: the Python face of the native core.

Policy lives here, transfers in C++. The native client is created lazily, once per process:
an ``S3Client`` used in a fork()ed child (a DataLoader worker) builds its own, and pickling
an ``S3Client`` carries only its configuration.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Generator, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from . import _crt, _deletes, _listing, _sso_refresh, _uploads
from ._config import S3ClientConfig, default_region
from ._user_agent import UserAgent, prefix_of
from .s3reader import S3Reader
from .s3reader.constructor import ReaderConstructor, S3ReaderConstructor
from .s3writer import S3Writer

Buffer = Any  # an object with the buffer protocol, or a tensor with __dlpack__


def _before_fork() -> None:
    # Stop CRT threads so the child starts clean. If a transfer is in flight somewhere,
    # prepare_fork leaves everything running (returns False); the child then still never
    # uses inherited clients.
    try:
        _crt.prepare_fork()
    except Exception:  # never let a fork fail because of us
        pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork)


class _Prefix:
    # A UserAgent already rendered (what a pickled client carries).
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix


class S3Client:
    """A client for one region/endpoint and configuration.

    Args:
        region: AWS region (or the region your S3-compatible server expects); None: as
            boto3 finds it (``$AWS_REGION``, ``$AWS_DEFAULT_REGION``, the profile's ``region`` in
            ``~/.aws/config``, else us-east-1), once, here.
        endpoint: ``http(s)://host[:port]``; default: as boto3 resolves it (``$AWS_ENDPOINT_URL_S3``,
            ``$AWS_ENDPOINT_URL``, the profile's ``endpoint_url``), else AWS's for the region.
        s3client_config: an :class:`S3ClientConfig`.
        user_agent: a :class:`~s3torch._user_agent.UserAgent` (s3torchconnector's is accepted
            too: anything with a str ``prefix``); its ``prefix`` is the User-Agent header of
            every request (aws-c-s3 appends its own token). Default: ``UserAgent()``.
    """

    def __init__(
        self,
        region: Optional[str] = None,
        endpoint: Optional[str] = None,
        s3client_config: Optional[S3ClientConfig] = None,
        *,
        user_agent: Optional[UserAgent] = None,
    ) -> None:
        self._config = s3client_config or S3ClientConfig()
        self._region = default_region(self._config.profile) if region is None else region
        self._endpoint = endpoint or ""
        self._user_agent_prefix = prefix_of(user_agent)
        self._native: Optional[_crt.NativeClient] = None
        self._pid = -1
        self._lock = threading.Lock()
        self._single_deletes = False  # set once the server answers that it has no DeleteObjects
        # Validate now, in the caller's process, so bad configuration fails at construction.
        self._get_native()
        _uploads.track(self)
        if not (self._config.access_key_id or self._config.unsigned):
            _sso_refresh.keep_fresh(self._config.profile)  # a profile signing in with `aws sso login`

    # --- lifecycle -----------------------------------------------------------------------
    def _get_native(self) -> _crt.NativeClient:
        native, pid = self._native, os.getpid()
        if native is not None and self._pid == pid:
            return native
        with self._lock:
            if self._pid != pid:
                # Inherited from the parent of this fork()ed child: build our own. Dropping the
                # parent's is safe; the core never touches its CRT state in this process.
                self._native = None
            if self._native is None:
                self._native = _crt.NativeClient(
                    self._config.native_config(self._region, self._endpoint, user_agent=self._user_agent_prefix)
                )
                self._pid = pid
            return self._native

    def __getstate__(self) -> dict:
        return {
            "region": self._region,
            "endpoint": self._endpoint,
            "config": self._config,
            "user_agent_prefix": self._user_agent_prefix,
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(  # type: ignore[misc]
            state["region"], state["endpoint"] or None, state["config"], user_agent=_Prefix(state["user_agent_prefix"])
        )

    def __repr__(self) -> str:  # the config's repr shows no secret
        return f"S3Client(region={self._region!r}, endpoint={self.endpoint!r}, s3client_config={self._config!r})"

    @property
    def region(self) -> str:
        """The region requests are signed for."""
        return self._region

    @property
    def endpoint(self) -> Optional[str]:
        """The endpoint URL given, or None for AWS's endpoint for the region."""
        return self._endpoint or None

    @property
    def s3client_config(self) -> S3ClientConfig:
        """The S3ClientConfig this client was built with."""
        return self._config

    @property
    def _s3client_config(self) -> S3ClientConfig:
        # s3torchconnector's private spelling, which its users' tests read.
        return self._config

    @property
    def user_agent_prefix(self) -> str:
        """The User-Agent this client's requests carry (before aws-c-s3's own token)."""
        return self._user_agent_prefix

    # --- streams (s3torchconnector's S3Client surface) ------------------------------------
    def get_object(
        self,
        bucket: str,
        key: str,
        object_info: Optional["_crt.ObjectInfo"] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
    ) -> S3Reader:
        """A seekable reader over the object; nothing is fetched until the first read.
        ``object_info`` (e.g. from a listing) saves the HEAD request for its size."""
        constructor = reader_constructor or S3ReaderConstructor.default()
        native = self._get_native()
        reader = constructor(bucket, key, native, lambda: native.head(bucket, key, for_read=True), object_info)
        reader._made_by = (self, reader_constructor)
        return reader

    def put_object(
        self,
        bucket: str,
        key: str,
        storage_class: Optional[str] = None,
        *,
        exclusive: bool = False,
        size_hint: Optional[int] = None,
    ) -> S3Writer:
        """A writer that uploads the object; ``close()`` completes it.

        ``exclusive=True``: create only. ``close()`` raises :class:`S3ObjectExistsError` (a
        ``FileExistsError``) and writes nothing if the key holds an object by then, however
        many writers race for it: the PUT (a multipart upload's CompleteMultipartUpload)
        carries ``If-None-Match: *`` (S3's conditional writes; docs/retries.md).

        ``size_hint``: the object's size in bytes, or about it, when known ahead. S3 takes at
        most 10,000 parts, which at the default 8 MiB ``part_size`` hold 78.1 GiB; an object
        hinted larger is uploaded in larger parts. Without it, a write past that limit raises
        ``S3InvalidArgumentError`` and aborts the upload (nothing is stored)."""
        native = self._get_native().upload(
            bucket, key, storage_class or "", exclusive=exclusive, size_hint=_size_hint(size_hint)
        )
        return S3Writer(native, bucket, key)

    # --- GET ------------------------------------------------------------------------------
    def get_into(
        self, bucket: str, key: str, buffer: Buffer, offset: Optional[int] = None, length: Optional[int] = None
    ) -> int:
        """GET the object (or ``length`` bytes from ``offset``) straight into ``buffer``;
        returns the number of bytes written. The GIL is released while it runs."""
        return self._get_native().get_into(bucket, key, buffer, offset, length)

    def start_get_into(
        self, bucket: str, key: str, buffer: Buffer, offset: Optional[int] = None, length: Optional[int] = None
    ) -> "_crt.GetHandle":
        """Start a GET into ``buffer`` and return a handle (``wait()``, ``done()``, ``cancel()``)."""
        return self._get_native().start_get_into(bucket, key, buffer, offset, length)

    def get_into_many(
        self, bucket: str, items: Sequence[Tuple[str, Optional[int], Optional[int], Buffer]]
    ) -> List[int]:
        """Run many GETs at once, each ``(key, offset, length, buffer)``; returns bytes per item."""
        return self._get_native().get_into_many(bucket, list(items))

    def get_stream(
        self, bucket: str, key: str, offset: Optional[int] = None, length: Optional[int] = None, read_ahead: int = 0
    ) -> Generator[memoryview, None, None]:
        """Yield the object as read-only memoryviews over the CRT's part buffers (no copy).

        At most about ``read_ahead`` bytes (default: the config's stream_read_ahead_bytes)
        are buffered ahead of the consumer."""
        stream = self._get_native().get_stream(bucket, key, offset, length, read_ahead)
        try:
            while True:
                chunk = stream.next_chunk()
                if chunk is None:
                    return
                yield memoryview(chunk)
        finally:
            stream.close()

    # --- PUT ------------------------------------------------------------------------------
    def put(
        self, bucket: str, key: str, data: Buffer, storage_class: str = "", *, exclusive: bool = False
    ) -> Optional[str]:
        """PUT ``data`` as the whole object; returns the ETag when the server gives one.
        ``exclusive=True``: create only, as :meth:`put_object`'s."""
        return self._get_native().put(bucket, key, data, storage_class, exclusive=exclusive) or None

    def upload(
        self,
        bucket: str,
        key: str,
        storage_class: str = "",
        *,
        exclusive: bool = False,
        size_hint: Optional[int] = None,
    ) -> "_crt.Upload":
        """A streaming upload: ``write(buffer)`` ..., then ``complete()`` or ``abort()``.
        ``exclusive`` and ``size_hint`` as :meth:`put_object`'s."""
        return self._get_native().upload(
            bucket, key, storage_class, exclusive=exclusive, size_hint=_size_hint(size_hint)
        )

    # --- metadata -------------------------------------------------------------------------
    def head_object(self, bucket: str, key: str) -> "_crt.ObjectInfo":
        """Key, size, ETag and last-modified time of ``bucket/key`` (S3NotFoundError if missing)."""
        return self._get_native().head(bucket, key)

    def presign(self, bucket: str, key: str, expires_in: int = 3600, method: str = "GET") -> str:
        """A URL that GETs (``method="PUT"``: uploads) ``bucket/key`` without credentials for
        ``expires_in`` seconds (1 to 604,800: seven days), as boto3's
        ``generate_presigned_url`` and ``aws s3 presign`` make it (SigV4 in the query string,
        only the Host header signed: its user sends no header). Signed on this machine; the
        object need not exist. Temporary credentials (a role, SSO) end the URL when they
        expire, and it carries their session token. ``requester_pays`` is signed into it.
        Refused (S3InvalidArgumentError, a ValueError): a client with ``sse_customer_key``, a
        PUT by a client with ``sse``, S3 Express buckets."""
        if isinstance(expires_in, bool) or not isinstance(expires_in, int):
            raise TypeError(f"expires_in must be whole seconds (an int), not {type(expires_in).__name__}")
        return str(self._get_native().presign(bucket, key, expires_in, method=method))

    def list_objects(
        self, bucket: str, prefix: str = "", delimiter: str = "", max_keys: int = 1000
    ) -> Iterator["_crt.ListPage"]:
        """Yield ListObjectsV2 pages, following continuation tokens (a server whose paging
        does not advance is refused: ``_listing``)."""
        yield from _listing.pages(self._get_native(), bucket, prefix, delimiter, max_keys)

    def delete_object(self, bucket: str, key: str) -> None:
        """Delete the object ``bucket/key``."""
        self._get_native().delete_object(bucket, key)

    def delete_objects(
        self, bucket: str, keys: Iterable[str], removed: Optional[Callable[[int], None]] = None
    ) -> List[Tuple[str, "_crt.S3Exception"]]:
        """Delete ``keys`` of ``bucket``, 1,000 to a DeleteObjects request, several in flight
        (a server without DeleteObjects: one DeleteObject each). ``keys`` may be an iterator,
        a listing under way: each request goes as soon as it has its 1,000. ``removed(n)``, if
        given, is called as ``n`` more are gone (from worker threads). Returns the
        ``(key, S3Exception)`` of each key not deleted; an empty list when all are gone. As
        with ``delete_object``, a key that does not exist counts as deleted."""
        return _deletes.delete_all(self, bucket, keys, removed or (lambda n: None))

    def copy_object(self, src_bucket: str, src_key: str, dst_bucket: str, dst_key: str) -> None:
        """Server-side copy of ``src_bucket/src_key`` to ``dst_bucket/dst_key``."""
        self._get_native().copy_object(src_bucket, src_key, dst_bucket, dst_key)

    # --- multipart uploads ----------------------------------------------------------------
    def list_multipart_uploads(self, bucket: str, prefix: str = "") -> List[Tuple[str, str, str]]:
        """Incomplete multipart uploads under ``prefix``: ``(key, upload_id, initiated)`` tuples
        (``initiated`` as the server sent it, ISO 8601)."""
        return self._get_native().list_multipart_uploads(bucket, prefix)

    def abort_multipart_upload(self, bucket: str, key: str, upload_id: str, wait_s: float = 15.0) -> bool:
        """Abort an incomplete multipart upload, retrying through server errors and outages for
        up to ``wait_s``. True when it is gone (also when it already was); False when the server
        could not be reached in time, in which case the upload is remembered (see
        :meth:`pending_aborts`)."""
        return self._get_native().abort_multipart_upload(bucket, key, upload_id, wait_s)

    def abort_multipart_uploads(
        self, bucket: str, uploads: Sequence[Tuple[str, str]], wait_s: float = 15.0
    ) -> List[Union[bool, "_crt.S3Exception"]]:
        """Abort every ``(key, upload_id)`` of ``uploads`` in ``bucket``, many at once. One
        result per upload, in order: True when it is gone, False when the server could not be
        reached (it is then remembered, see :meth:`pending_aborts`), or the
        :class:`S3Exception` that refused it (e.g. access denied). The wait ends when no upload
        has been settled for ``wait_s``: an outage costs ``wait_s`` in all, not per upload.
        Ctrl-C ends it too (the uploads not settled are remembered)."""
        return self._get_native().abort_multipart_uploads(bucket, list(uploads), wait_s)

    def pending_aborts(self, retry: bool = False, wait_s: float = 15.0) -> List[Tuple[str, str, str]]:
        """Multipart uploads this client failed to abort because the server could not be reached
        (an outage during a failed upload): ``(bucket, key, upload_id)`` tuples. With ``retry``,
        first try them again, all at once, until none has been settled for ``wait_s``, and
        return those still left."""
        if self._native is None or self._pid != os.getpid():
            return []  # this process has sent nothing through this client
        return self._native.pending_aborts(retry, wait_s)


def _size_hint(size: Optional[int]) -> int:
    """``size_hint`` as the core takes it (0: not known)."""
    if size is None:
        return 0
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise _crt.S3InvalidArgumentError(f"size_hint must be a byte count (an int >= 0) or None, got {size!r}")
    return size
