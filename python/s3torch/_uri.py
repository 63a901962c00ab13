"""s3:// URIs."""

from __future__ import annotations

import os
import re
from typing import Tuple, Union

from ._crt import S3InvalidArgumentError

# An access point's ARN, which stands where a bucket's name does and holds slashes of its own:
# arn:<partition>:<s3|s3-object-lambda>:<region>:<account>:accesspoint/<name> (a Multi-Region
# Access Point has no region), and an Outposts one,
# arn:<partition>:s3-outposts:<region>:<account>:outpost/<id>/accesspoint/<name>; ':' may stand
# for each '/' inside. As the AWS CLI reads s3:// URIs.
_ACCESS_POINT_ARN = re.compile(r"arn:[^:/]+:[^:/]+:[^:/]*:[^:/]*:(?:outpost[:/][^:/]+[:/])?accesspoint[:/][^:/]+")


def split_bucket(rest: str) -> Tuple[str, str]:
    """``bucket/key`` (an s3:// URI without its scheme) as ``(bucket, key)``, where the bucket
    may be an access point's ARN: ``arn:aws:s3:us-west-2:123456789012:accesspoint/ap/key`` is
    that access point's ``key``."""
    m = _ACCESS_POINT_ARN.match(rest)
    if m and (len(rest) == m.end() or rest[m.end()] == "/"):
        return m.group(0), rest[m.end() + 1 :]
    bucket, _, key = rest.partition("/")
    return bucket, key


def s3_path(path: Union[str, "os.PathLike[str]"]) -> str:
    """``path`` as a str, with the "s3://" that pathlib collapses to "s3:/" restored."""
    s = os.fspath(path)
    if s.startswith("s3:/") and not s.startswith("s3://"):
        s = "s3://" + s[4:]
    return s


def parse_s3_uri(uri: Union[str, "os.PathLike[str]"], *, need_key: bool = False) -> Tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; the bucket may be an access point's
    ARN (:func:`split_bucket`).

    Raises S3InvalidArgumentError (a ValueError) for anything that is not an s3:// URI with a
    bucket, or, with ``need_key``, that has no key.
    """
    if isinstance(uri, os.PathLike):
        uri = os.fspath(uri)
    if not isinstance(uri, str):
        raise TypeError(f"expected an s3:// URI as str, got {type(uri).__name__}")
    if not uri.startswith("s3://"):
        raise S3InvalidArgumentError(f"not an S3 URI: {uri!r} (expected s3://bucket/key)")
    bucket, key = split_bucket(uri[5:])
    if not bucket:
        raise S3InvalidArgumentError(f"S3 URI has no bucket: {uri!r} (expected s3://bucket/key)")
    if need_key and not key:
        raise S3InvalidArgumentError(f"S3 URI has no key: {uri!r} (expected s3://bucket/key)")
    return bucket, key


def as_dir(prefix: str) -> str:
    """A key prefix as a "directory": with one trailing slash (empty stays empty)."""
    return prefix.rstrip("/") + "/" if prefix.strip("/") else ""
