"""S3TorchFileSystem: an fsspec ``AbstractFileSystem`` over :class:`~s3torch.S3Client`.

Paths are ``bucket/key`` (``s3torch://``, ``s3://`` and ``s3a://`` are stripped; the bucket may
be an access point's ARN). Directories are key prefixes ending in ``/``, as in s3fs: they exist
while an object lies under them, ``mkdir`` and ``rmdir`` change nothing, and a key that ends
in ``/`` (a "directory marker") is listed as its directory, not as a file.

Each operation goes to s3torch's engine: reads through :class:`~s3torch.s3reader.S3Reader`
(segmented read-ahead; every GET of one open file held to one version of the object), writes
through :class:`~s3torch.S3Writer` (multipart; the object appears whole on ``close()``, and
never when the ``with`` block raises), ``cat_ranges`` with every range in flight at once,
``get_file`` by parallel ranged GETs into the file's memory map under a partial name renamed
once whole, ``put_file`` as one streaming upload, ``cp_file`` server-side. Nothing is
cached between calls: every listing is fresh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import email.utils
import functools
import hashlib
import io
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from glob import has_magic
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.spec import AbstractFileSystem

try:  # fsspec >= 2026.9: get() refuses destinations built from names that leave its target
    from fsspec.utils import check_contained as _fsspec_checks_get
except ImportError:  # older: this module checks the names itself (S3TorchFileSystem.get)
    _fsspec_checks_get = None

from .. import _crt
from .._client import S3Client
from .._config import S3ClientConfig
from .._local_files import get_files, put_file, stamp
from .._paths import UnsafeKeyError
from .._uri import split_bucket
from ..s3reader import S3Reader
from ..s3reader.constructor import ReaderConstructor, S3ReaderConstructor
from ..s3writer import S3Writer

Info = Dict[str, Any]

# s3fs options that tune its own caches and concurrency: taken, and left to s3torch's engine,
# so that storage_options written for s3fs work unchanged. Any other option that s3torch does
# not know is refused by name.
_S3FS_TUNING = frozenset(
    {
        "default_block_size",
        "default_fill_cache",
        "default_cache_type",
        "cache_regions",
        "max_concurrency",
        "fixed_upload_size",
        "use_listings_cache",
        "listings_expiry_time",
        "max_paths",
        "skip_instance_cache",
        "loop",
    }
)
_CLIENT_KWARGS = frozenset({"region_name", "endpoint_url", "verify"})
_PARTIAL = ".s3torch-partial"  # get_file: the file's name until it is whole
_JOBS = 64  # get, copy, cat, pipe: files in flight at once (rm: S3Client.delete_objects); the GIL is
# released while each waits
_PUT_JOBS = 16  # put: files uploaded at once (each holds a read buffer and its parts in flight)
_RANGES_IN_FLIGHT = 64  # cat_ranges: GETs in flight
# cat_file: a range longer than this (often a guess at "to the end") is clipped to the object
# by a HEAD first, whose ETag then pins the GET: its bytes are allocated before any answer.
_CLIP_ABOVE = 1 << 30


class _Cached(type(AbstractFileSystem)):  # type: ignore[misc]
    """fsspec's instance cache, which keys each filesystem by ``str()`` of its arguments, where
    an ``S3ClientConfig`` shows no secret and a reader constructor only its kind: two configs
    that differ only in their keys, or two readers in their buffer size, would share one
    filesystem. Both also pass a digest of all their fields (secrets included), so that they
    do not."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("_config_digest", None)
        config = kwargs.get("s3client_config", args[2] if len(args) > 2 else None)
        constructor = kwargs.get("reader_constructor")
        parts: List[Any] = []
        if isinstance(config, S3ClientConfig):
            parts.append(sorted(dataclasses.asdict(config).items()))
        if constructor is not None:
            parts.append((type(constructor).__name__, sorted(vars(constructor).items())))
        if parts:
            kwargs["_config_digest"] = hashlib.sha256(repr(parts).encode()).hexdigest()
        if kwargs.pop("asynchronous", False):  # an async caller's (zarr 3): coroutines, as s3fs gives
            try:
                from ._async import S3TorchAsyncFileSystem
            except ImportError as e:  # fsspec before 2024.12: no AsyncFileSystemWrapper
                raise ImportError(f"S3TorchFileSystem(asynchronous=True) needs fsspec 2024.12 or later ({e})") from e
            return S3TorchAsyncFileSystem(super().__call__(*args, **kwargs), asynchronous=True)
        return super().__call__(*args, **kwargs)


class S3TorchFileSystem(AbstractFileSystem, metaclass=_Cached):  # type: ignore[misc]
    """fsspec's filesystem interface on s3torch.

    Args:
        region: as :class:`~s3torch.S3Client` takes it (None: as boto3 finds it).
        endpoint: as :class:`~s3torch.S3Client` takes it (None: as boto3 finds it).
        s3client_config: an :class:`~s3torch.S3ClientConfig` (encryption, timeouts, ...).
        reader_constructor: how files opened for reading read (default: the sequential
            reader's segmented read-ahead; ``S3ReaderConstructor.range_based()`` for many
            small random reads).

    s3fs's own names for the same settings are taken too, so that ``storage_options``
    written for s3fs work: ``anon`` (unsigned requests), ``key``/``secret``/``token``
    (``username``/``password``), ``profile``, ``endpoint_url``, ``requester_pays``, and
    ``client_kwargs`` ``region_name``, ``endpoint_url`` and ``verify`` (a CA bundle's path).
    s3fs's cache and concurrency settings are accepted and ignored; any other option is a
    TypeError that names it. ``asynchronous=True`` (an async caller's, as zarr 3 passes it)
    gives an :class:`~s3torch.fsspec.S3TorchAsyncFileSystem` over the filesystem of the
    other arguments: its calls as coroutines.
    """

    protocol = ("s3torch", "s3", "s3a")
    root_marker = ""

    def __init__(
        self,
        region: Optional[str] = None,
        endpoint: Optional[str] = None,
        s3client_config: Optional[S3ClientConfig] = None,
        *,
        reader_constructor: Optional[ReaderConstructor] = None,
        anon: bool = False,
        key: Optional[str] = None,
        secret: Optional[str] = None,
        token: Optional[str] = None,
        username: Optional[str] = None,
        password: Optional[str] = None,
        profile: Optional[str] = None,
        endpoint_url: Optional[str] = None,
        requester_pays: bool = False,
        client_kwargs: Optional[Dict[str, Any]] = None,
        **storage_options: Any,
    ) -> None:
        storage_options.pop("_config_digest", None)  # the instance cache's (_Cached)
        unknown = sorted(set(storage_options) - _S3FS_TUNING)
        if unknown:
            raise TypeError(
                f"S3TorchFileSystem does not take {', '.join(unknown)} (s3fs options it takes: anon, key, "
                "secret, token, profile, endpoint_url, requester_pays, client_kwargs; s3torch's: region, "
                "endpoint, s3client_config, reader_constructor)"
            )
        super().__init__(**{k: v for k, v in storage_options.items() if k != "loop"})
        client_kwargs = dict(client_kwargs or {})
        unknown = sorted(set(client_kwargs) - _CLIENT_KWARGS)
        if unknown:
            raise TypeError(
                f"client_kwargs {', '.join(unknown)}: S3TorchFileSystem takes only {sorted(_CLIENT_KWARGS)}"
            )
        region = region or client_kwargs.get("region_name")
        endpoint = endpoint or endpoint_url or client_kwargs.get("endpoint_url")
        overrides: Dict[str, Any] = {}
        if anon:
            overrides["unsigned"] = True
        for field, value in (
            ("access_key_id", key or username),
            ("secret_access_key", secret or password),
            ("session_token", token),
            ("profile", profile),
        ):
            if value is not None:
                overrides[field] = value
        if requester_pays:
            overrides["requester_pays"] = True
        verify = client_kwargs.get("verify")
        if verify is False:
            raise ValueError("client_kwargs verify=False: s3torch always verifies TLS (give a CA bundle's path)")
        if isinstance(verify, str):
            overrides["ca_file"] = verify
        config = dataclasses.replace(s3client_config or S3ClientConfig(), **overrides)
        self.client = _shared_client(region, endpoint, config)
        self.reader_constructor = reader_constructor
        # Per thread: .batch, the _Batch of its bulk call; .listed, what its listings said.
        self._local = threading.local()

    # --- bulk calls: fsspec's get, put and copy hand over one file at a time ---------------
    @property
    def _batch(self) -> Optional["_Batch"]:
        return getattr(self._local, "batch", None)

    @contextlib.contextmanager
    def _batched(self, jobs: int, ignore_missing: bool = False) -> Iterator[None]:
        """While fsspec's ``get``/``put``/``copy`` hands files to ``get_file``/``put_file``/
        ``cp_file``, start each in a pool of ``jobs`` threads; wait for them all at the end."""
        if self._batch is not None:  # nested: the outer call's batch runs it
            yield
            return
        batch = self._local.batch = _Batch(jobs, ignore_missing)
        try:
            yield
        except BaseException:
            self._local.batch = None
            batch.finish(raise_errors=False)
            raise
        self._local.batch = None
        batch.finish(raise_errors=True)

    @contextlib.contextmanager
    def _remembering_listings(self) -> Iterator[Dict[str, Info]]:
        """While it lasts, ``find`` on this thread adds what it lists (name: info) to the dict
        it yields: a ``get`` reads each file as listed, an ``rm`` knows the directories."""
        outer = getattr(self._local, "listed", None)
        if outer is not None:  # nested: the outer call's
            yield outer
            return
        listed: Dict[str, Info] = {}
        self._local.listed = listed
        try:
            yield listed
        finally:
            self._local.listed = None

    # --- paths ----------------------------------------------------------------------------
    def split_path(self, path: str) -> Tuple[str, str]:
        """``(bucket, key)`` of a path, with or without its protocol."""
        bucket, key = split_bucket(self._strip_protocol(path))
        return bucket, key

    def _object_path(self, path: str, what: str) -> Tuple[str, str]:
        bucket, key = self.split_path(path)
        if not bucket or not key:
            raise ValueError(f"{what} needs bucket/key, got {path!r}")
        return bucket, key

    # --- metadata -------------------------------------------------------------------------
    @staticmethod
    def _file_info(bucket: str, o: "_crt.ObjectInfo") -> Info:
        return {
            "name": f"{bucket}/{o.key}",
            "size": int(o.size),
            "type": "file",
            "ETag": o.etag,
            "LastModified": _timestamp(o.last_modified),
            "StorageClass": o.storage_class or "STANDARD",
        }

    @staticmethod
    def _dir_info(name: str) -> Info:
        return {"name": name, "size": 0, "type": "directory", "StorageClass": "DIRECTORY"}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> Union[List[Info], List[str]]:
        """The files and directories right under ``path`` (or ``path`` itself, when it is a
        file). FileNotFoundError when there is neither."""
        bucket, key = self.split_path(path)
        if not bucket:
            raise NotImplementedError("S3TorchFileSystem cannot list buckets: name one (bucket or bucket/prefix)")
        prefix = key + "/" if key else ""
        out: List[Info] = []
        marker = False
        for page in self.client.list_objects(bucket, prefix, delimiter="/"):
            for o in page.object_info:
                if o.key == prefix:
                    marker = True  # the directory's own marker object
                elif o.key.endswith("/"):
                    out.append(self._dir_info(f"{bucket}/{o.key[:-1]}"))
                else:
                    out.append(self._file_info(bucket, o))
            out += [self._dir_info(f"{bucket}/{p.rstrip('/')}") for p in page.common_prefixes]
        if not out and key and not marker:  # nothing under it: a file, or nothing at all
            found = self._head_info(bucket, key)
            if found is None:
                raise FileNotFoundError(f"s3://{bucket}/{key}: no such object or prefix")
            out = [found]
        out.sort(key=lambda i: i["name"])
        return out if detail else [i["name"] for i in out]

    def _head_info(self, bucket: str, key: str) -> Optional[Info]:
        """The object's info from a HEAD, or None when there is no such object."""
        try:
            return self._file_info(bucket, self.client.head_object(bucket, key))
        except _crt.S3NotFoundError:
            return None

    def _holds_anything(self, bucket: str, key: str) -> bool:
        """Whether anything lies under the directory ``key`` (``""``: the bucket's root), from
        a listing of one key; S3NotFoundError when the bucket does not exist."""
        page = next(self.client.list_objects(bucket, key + "/" if key else "", delimiter="/", max_keys=1))
        return bool(page.object_info or page.common_prefixes)

    def url(self, path: str, expires: int = 3600, client_method: str = "get_object", **kwargs: Any) -> str:
        """s3fs's ``url``: a presigned URL that GETs (``client_method="put_object"``: uploads)
        the object without credentials for ``expires`` seconds
        (:meth:`s3torch.S3Client.presign`). s3fs passes other keyword arguments to boto3 as
        request parameters; s3torch signs plain GETs and PUTs and refuses them (TypeError)
        rather than leave them out of the URL."""
        if kwargs:
            raise TypeError(
                f"url() takes no request parameters (got {', '.join(sorted(kwargs))}): s3torch signs plain requests"
            )
        methods = {"get_object": "GET", "put_object": "PUT"}
        if client_method not in methods:
            raise ValueError(f"client_method must be get_object or put_object, not {client_method!r}")
        bucket, key = self._object_path(path, "url")
        return self.client.presign(bucket, key, expires, methods[client_method])

    def sign(self, path: str, expiration: int = 100, **kwargs: Any) -> str:
        """fsspec's ``sign`` (s3fs's): :meth:`url` of a GET, ``expiration`` seconds."""
        return self.url(path, expires=expiration, **kwargs)

    def info(self, path: str, **kwargs: Any) -> Info:
        """``name``, ``size``, ``type`` (``file`` or ``directory``), and for a file its ``ETag``,
        ``LastModified`` (a UTC datetime) and ``StorageClass``: a HEAD, then (a directory?) a
        listing of one key."""
        bucket, key = self.split_path(path)
        if not bucket:
            return self._dir_info("")
        found = self._head_info(bucket, key) if key else None
        if found is not None:
            return found
        holds = self._holds_anything(bucket, key)  # for the bucket alone: that it exists
        if key and not holds:
            raise FileNotFoundError(f"s3://{bucket}/{key}: no such object or prefix")
        return self._dir_info(f"{bucket}/{key}" if key else bucket)

    def find(
        self, path: str, maxdepth: Optional[int] = None, withdirs: bool = False, detail: bool = False, **kwargs: Any
    ) -> Union[List[str], Dict[str, Info]]:
        """Every file under ``path`` (and with ``withdirs`` every directory), from one flat
        listing of its prefix (``maxdepth``: fsspec's walk, a listing per directory)."""
        if maxdepth is not None:
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        bucket, key = self.split_path(path)
        if not bucket:
            raise NotImplementedError("S3TorchFileSystem cannot list buckets: name one (bucket or bucket/prefix)")
        root = f"{bucket}/{key}" if key else bucket
        prefix = key + "/" if key else ""
        out: Dict[str, Info] = {}
        listed = False
        for page in self.client.list_objects(bucket, prefix):
            for o in page.object_info:
                listed = True
                rel = o.key[len(prefix) :]
                marker = rel.endswith("/")  # a directory's marker object
                if not marker:
                    out[f"{bucket}/{o.key}"] = self._file_info(bucket, o)
                if withdirs and rel:  # every directory between the root and the object
                    parts = rel.rstrip("/").split("/")
                    for depth in range(1, len(parts) + (1 if marker else 0)):
                        name = f"{root}/{'/'.join(parts[:depth])}"
                        out.setdefault(name, self._dir_info(name))
        if withdirs and listed and key:
            out.setdefault(root, self._dir_info(root))
        if not listed and key:  # nothing under it: a file, or nothing at all
            found = self._head_info(bucket, key)
            if found is not None:
                out[root] = found
        remembered = getattr(self._local, "listed", None)
        if remembered is not None:  # a get's or rm's listing (_remembering_listings)
            remembered.update(out)
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    def modified(self, path: str) -> datetime.datetime:
        """When the object was last written (UTC)."""
        info = self.info(path)
        if info["type"] != "file":
            raise IsADirectoryError(f"{path}: a directory has no modification time on S3")
        return info["LastModified"]  # type: ignore[no-any-return]

    def ukey(self, path: str) -> str:
        """The object's ETag: changes whenever the object is written."""
        return str(self.info(path).get("ETag") or super().ukey(path))

    # --- directories: prefixes, which exist while something lies under them ---------------
    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        """Nothing to do (a directory appears with its first object); a missing bucket is
        FileNotFoundError, as s3torch creates no buckets."""
        bucket, _ = self.split_path(path)
        if bucket:
            self._holds_anything(bucket, "")  # S3NotFoundError: no such bucket

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        """As :meth:`mkdir`."""
        self.mkdir(path)

    def rmdir(self, path: str) -> None:
        """Nothing to do: a directory goes with its last object."""

    # --- reading --------------------------------------------------------------------------
    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: Any = None,
        autocommit: bool = True,
        cache_options: Any = None,
        **kwargs: Any,
    ) -> Union[S3Reader, S3Writer]:
        bucket, key = self._object_path(path, "open")
        if mode == "rb":
            # The HEAD says now, as s3fs does, that there is no such object; the reader is
            # given its answer without taking the size as known up front, so that it reads
            # in segments (a format's footer costs one GET) rather than the whole object.
            native = self.client._get_native()
            head = native.head(bucket, key, for_read=True)
            constructor = self.reader_constructor or S3ReaderConstructor.default()
            return constructor(bucket, key, native, lambda: head, None)
        if mode not in ("wb", "xb", "ab"):
            raise ValueError(f"mode {mode!r}: S3TorchFileSystem opens 'rb', 'wb', 'xb' and 'ab' (and their text forms)")
        # "xb": refused now if the key is taken (before anything is uploaded), and again,
        # atomically, when the object completes (If-None-Match: S3ObjectExistsError).
        exclusive = mode == "xb"
        if exclusive and self.exists(path):
            raise FileExistsError(f"s3://{bucket}/{key} exists (mode 'xb')")
        # block_size, s3fs's part size for a write: parts at least that large (in whole MiB),
        # as many as S3 takes (10,000) then hold 10,000 block sizes. A size hint says just that.
        hint = _write_block(block_size) * _crt.MAX_UPLOAD_PARTS if block_size is not None else None
        writer = (
            self.client.put_object(bucket, key, exclusive=exclusive, size_hint=hint)
            if autocommit
            else _DeferredWriter(self.client.upload(bucket, key, exclusive=exclusive, size_hint=hint), bucket, key)
        )
        if mode == "ab":
            # S3 has no append: the new object starts with the old one's bytes (one version of
            # it, streamed), then what the caller writes. Until it is closed the old object
            # stays as it was, and a failed append leaves it so.
            try:
                if int(self.client.head_object(bucket, key).size) > 0:
                    with contextlib.closing(self.client.get_stream(bucket, key)) as chunks:
                        for chunk in chunks:
                            writer.write(chunk)
            except _crt.S3NotFoundError:
                pass  # nothing to append to: a new object
            except BaseException:
                writer.abort()
                raise
        return writer

    def cat_file(self, path: str, start: Optional[int] = None, end: Optional[int] = None, **kwargs: Any) -> bytes:
        """The object's bytes ``[start, end)`` (negative: from its end) in one GET; an ``end``
        past the object's reads to its end (more than 1 GiB past ``start``: clipped by a HEAD
        first, not allocated)."""
        bucket, key = self._object_path(path, "cat_file")
        native = self.client._get_native()
        if start is None and end is None:
            return native.get_bytes(bucket, key)
        start, end = start or 0, end
        info: Optional["_crt.ObjectInfo"] = None  # one HEAD, for whichever needs it
        if start < 0 or (end is not None and end < 0):
            info = self.client.head_object(bucket, key)
            size = int(info.size)
            start = max(0, size + start) if start < 0 else start
            end = size + end if end is not None and end < 0 else end
        if end is not None and end <= start:
            return b""
        etag = ""
        if end is not None and end - start > _CLIP_ABOVE:
            info = info or self.client.head_object(bucket, key)
            end, etag = min(end, int(info.size)), info.etag
            if end <= start:
                return b""
        try:
            return native.get_bytes(bucket, key, start, None if end is None else end - start, None, etag)
        except _crt.S3Exception as e:
            if _starts_past_the_end(e):
                return b""
            raise

    def cat_ranges(
        self,
        paths: List[str],
        starts: Union[None, int, Sequence[Optional[int]]],
        ends: Union[None, int, Sequence[Optional[int]]],
        max_gap: Optional[int] = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> List[Union[bytes, Exception]]:
        """Many ranges at once: every GET of a plain range (``0 <= start <= end``, up to 1 GiB)
        in flight together, each into a buffer of its own; the others one at a time, as
        ``cat_file`` reads them."""
        if max_gap is not None:
            raise NotImplementedError("max_gap")
        if not isinstance(paths, list):
            raise TypeError("paths must be a list")
        starts_l = list(starts) if isinstance(starts, Sequence) else [starts] * len(paths)
        ends_l = list(ends) if isinstance(ends, Sequence) else [ends] * len(paths)
        if len(starts_l) != len(paths) or len(ends_l) != len(paths):
            raise ValueError("paths, starts and ends differ in length")
        out: List[Union[bytes, Exception]] = [b""] * len(paths)
        native = self.client._get_native()
        inflight: List[Tuple[int, Any, bytearray]] = []

        def settle(i: int, fetch: Callable[[], bytes]) -> None:
            try:
                out[i] = fetch()
            except Exception as e:
                if on_error != "return":
                    raise
                out[i] = e

        def finish(entry: Tuple[int, Any, bytearray]) -> None:
            i, handle, buf = entry
            settle(i, lambda: _landed(handle, buf, lambda: self.cat_file(paths[i], starts_l[i], ends_l[i])))

        try:
            for i, (p, s, e) in enumerate(zip(paths, starts_l, ends_l)):
                if s is None or e is None or s < 0 or e < s or e - s > _CLIP_ABOVE:  # (clipped by cat_file)
                    settle(i, lambda p=p, s=s, e=e: self.cat_file(p, s, e))  # type: ignore[misc]
                    continue
                if e == s:
                    continue
                buf = bytearray(e - s)
                try:
                    bucket, key = self._object_path(p, "cat_ranges")
                    handle = native.start_get_into(bucket, key, buf, s, e - s)
                except Exception as error:  # a path with no key: that item's error
                    settle(i, functools.partial(_raise, error))
                    continue
                inflight.append((i, handle, buf))
                if len(inflight) >= _RANGES_IN_FLIGHT:
                    finish(inflight.pop(0))
            while inflight:
                finish(inflight.pop(0))
        except BaseException:
            for _, h, _ in inflight:
                h.cancel()
            raise
        return out

    # --- writing --------------------------------------------------------------------------
    def pipe_file(self, path: str, value: Any, mode: str = "overwrite", **kwargs: Any) -> None:
        """PUT ``value`` (bytes-like) as the whole object; ``mode="create"``: create only
        (``If-None-Match``), ``S3ObjectExistsError`` (a FileExistsError) if the key is taken."""
        bucket, key = self._object_path(path, "pipe_file")
        exclusive = _create_only(mode)
        if self._intrans:  # inside a transaction: the object appears on its commit
            with self.open(path, "xb" if exclusive else "wb") as f:
                f.write(value)
            return
        self.client.put(bucket, key, value, exclusive=exclusive)

    def put_file(
        self, lpath: str, rpath: str, callback: Callback = DEFAULT_CALLBACK, mode: str = "overwrite", **kwargs: Any
    ) -> None:
        """Upload a local file as one streaming upload, held to the file as it was when the
        upload began (a file written meanwhile fails the upload, which leaves no object).
        Inside ``put``, ``_PUT_JOBS`` files upload at once."""
        batch = self._batch
        if batch is not None:
            batch.submit(lambda: self._put_file(lpath, rpath, DEFAULT_CALLBACK, mode))
            return
        self._put_file(lpath, rpath, callback, mode)

    def _put_file(self, lpath: str, rpath: str, callback: Callback, mode: str) -> None:
        if os.path.isdir(lpath):
            return  # a directory: nothing to store
        bucket, key = self._object_path(rpath, "put_file")
        exclusive = _create_only(mode)
        version = stamp(os.stat(lpath))
        callback.set_size(version[1])
        put_file(self.client, bucket, key, os.fspath(lpath), version, _Relay(callback), exclusive)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """Server-side copy (nothing passes through this machine); a directory is a no-op.
        Inside ``copy`` and ``mv``, ``_JOBS`` copies are in flight."""
        batch = self._batch
        if batch is not None:

            def job() -> None:
                try:
                    self._cp_file(path1, path2)
                except FileNotFoundError:
                    if not batch.ignore_missing:
                        raise

            batch.submit(job)
            return
        self._cp_file(path1, path2)

    def copy(
        self,
        path1: Union[str, List[str]],
        path2: Union[str, List[str]],
        recursive: bool = False,
        maxdepth: Optional[int] = None,
        on_error: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        """fsspec's ``copy``, ``_JOBS`` server-side copies in flight."""
        ignore_missing = on_error == "ignore" or (on_error is None and recursive)  # fsspec's default
        with self._batched(_JOBS, ignore_missing):
            super().copy(path1, path2, recursive=recursive, maxdepth=maxdepth, on_error=on_error, **kwargs)

    def _cp_file(self, path1: str, path2: str) -> None:
        b1, k1 = self._object_path(path1, "cp_file")
        b2, k2 = self._object_path(path2, "cp_file")
        try:
            self.client.copy_object(b1, k1, b2, k2)
        except _crt.S3NotFoundError:
            if self._holds_anything(b1, k1):  # a directory: nothing to copy
                return
            raise

    # --- local files ----------------------------------------------------------------------
    def get_file(
        self, rpath: str, lpath: Any, callback: Callback = DEFAULT_CALLBACK, outfile: Any = None, **kwargs: Any
    ) -> None:
        """Download to ``lpath``: ranged GETs in parallel straight into the file's memory map,
        every one held to the version the first HEAD saw, under ``lpath + ".s3torch-partial"``
        renamed once whole (a failed download leaves no file). A file object gets the bytes
        streamed into it. Inside ``get``, ``_JOBS`` files download at once, each held to the
        version the listing saw (one replaced since is read again, whole, as it is now)."""
        if outfile is None and not isinstance(lpath, (str, os.PathLike)):
            outfile = lpath
        batch = self._batch
        if batch is None or outfile is not None:
            self._get_file(rpath, lpath, callback, outfile)
            return
        listed = (getattr(self._local, "listed", None) or {}).get(self._strip_protocol(rpath))

        def job() -> None:
            try:
                self._get_file(rpath, lpath, DEFAULT_CALLBACK, None, listed)
            except _crt.S3ObjectChangedError:
                if listed is None:
                    raise
                self._get_file(rpath, lpath, DEFAULT_CALLBACK, None)  # replaced since the listing

        batch.submit(job)

    def _get_file(
        self, rpath: str, lpath: Any, callback: Callback, outfile: Any, listed: Optional[Info] = None
    ) -> None:
        bucket, key = self.split_path(rpath)
        if listed is not None and listed["type"] == "directory":
            os.makedirs(lpath, exist_ok=True)
            return
        if listed is not None:
            size, etag = int(listed["size"]), str(listed["ETag"])
        else:
            head = self._head_info(bucket, key) if key else None
            if head is None:
                if self._holds_anything(bucket, key):  # a directory
                    if outfile is None:
                        os.makedirs(lpath, exist_ok=True)
                    return
                raise FileNotFoundError(f"s3://{bucket}/{key}: no such object")
            size, etag = int(head["size"]), str(head["ETag"])
        callback.set_size(size)
        if outfile is not None:
            with contextlib.closing(self.client.get_stream(bucket, key)) as chunks:
                for chunk in chunks:
                    outfile.write(chunk)
                    callback.relative_update(len(chunk))
            return
        lpath = os.path.abspath(os.fspath(lpath))
        os.makedirs(os.path.dirname(lpath), exist_ok=True)
        files = [(key, size, etag)]
        get_files(self.client, bucket, "", {key: lpath}, files, _Relay(callback), _PARTIAL, durable=False)

    def get(
        self,
        rpath: Union[str, List[str]],
        lpath: Any,
        recursive: bool = False,
        callback: Callback = DEFAULT_CALLBACK,
        maxdepth: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        """fsspec's ``get``; a listing that names a key with a ``..`` segment (one that could
        leave ``lpath``) is refused before anything is written. fsspec 2026.9 and later check
        the local paths themselves; for older ones s3torch lists first and checks the keys."""
        if _fsspec_checks_get is None and isinstance(rpath, str) and not isinstance(lpath, list):
            if recursive or has_magic(rpath):
                for name in self.expand_path(rpath, recursive=recursive, maxdepth=maxdepth):
                    if ".." in name.split("/"):
                        raise UnsafeKeyError(name, "it has a '..' path segment")
        with self._remembering_listings(), self._batched(_JOBS):
            super().get(rpath, lpath, recursive=recursive, callback=callback, maxdepth=maxdepth, **kwargs)

    def put(
        self,
        lpath: Union[str, List[str]],
        rpath: Union[str, List[str]],
        recursive: bool = False,
        callback: Callback = DEFAULT_CALLBACK,
        maxdepth: Optional[int] = None,
        **kwargs: Any,
    ) -> None:
        """fsspec's ``put``, ``_PUT_JOBS`` files uploaded at once."""
        with self._batched(_PUT_JOBS):
            super().put(lpath, rpath, recursive=recursive, callback=callback, maxdepth=maxdepth, **kwargs)

    def cat(
        self, path: Union[str, List[str]], recursive: bool = False, on_error: str = "raise", **kwargs: Any
    ) -> Union[bytes, Dict[str, Union[bytes, Exception]]]:
        """fsspec's ``cat``: one object's bytes, or ``{path: bytes}`` of several, ``_JOBS`` GETs in
        flight (``on_error``: ``"raise"``, ``"omit"`` or ``"return"`` the exception)."""
        paths = self.expand_path(path, recursive=recursive, **kwargs)
        if len(paths) == 1 and not isinstance(path, list) and paths[0] == self._strip_protocol(path):
            return self.cat_file(paths[0], **kwargs)
        out: Dict[str, Union[bytes, Exception]] = {}
        with ThreadPoolExecutor(min(_JOBS, len(paths)), thread_name_prefix="s3torch-cat") as pool:
            futures = [(p, pool.submit(self.cat_file, p, **kwargs)) for p in paths]
            for p, f in futures:
                error = f.exception()
                if error is None:
                    out[p] = f.result()
                elif on_error == "raise":
                    for _, g in futures:
                        g.cancel()
                    raise error
                elif on_error == "return":
                    out[p] = error  # type: ignore[assignment]
        return out

    def pipe(self, path: Union[str, Dict[str, Any]], value: Any = None, **kwargs: Any) -> None:
        """fsspec's ``pipe``; a ``{path: bytes}`` dict is written ``_JOBS`` objects at a time."""
        if not isinstance(path, dict):
            super().pipe(path, value, **kwargs)
            return
        _run_all([functools.partial(self.pipe_file, self._strip_protocol(k), v, **kwargs) for k, v in path.items()])

    # --- removing -------------------------------------------------------------------------
    def rm_file(self, path: str) -> None:
        """Delete one object (no error when there is none: S3's delete is idempotent)."""
        bucket, key = self._object_path(path, "rm_file")
        self.client.delete_object(bucket, key)

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def rm(self, path: Union[str, List[str]], recursive: bool = False, maxdepth: Optional[int] = None) -> None:
        """Delete the objects ``path`` names (``recursive``: everything under it, directory
        markers included), 1,000 to a DeleteObjects request, several in flight;
        FileNotFoundError when it names nothing. A key not deleted raises its S3Exception, once
        the rest are gone."""
        if recursive and maxdepth is None and isinstance(path, str) and not has_magic(path):
            return self._rm_tree(*self.split_path(path))
        with self._remembering_listings() as listed:  # what the listings say of each name
            names = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
        targets = []
        for name in names:
            bucket, key = self.split_path(name)
            if bucket and key:
                targets.append((bucket, key))
                if recursive and listed.get(name, {}).get("type") == "directory":
                    targets.append((bucket, key + "/"))  # its marker, if it has one
        by_bucket: Dict[str, List[str]] = {}
        for b, k in targets:
            by_bucket.setdefault(b, []).append(k)
        for b, ks in by_bucket.items():  # DeleteObjects: 1,000 keys a request (S3Client.delete_objects)
            failed = self.client.delete_objects(b, ks)
            if failed:
                raise failed[0][1]

    def _rm_tree(self, bucket: str, key: str) -> None:
        """``rm(path, recursive=True)`` of one path: everything under it, deleted a request at a
        time while the listing goes on (the keys held stay bounded), then the object ``key``
        itself (a file, or a directory's marker)."""
        prefix = key + "/" if key else ""
        count = 0

        def under() -> Iterator[str]:
            nonlocal count
            for page in self.client.list_objects(bucket, prefix):
                for o in page.object_info:
                    count += 1
                    yield o.key

        failed = self.client.delete_objects(bucket, under())
        if key and (count or self._head_info(bucket, key) is not None):
            failed += self.client.delete_objects(bucket, [key])
        elif key:
            raise FileNotFoundError(f"s3://{bucket}/{key}: no such object or prefix")
        if failed:
            raise failed[0][1]

    def invalidate_cache(self, path: Optional[str] = None) -> None:
        """Nothing to do: nothing is cached."""


# One S3Client (its connections, buffers and event loop) for every filesystem of the same
# settings: fsspec makes a filesystem per thread.
_CLIENTS: Dict[Tuple[Optional[str], Optional[str], S3ClientConfig], S3Client] = {}
_CLIENTS_LOCK = threading.Lock()


def _shared_client(region: Optional[str], endpoint: Optional[str], config: S3ClientConfig) -> S3Client:
    with _CLIENTS_LOCK:
        client = _CLIENTS.get((region, endpoint, config))
        if client is None:
            client = _CLIENTS[(region, endpoint, config)] = S3Client(region, endpoint, config)
        return client


def _run_all(jobs: List[Callable[[], None]]) -> None:
    """Run ``jobs`` ``_JOBS`` at a time; the first failure stops those not started and is raised."""
    if not jobs:
        return
    batch = _Batch(min(_JOBS, len(jobs)), False)
    try:
        for job in jobs:
            batch.submit(job)
    except BaseException:
        batch.finish(raise_errors=False)
        raise
    batch.finish(raise_errors=True)


class _Batch:
    """The files one bulk call hands over one at a time, each started as it comes, ``jobs``
    at a time, all awaited before the call returns. The first failure cancels those not yet
    started and is raised. (fsspec's progress callback counts files as they are handed over.)"""

    def __init__(self, jobs: int, ignore_missing: bool) -> None:
        self._pool = ThreadPoolExecutor(jobs, thread_name_prefix="s3torch-fsspec")
        self._futures: List["Future[None]"] = []
        self.ignore_missing = ignore_missing  # copy: a source gone since the listing is skipped
        self._failed: List[BaseException] = []  # appended by the pool's threads (list.append is atomic)

    def submit(self, job: Callable[[], None]) -> None:
        future = self._pool.submit(job)
        future.add_done_callback(self._note)
        self._futures.append(future)

    def finish(self, raise_errors: bool) -> None:
        try:
            if raise_errors:  # until all are done or one has failed
                wait(self._futures, return_when=FIRST_EXCEPTION)
            for f in self._futures:  # start no more (a no-op once all are done)
                f.cancel()
            wait(self._futures)
        except BaseException:  # interrupted while waiting: leave the running ones to finish
            self._pool.shutdown(wait=False, cancel_futures=True)
            raise
        self._pool.shutdown(wait=True)
        if raise_errors and self._failed:
            raise self._failed[0]

    def _note(self, f: "Future[None]") -> None:  # a done callback: failures in the order they came
        if not f.cancelled() and f.exception() is not None:
            self._failed.append(f.exception())  # type: ignore[arg-type]


def _starts_past_the_end(e: "_crt.S3Exception") -> bool:
    """A ranged GET's 416: the range starts at or past the object's end, which reads as b""."""
    return bool(e.http_status == 416)


def _create_only(mode: str) -> bool:
    """fsspec's write ``mode``: "create" (create only: True) or "overwrite"."""
    if mode not in ("overwrite", "create"):
        raise ValueError(f"mode {mode!r}: 'overwrite' or 'create'")
    return mode == "create"


def _raise(error: BaseException) -> bytes:
    raise error


def _landed(handle: Any, buf: bytearray, whole_read: Callable[[], bytes]) -> bytes:
    """The bytes a ranged GET into ``buf`` landed (fewer at the object's end); a range past
    the end is read again by ``whole_read``'s rules (b"")."""
    try:
        n = handle.wait()
    except _crt.S3Exception as e:
        if e.http_status == 416:
            return whole_read()
        raise
    return bytes(buf) if n == len(buf) else bytes(memoryview(buf)[:n])


def _timestamp(text: str) -> Optional[datetime.datetime]:
    """A listing's ISO 8601 time or a HEAD's HTTP date, as an aware UTC datetime."""
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(datetime.timezone.utc)
    except ValueError:
        pass
    try:
        return email.utils.parsedate_to_datetime(text).astimezone(datetime.timezone.utc)
    except (TypeError, ValueError):
        return None


class _Relay:
    """An fsspec callback as the copies' byte counter (``_local_files.Counter``)."""

    def __init__(self, callback: Callback) -> None:
        self.callback = callback

    def add(self, n: int) -> None:
        self.callback.relative_update(n)


class _DeferredWriter(S3Writer):
    """A writer inside an fsspec transaction: ``close()`` leaves the upload open (its parts
    uploaded); the transaction's ``commit()`` completes it, so that the object appears, and
    ``discard()`` aborts it, so that nothing does."""

    _pending = False

    def close(self) -> None:
        if not self.closed:
            self._pending = True
            io.BufferedIOBase.close(self)  # not S3Writer.close, which completes the upload

    def commit(self) -> None:
        """Complete the upload: the object appears (a file still open is closed first)."""
        self.close()
        if self._pending:
            self._pending = False
            self.etag = self._upload.complete() or None

    def discard(self) -> None:
        """Abort the upload: no object, no parts left behind."""
        if self._pending:
            self._pending = False
            self._upload.abort()
        elif not self.closed:
            self.abort()

    def __del__(self) -> None:
        try:
            self.discard()  # a transaction never committed: nothing appears
        except Exception:
            pass


def _write_block(block_size: Any) -> int:
    """``open``'s ``block_size`` for a write, checked: a byte count."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a byte count (an int > 0) or None, got {block_size!r}")
    return block_size
