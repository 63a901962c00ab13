"""``S3MapDataset`` at s3torchconnector's module path (``s3torchconnector.s3map_dataset``)."""

from ._client import S3Client
from ._config import S3ClientConfig
from ._datasets import S3MapDataset
from ._user_agent import UserAgent
from .s3reader import S3Reader, S3ReaderConstructor, S3ReaderConstructorProtocol

__all__ = [
    "S3MapDataset",
    "S3Client",
    "S3ClientConfig",
    "S3Reader",
    "S3ReaderConstructor",
    "S3ReaderConstructorProtocol",
    "UserAgent",
]
