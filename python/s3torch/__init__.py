"""s3torch: move PyTorch data and checkpoints between memory and S3, fast.

The transfers run in a C++ core on aws-c-s3 (``s3torch._crt``); this package is the policy
and the public API, which mirrors s3torchconnector's: switching is a change of import.
"""

from ._client import S3Client
from ._config import S3ClientConfig
from ._crt import (
    S3CancelledError,
    S3ConnectionError,
    S3Exception,
    S3InvalidArgumentError,
    S3NotFoundError,
    S3ObjectChangedError,
    S3ObjectExistsError,
    S3PermissionError,
    S3TimeoutError,
)
from ._tar import TarShardError
from ._text import message as _message
from ._uri import parse_s3_uri
from .s3reader import S3Reader, S3ReaderConstructor
from .s3writer import S3Writer

__version__ = "0.1.0"

# Every S3Exception, the core's and those raised in Python (a CheckpointCorruptError naming a
# checkpoint's path, a HeaderError naming a tensor), prints its message shown (_text).
S3Exception.__str__ = _message  # type: ignore[method-assign,assignment]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    # torch-dependent names are imported on first use, so `import s3torch` stays light.
    if name in ("S3MapDataset", "S3IterableDataset"):
        from . import _datasets

        return getattr(_datasets, name)
    if name == "S3TarDataset":
        from ._tar_dataset import S3TarDataset

        return S3TarDataset
    if name == "S3Checkpoint":
        from ._checkpoint import S3Checkpoint

        return S3Checkpoint
    if name == "saved_size":
        from ._saved_size import saved_size

        return saved_size
    raise AttributeError(f"module 's3torch' has no attribute {name!r}")


__all__ = [
    "S3Client",
    "S3ClientConfig",
    "S3Reader",
    "S3ReaderConstructor",
    "S3Writer",
    "S3MapDataset",
    "S3IterableDataset",
    "S3TarDataset",
    "TarShardError",
    "S3Checkpoint",
    "saved_size",
    "S3Exception",
    "S3NotFoundError",
    "S3PermissionError",
    "S3TimeoutError",
    "S3ConnectionError",
    "S3InvalidArgumentError",
    "S3CancelledError",
    "S3ObjectChangedError",
    "S3ObjectExistsError",
    "parse_s3_uri",
]
