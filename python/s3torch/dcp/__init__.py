"""torch.distributed.checkpoint on S3: storage writer and reader, file system, prefix strategies."""

try:
    import torch.distributed.checkpoint  # noqa: F401
except ImportError as e:  # a bare ModuleNotFoundError would not say what to do
    raise ImportError("s3torch.dcp needs PyTorch with torch.distributed (torch>=2.11,<2.14): pip install torch") from e

from .._catalog import CheckpointInfo, latest_checkpoint, list_checkpoints
from .._remove import CheckpointRemovalError, prune_checkpoints, remove_checkpoint
from ._errors import CheckpointConnectionError, CheckpointCorruptError, CheckpointReadError, StagingError
from ._safe_unpickle import CheckpointUnsafeError
from ._shared_reads import SharedReadError
from ._staging import release_staging_memory
from .s3_file_system import S3FileSystem
from .s3_hf_storage_reader import S3HuggingFaceStorageReader
from .s3_hf_storage_writer import S3HuggingFaceStorageWriter
from .s3_prefix_strategy import (
    BinaryPrefixStrategy,
    DefaultPrefixStrategy,
    HexPrefixStrategy,
    NumericPrefixStrategy,
    RoundRobinPrefixStrategy,
    S3PrefixStrategyBase,
)
from .s3_storage_reader import S3StorageReader
from .s3_storage_writer import S3StorageWriter

__all__ = [
    "S3StorageWriter",
    "S3StorageReader",
    "S3HuggingFaceStorageReader",
    "S3HuggingFaceStorageWriter",
    "S3FileSystem",
    "S3PrefixStrategyBase",
    "DefaultPrefixStrategy",
    "RoundRobinPrefixStrategy",
    "NumericPrefixStrategy",
    "BinaryPrefixStrategy",
    "HexPrefixStrategy",
    "CheckpointCorruptError",
    "CheckpointReadError",
    "CheckpointConnectionError",
    "CheckpointUnsafeError",
    "StagingError",
    "SharedReadError",
    "release_staging_memory",
    "remove_checkpoint",
    "CheckpointRemovalError",
    "list_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "CheckpointInfo",
]
