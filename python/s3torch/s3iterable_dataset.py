"""``S3IterableDataset`` at s3torchconnector's module path (``s3torchconnector.s3iterable_dataset``)."""

from ._client import S3Client
from ._config import S3ClientConfig
from ._datasets import S3IterableDataset
from ._user_agent import UserAgent
from .s3reader import S3Reader, S3ReaderConstructor, S3ReaderConstructorProtocol

__all__ = [
    "S3IterableDataset",
    "S3Client",
    "S3ClientConfig",
    "S3Reader",
    "S3ReaderConstructor",
    "S3ReaderConstructorProtocol",
    "UserAgent",
]
