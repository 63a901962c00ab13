"""Compatibility path: s3torchconnector users import the client (and its configuration) from here."""

from ._client import S3Client
from ._config import S3ClientConfig

__all__ = ["S3Client", "S3ClientConfig"]
