"""Client configuration: the fields and defaults of s3torchconnector's ``S3ClientConfig``,
plus s3torch's own (endpoint, credentials, memory limit, CA file, ...)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Optional

MiB = 1024 * 1024
GiB = 1024 * MiB
_CREDENTIALS = ("default", "static", "environment", "profile", "anonymous")


@dataclass(frozen=True)
class S3ClientConfig:
    """How an :class:`~s3torch.S3Client` talks to S3. Validated on construction.

    Attributes:
        throughput_target_gbps: aws-c-s3 sizes its connection pool for this (default 10).
        part_size: part size in bytes for multipart uploads and ranged GETs (5 MiB..5 GiB,
            default 8 MiB).
        unsigned: send unsigned requests (public buckets).
        force_path_style: address buckets as ``endpoint/bucket/key`` instead of
            ``bucket.endpoint/key``. IP-address and localhost endpoints always use path style.
        max_attempts: attempts per request, first try included (1..64, default 10).
        profile: named profile from ``~/.aws/credentials`` / ``~/.aws/config``.
        memory_limit_bytes: cap on aws-c-s3's part-buffer pool (0: automatic; else >= 1 GiB).
        access_key_id, secret_access_key, session_token: static credentials.
        ca_file: PEM bundle to trust for a private TLS endpoint.
        s3express: enable S3 Express One Zone (directory buckets).
        stream_read_ahead_bytes: read-ahead window of streaming GETs (0: 4 x part size).
        connect_timeout_ms: TCP connect timeout (0: the CRT's default).
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

    def __post_init__(self) -> None:
        def need_int(name: str, lo: int, hi: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"S3ClientConfig.{name} must be an int, got {type(v).__name__}")
            if not lo <= v <= hi:
                raise ValueError(f"S3ClientConfig.{name} must be between {lo} and {hi}, got {v}")

        need_int("part_size", 5 * MiB, 5 * GiB)
        need_int("max_attempts", 1, 64)
        need_int("stream_read_ahead_bytes", 0, 1 << 48)
        need_int("connect_timeout_ms", 0, 1 << 31)
        need_int("memory_limit_bytes", 0, 1 << 60)
        if self.memory_limit_bytes and self.memory_limit_bytes < GiB:
            raise ValueError("S3ClientConfig.memory_limit_bytes must be 0 (automatic) or at least 1 GiB")
        t = self.throughput_target_gbps
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1000:
            raise ValueError(f"S3ClientConfig.throughput_target_gbps must be in (0, 1000], got {t!r}")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("S3ClientConfig: set both access_key_id and secret_access_key, or neither")
        if self.unsigned and self.access_key_id:
            raise ValueError("S3ClientConfig: unsigned=True cannot be combined with access keys")

    def native_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of ``s3torch._crt.NativeClient`` for this configuration."""
        if self.unsigned:
            creds = "anonymous"
        elif self.access_key_id:
            creds = "static"
        elif self.profile:
            creds = "profile"
        else:
            creds = "default"
        return {
            "force_path_style": self.force_path_style,
            "part_size": self.part_size,
            "throughput_target_gbps": float(self.throughput_target_gbps),
            "max_attempts": self.max_attempts,
            "memory_limit_bytes": self.memory_limit_bytes,
            "credentials": creds,
            "access_key_id": self.access_key_id or "",
            "secret_access_key": self.secret_access_key or "",
            "session_token": self.session_token or "",
            "profile": self.profile or "",
            "ca_file": self.ca_file or "",
            "s3express": self.s3express,
            "stream_read_ahead_bytes": self.stream_read_ahead_bytes,
            "connect_timeout_ms": self.connect_timeout_ms,
        }

    def as_dict(self) -> Dict[str, Any]:
        return asdict(self)
