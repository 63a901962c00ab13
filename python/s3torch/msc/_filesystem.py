"""multi-storage-client's DCP classes (``multistorageclient.contrib.torch``) on s3torch's
engine: same names, signatures and checkpoint layout; loads go through the parallel zero-copy
loader, saves through the streaming writer with ``.metadata`` written last by one PUT.

A path (``msc://profile/path`` or ``s3://bucket/prefix``) is resolved once, at construction
(and again by ``reset(checkpoint_id)``), to an ``s3://`` URL and the profile's endpoint,
region and credentials; the reader or writer then is an ``S3StorageReader`` /
``S3StorageWriter`` on that URL.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Any, Dict, Generator, List, Optional, Tuple, Union

from torch.distributed.checkpoint.filesystem import FileSystemBase

from .._crt import S3NotFoundError
from .._uri import parse_s3_uri
from ..dcp.s3_file_system import S3FileSystem
from ..dcp.s3_storage_reader import S3StorageReader
from ..dcp.s3_storage_writer import S3StorageWriter
from ..s3reader import S3Reader
from ..s3writer import S3Writer
from ._config import MSC_SCHEME, MSCConfig, Resolved, S3Target

PathLike = Union[str, "os.PathLike[str]"]


def _valid_syntax(checkpoint_id: Any) -> bool:
    try:
        s = os.fspath(checkpoint_id)
    except TypeError:
        return False
    if not isinstance(s, str):
        return False
    for scheme in (MSC_SCHEME, "s3://"):
        if s.startswith(scheme):
            return bool(s[len(scheme) :].partition("/")[0])
    return False


class MultiStorageFileSystem(FileSystemBase):
    """torch's ``FileSystemBase`` over ``msc://`` and ``s3://`` paths of S3 profiles.

    Paths keep the scheme they were given in: ``concat_path`` and ``ls`` of an ``msc://``
    path return ``msc://`` paths. One S3 client per distinct (endpoint, region, credentials),
    created when first used. The MSC config is read on first use and kept.
    """

    def __init__(self) -> None:
        self._config: Optional[MSCConfig] = None
        self._clients: Dict[S3Target, S3FileSystem] = {}
        self._lock = threading.Lock()  # guards _clients (and the lazy config load)

    def __getstate__(self) -> Dict[str, Any]:
        # Pickles its configuration only: the config is read again, and clients are created
        # again, in the process that unpickles it (e.g. dcp.async_save's checkpoint process).
        return {}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]

    def resolve(self, path: PathLike) -> Resolved:
        """The S3 URL and target behind ``path``; :class:`MSCConfigError` if it cannot be used."""
        with self._lock:
            if self._config is None:
                self._config = MSCConfig.load()
            config = self._config
        return config.resolve(path)

    def s3_file_system(self, target: S3Target) -> S3FileSystem:
        """The S3FileSystem for one resolved S3 target, made once and reused."""
        with self._lock:
            fs = self._clients.get(target)
            if fs is None:
                fs = S3FileSystem(target.region, s3client_config=target.config, endpoint=target.endpoint)
                self._clients[target] = fs
            return fs

    def _bind(self, path: PathLike) -> Tuple[S3FileSystem, str]:
        r = self.resolve(path)
        return self.s3_file_system(r.target), r.url

    @contextmanager
    def create_stream(
        self, path: PathLike, mode: str, *, size_hint: Optional[int] = None
    ) -> Generator[Union[S3Reader, S3Writer], None, None]:
        """A reader (mode 'rb') or writer (mode 'wb') of ``path`` (``msc://`` or ``s3://``), as S3FileSystem's."""
        fs, url = self._bind(path)
        with fs.create_stream(url, mode, size_hint=size_hint) as stream:
            yield stream

    def concat_path(self, path: PathLike, suffix: str) -> str:
        """``path/suffix``."""
        return os.fspath(self.init_path(path)).rstrip("/") + "/" + suffix.lstrip("/")

    def init_path(self, path: PathLike) -> str:
        """``path`` checked against the MSC configuration, with its scheme normalised."""
        self.resolve(path)  # a path that cannot be used fails here, before any transfer
        s = os.fspath(path)
        for short, scheme in (("s3:/", "s3://"), ("msc:/", MSC_SCHEME)):
            if s.startswith(short) and not s.startswith(scheme):
                s = scheme + s[len(short) :]
        return s

    def rename(self, path: PathLike, new_path: PathLike) -> None:
        """Server-side copy, then delete (as MSC: not atomic, single objects only)."""
        src, dst = self.resolve(path), self.resolve(new_path)
        if src.target != dst.target:
            raise ValueError(f"rename from {path} to {new_path}: the two paths are not on the same S3 endpoint")
        self.s3_file_system(src.target).rename(src.url, dst.url)

    def mkdir(self, path: PathLike) -> None:
        """Nothing: S3 has no directories."""
        self.resolve(path)  # object storage has no directories: a no-op, as in MSC

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: PathLike) -> bool:
        """True for ``msc://<profile>/...`` and ``s3://<bucket>/...`` (the syntax; the profile is
        checked when a reader or writer is built)."""
        return _valid_syntax(checkpoint_id)

    def exists(self, path: PathLike) -> bool:
        """True for an object, or for a "directory" (a prefix with objects under it), as MSC."""
        fs, url = self._bind(path)
        bucket, key = parse_s3_uri(url)
        if key and not key.endswith("/"):
            try:
                fs.client.head_object(bucket, key)
                return True
            except S3NotFoundError:
                pass
        prefix = key.rstrip("/") + "/" if key else ""
        for page in fs.client.list_objects(bucket, prefix, max_keys=1):
            if page.object_info or page.common_prefixes:
                return True
        return False

    def rm_file(self, path: PathLike) -> None:
        """Delete one object; ``FileNotFoundError`` if there is none (as MSC's ``unlink()``)."""
        fs, url = self._bind(path)
        bucket, key = parse_s3_uri(url, need_key=True)
        fs.client.head_object(bucket, key)  # S3NotFoundError is a FileNotFoundError
        fs.client.delete_object(bucket, key)

    def ls(self, path: PathLike) -> List[str]:
        """The immediate children of ``path`` (objects and "directories"), in ``path``'s scheme."""
        fs, url = self._bind(path)
        bucket, key = parse_s3_uri(url)
        prefix = key.rstrip("/") + "/" if key else ""
        base = os.fspath(self.init_path(path)).rstrip("/")
        out: List[str] = []
        for page in fs.client.list_objects(bucket, prefix, delimiter="/"):
            out += [f"{base}/{o.key[len(prefix) :]}" for o in page.object_info]
            out += [f"{base}/{p[len(prefix) :].rstrip('/')}" for p in page.common_prefixes]
        return sorted(out)


class _Binding:
    """What the reader and the writer share: the MSC file system, the resolved target, and a
    ``reset(checkpoint_id)`` that re-resolves (a new profile may mean a new client)."""

    fs: Any  # S3FileSystem: the S3StorageReader/Writer it is mixed into declares it
    path: Any
    region: str
    _msc_fs: MultiStorageFileSystem
    _target: S3Target

    def _build(self, path: PathLike, thread_count: int, init: Any, **kwargs: Any) -> None:
        """Resolve ``path``, then build the S3 reader or writer (``init``: its ``__init__``) on
        the target with ``kwargs``, and use the MSC file system's client for it."""
        _check_thread_count(thread_count)
        self._msc_fs = MultiStorageFileSystem()
        r = self._msc_fs.resolve(path)
        self._target = r.target
        init(
            r.target.region,
            r.url,
            s3client_config=r.target.config,
            endpoint=r.target.endpoint,
            thread_count=thread_count,
            **kwargs,
        )
        self.fs = self._msc_fs.s3_file_system(r.target)
        self.msc_path = path

    def _rebind(self, checkpoint_id: PathLike) -> str:
        r = self._msc_fs.resolve(checkpoint_id)
        if r.target != self._target:
            self.fs = self._msc_fs.s3_file_system(r.target)
            self._target, self.region = r.target, r.target.region
        self.msc_path = checkpoint_id
        return r.url

    def reset(self, checkpoint_id: Optional[PathLike] = None) -> None:
        super().reset(self._rebind(checkpoint_id) if checkpoint_id else None)  # type: ignore[misc]

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return MultiStorageFileSystem.validate_checkpoint_id(checkpoint_id)


def _check_thread_count(thread_count: Any) -> None:
    if isinstance(thread_count, bool) or not isinstance(thread_count, int) or thread_count < 1:
        raise ValueError(f"thread_count must be a positive int, got {thread_count!r}")


class MultiStorageFileSystemReader(_Binding, S3StorageReader):
    """Load a DCP checkpoint from ``msc://profile/path`` or ``s3://bucket/prefix``.

    ``thread_count`` is accepted for MSC compatibility and checked (a positive int), but does
    not limit anything: MSC uses it for threads that download whole files before torch reads
    them; here every item is fetched by ranged GETs straight into its destination, all in
    flight at once on the CRT, whose concurrency follows ``S3ClientConfig``'s throughput
    target. ``**kwargs`` are ``S3StorageReader``'s own options (``trust_checkpoint``, ``verify_checksums``,
    ``staging_bytes``, ``progress``, ...). ``path`` is the resolved ``s3://`` URL;
    ``msc_path`` the path as given.
    """

    def __init__(self, path: PathLike, thread_count: int = 1, **kwargs: Any) -> None:
        self._build(path, thread_count, super().__init__, **kwargs)


class MultiStorageFileSystemWriter(_Binding, S3StorageWriter):
    """Save a DCP checkpoint to ``msc://profile/path`` or ``s3://bucket/prefix``.

    MSC's signature and defaults. ``thread_count`` means what it means to torch's
    ``FileSystemWriter`` (and so to MSC): with ``single_file_per_rank`` each rank writes
    ``thread_count`` files, concurrently, so the layout on S3 is the one MSC writes; each file
    is itself a streaming multipart upload. ``sync_files`` is accepted and ignored: an S3
    object is durable once its upload completes. ``**kwargs`` are ``S3StorageWriter``'s own
    options (``prefix_strategy``, ``progress``).
    """

    def __init__(
        self,
        path: PathLike,
        single_file_per_rank: bool = True,
        sync_files: bool = True,
        thread_count: int = 1,
        per_thread_copy_ahead: int = 10_000_000,
        cache_staged_state_dict: bool = False,
        overwrite: bool = True,
        **kwargs: Any,
    ) -> None:
        self._build(
            path,
            thread_count,
            super().__init__,
            single_file_per_rank=single_file_per_rank,
            sync_files=sync_files,
            per_thread_copy_ahead=per_thread_copy_ahead,
            cache_staged_state_dict=cache_staged_state_dict,
            overwrite=overwrite,
            **kwargs,
        )
