"""s3:// URIs."""

from __future__ import annotations

import os
from typing import Tuple, Union

from ._crt import S3InvalidArgumentError


def s3_path(path: Union[str, "os.PathLike[str]"]) -> str:
    """``path`` as a str, with the "s3://" that pathlib collapses to "s3:/" restored."""
    s = os.fspath(path)
    if s.startswith("s3:/") and not s.startswith("s3://"):
        s = "s3://" + s[4:]
    return s


def parse_s3_uri(uri: Union[str, "os.PathLike[str]"], *, need_key: bool = False) -> Tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``.

    Raises S3InvalidArgumentError (a ValueError) for anything that is not an s3:// URI with a
    bucket, or, with ``need_key``, that has no key.
    """
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise TypeError(f"expected an s3:// URI as str, got {type(uri).__name__}")
    if not uri.startswith("s3://"):
        raise S3InvalidArgumentError(f"not an S3 URI: {uri!r} (expected s3://bucket/key)")
    rest = uri[5:]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise S3InvalidArgumentError(f"S3 URI has no bucket: {uri!r} (expected s3://bucket/key)")
    if need_key and not key:
        raise S3InvalidArgumentError(f"S3 URI has no key: {uri!r} (expected s3://bucket/key)")
    return bucket, key
