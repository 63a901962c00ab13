"""Client configuration: the fields and defaults of s3torchconnector's ``S3ClientConfig``,
plus s3torch's own (endpoint, credentials, memory limit, CA file, ...)."""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Optional

from . import _crt

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's smallest part but the last


class PartSizeWarning(UserWarning):
    """An ``S3ClientConfig.part_size`` below S3's 5 MiB minimum: 5 MiB is used instead."""


@dataclass(frozen=True)
class S3ClientConfig:
    """How an :class:`~s3torch.S3Client` talks to S3. Validated on construction, by the native
    ``ClientConfig`` (csrc/s3torch/config.h), which defines every field's limits once.

    Attributes:
        throughput_target_gbps: aws-c-s3 sizes its connection pool for this (default 10).
        part_size: part size in bytes for multipart uploads and ranged GETs (1..5 GiB, default
            8 MiB). Below S3's 5 MiB minimum part, 5 MiB is used (with a warning) and this field
            keeps the value given. s3torchconnector accepts such a value as well; its uploads
            use 5 MiB parts (aws-c-s3 raises the part size), but its GETs use the small ranges
            as given, which s3torch does not do (tiny ranged GETs multiply requests for nothing).
        unsigned: send unsigned requests (public buckets).
        force_path_style: address buckets as ``endpoint/bucket/key`` instead of
            ``bucket.endpoint/key``. IP-address and localhost endpoints always use path style.
        max_attempts: attempts per request, first try included (1..64, default 10), until the
            endpoint has answered once, and always when ``retry_timeout_s`` is 0; 1 turns
            retries off altogether.
        profile: named profile from ``~/.aws/credentials`` / ``~/.aws/config``.
        memory_limit_bytes: cap on aws-c-s3's part-buffer pool (0: automatic; else >= 1 GiB).
        access_key_id, secret_access_key, session_token: static credentials.
        ca_file: PEM bundle to trust for a private TLS endpoint.
        s3express: enable S3 Express One Zone (directory buckets).
        stream_read_ahead_bytes: read-ahead window of streaming GETs (0: 4 x part size).
        connect_timeout_ms: TCP connect timeout (0: the CRT's default).
        retry_timeout_s: once the endpoint has answered, how long a request that keeps failing
            transiently (connections refused or reset, timeouts, 5xx, SlowDown, truncated bodies)
            is retried, counted from when it was issued (0..86400, default 120; 0: retry
            ``max_attempts`` times instead). Until the endpoint has answered once, failures give
            up after about 4 s (a wrong endpoint, a server not running).
        checksums: the checksum uploads carry for the server to verify, ``"crc32c"`` (default),
            ``"crc32"``, or ``"off"`` for servers that reject checksum headers.
    """

    throughput_target_gbps: float = 10.0
    part_size: int = 8 * MiB
    unsigned: bool = False
    force_path_style: bool = False
    max_attempts: int = 10
    profile: Optional[str] = None
    memory_limit_bytes: int = 0
    access_key_id: Optional[str] = None
    secret_access_key: Optional[str] = None
    session_token: Optional[str] = None
    ca_file: Optional[str] = None
    s3express: bool = False
    stream_read_ahead_bytes: int = 0
    connect_timeout_ms: int = 0
    retry_timeout_s: int = 120
    checksums: str = "crc32c"

    def __post_init__(self) -> None:
        # One set of limits: the native ClientConfig's (TypeError for a wrong type,
        # S3InvalidArgumentError, a ValueError, for a value out of its limits).
        self.native_config().validate()
        if self.part_size < MIN_PART_SIZE:
            warnings.warn(
                f"S3ClientConfig: part_size {self.part_size} is below S3's minimum part size of 5 MiB; "
                "5 MiB parts are used",
                PartSizeWarning,
                stacklevel=3,
            )

    def native_config(self, region: str = "us-east-1", endpoint: str = "", user_agent: str = "") -> _crt.ClientConfig:
        """This configuration as the native ``ClientConfig`` (same field names; None is "")."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return _crt.ClientConfig(
            region=region,
            endpoint=endpoint,
            user_agent=user_agent,
            **{k: "" if v is None else v for k, v in values.items()},
        )

    def as_dict(self) -> Dict[str, Any]:
        """The configuration as a plain dict of its fields."""
        return asdict(self)
