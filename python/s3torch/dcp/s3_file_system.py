"""S3FileSystem: torch.distributed.checkpoint's FileSystemBase over S3."""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generator, List, Optional, Union

import torch
from torch.distributed.checkpoint.filesystem import FileSystemBase

from .._client import S3Client
from .._config import S3ClientConfig
from .._crt import S3Exception, S3NotFoundError
from .._uri import parse_s3_uri, s3_path
from .._user_agent import UserAgent
from ..s3reader import S3Reader
from ..s3reader.constructor import ReaderConstructor, S3ReaderConstructor
from ..s3reader.protocol import DCPS3ReaderConstructorProtocol, S3ReaderConstructorProtocol
from ..s3writer import S3Writer
from .s3_prefix_strategy import DefaultPrefixStrategy, S3PrefixStrategyBase

PathLike = Union[str, "os.PathLike[str]"]

# s3torchconnector defines its storage reader and writer in this module; s3torch's live in
# s3_storage_reader / s3_storage_writer and are importable from here too (looked up on first
# use: those modules import this one; not in __all__, so a star import does not load them).
_MOVED = {"S3StorageReader": "s3_storage_reader", "S3StorageWriter": "s3_storage_writer"}

__all__ = [
    "S3FileSystem",
    "StorageMetadata",
    "S3PrefixStrategyBase",
    "DefaultPrefixStrategy",
    "S3ReaderConstructorProtocol",
    "DCPS3ReaderConstructorProtocol",
    "S3Exception",
]


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(f"{__package__}.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class StorageMetadata:
    """The key prefix of a checkpoint (s3torchconnector's ``storage_meta`` record; s3torch
    neither writes nor needs it, and provides it for code that names it)."""

    prefix: str


class S3FileSystem(FileSystemBase):
    """torch.distributed.checkpoint's FileSystemBase over S3: paths are ``s3://bucket/key``."""

    def __init__(
        self,
        region: Optional[str] = None,
        s3_client: Optional[S3Client] = None,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
        endpoint: Optional[str] = None,
    ) -> None:
        reader_type = S3ReaderConstructor.get_reader_type_string(reader_constructor)
        user_agent = UserAgent(["dcp", torch.__version__, f"md/reader_type#{reader_type}"])
        self._client = s3_client or S3Client(
            region, endpoint=endpoint, s3client_config=s3client_config, user_agent=user_agent
        )
        self.region = self._client.region if region is None else region
        self._reader_constructor = reader_constructor

    @property
    def client(self) -> S3Client:
        """The S3Client every stream of this file system uses."""
        return self._client

    @contextmanager
    def create_stream(
        self, path: PathLike, mode: str, *, size_hint: Optional[int] = None
    ) -> Generator[Union[S3Reader, S3Writer], None, None]:
        """A reader (mode 'rb') or writer (mode 'wb') of the object at ``path``; a writer left by an exception is
        aborted. Mode 'xb' (exclusive creation, as ``open``'s): a writer whose close raises
        ``S3ObjectExistsError`` (a ``FileExistsError``), writing nothing, if the key holds an object by then.
        ``size_hint``: a writer's size, or about it (``S3Client.put_object``'s)."""
        bucket, key = parse_s3_uri(s3_path(path), need_key=True)
        if mode == "rb":
            reader = self._client.get_object(bucket, key, reader_constructor=self._reader_constructor)
            try:
                yield reader
            finally:
                reader.close()
        elif mode in ("wb", "xb"):
            writer = self._client.put_object(bucket, key, exclusive=mode == "xb", size_hint=size_hint)
            try:
                yield writer
            except BaseException:
                writer.abort()  # no object, no orphaned parts
                raise
            writer.close()
        else:
            raise ValueError(f"S3FileSystem.create_stream: mode must be 'rb', 'wb' or 'xb', got {mode!r}")

    def concat_path(self, path: PathLike, suffix: str) -> str:
        """``path/suffix``."""
        return s3_path(path).rstrip("/") + "/" + suffix.lstrip("/")

    def init_path(self, path: PathLike) -> str:
        """``path`` as an ``s3://`` URL, checked."""
        s = s3_path(path)
        parse_s3_uri(s)
        return s

    def rename(self, path: PathLike, new_path: PathLike) -> None:
        """Server-side copy, then delete (S3 has no rename). Not used by S3StorageWriter."""
        src_bucket, src_key = parse_s3_uri(s3_path(path), need_key=True)
        dst_bucket, dst_key = parse_s3_uri(s3_path(new_path), need_key=True)
        if src_bucket != dst_bucket:
            raise ValueError(f"rename across buckets is not supported: {path} -> {new_path}")
        self._client.copy_object(src_bucket, src_key, dst_bucket, dst_key)
        self._client.delete_object(src_bucket, src_key)

    def mkdir(self, path: PathLike) -> None:
        """Nothing: S3 has no directories."""
        pass  # S3 has no directories

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: PathLike) -> bool:
        """True if ``checkpoint_id`` is an ``s3://bucket[/prefix]`` path."""
        try:
            parse_s3_uri(s3_path(checkpoint_id))
            return True
        except (ValueError, TypeError):
            return False

    def exists(self, path: PathLike) -> bool:
        """True if the object at ``path`` exists."""
        bucket, key = parse_s3_uri(s3_path(path), need_key=True)
        try:
            self._client.head_object(bucket, key)
            return True
        except S3NotFoundError:
            return False

    def rm_file(self, path: PathLike) -> None:
        """Delete the object at ``path``."""
        bucket, key = parse_s3_uri(s3_path(path), need_key=True)
        self._client.delete_object(bucket, key)

    def ls(self, path: PathLike) -> List[str]:
        """``s3://`` URLs of every object under ``path/``."""
        bucket, prefix = parse_s3_uri(s3_path(path))
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        return [
            f"s3://{bucket}/{o.key}" for page in self._client.list_objects(bucket, prefix) for o in page.object_info
        ]
