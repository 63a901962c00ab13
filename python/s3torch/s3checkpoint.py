"""``S3Checkpoint`` at s3torchconnector's module path (``s3torchconnector.s3checkpoint``)."""

from ._checkpoint import S3Checkpoint
from ._client import S3Client
from ._config import S3ClientConfig
from .s3reader import S3Reader
from .s3writer import S3Writer

__all__ = ["S3Checkpoint", "S3Client", "S3ClientConfig", "S3Reader", "S3Writer"]
