"""s3torch: move PyTorch data and checkpoints between memory and S3, fast.

The transfers run in a C++ core on aws-c-s3 (``s3torch._crt``); this package is the policy
and the public API.
"""
from ._crt import (
    S3CancelledError,
    S3Exception,
    S3InvalidArgumentError,
    S3NotFoundError,
    S3PermissionError,
    S3TimeoutError,
)
from ._client import S3Client
from ._config import S3ClientConfig

__version__ = "0.1.0"

__all__ = [
    "S3Client",
    "S3ClientConfig",
    "S3Exception",
    "S3NotFoundError",
    "S3PermissionError",
    "S3TimeoutError",
    "S3InvalidArgumentError",
    "S3CancelledError",
]
