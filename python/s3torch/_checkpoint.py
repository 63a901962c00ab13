"""S3Checkpoint: readers and writers for torch.save / torch.load to s3:// URIs."""

from __future__ import annotations

from typing import Optional

from ._client import S3Client
from ._config import S3ClientConfig
from ._uri import parse_s3_uri
from .s3reader import S3Reader
from .s3reader.constructor import ReaderConstructor
from .s3writer import S3Writer


class S3Checkpoint:
    """``torch.save(obj, checkpoint.writer(uri))`` and ``torch.load(checkpoint.reader(uri))``."""

    def __init__(
        self,
        region: Optional[str] = None,
        endpoint: Optional[str] = None,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
    ) -> None:
        self.endpoint = endpoint
        self._client = S3Client(region, endpoint=endpoint, s3client_config=s3client_config)
        self.region = self._client.region
        self._reader_constructor = reader_constructor

    def reader(self, s3_uri: str) -> S3Reader:
        """A reader of the object at ``s3_uri`` (for torch.load)."""
        bucket, key = parse_s3_uri(s3_uri, need_key=True)
        return self._client.get_object(bucket, key, reader_constructor=self._reader_constructor)

    def writer(self, s3_uri: str, *, size_hint: Optional[int] = None) -> S3Writer:
        """A writer to the object at ``s3_uri`` (for torch.save); the object appears when it is closed.

        ``size_hint``: about the bytes it will hold, for a checkpoint past the 78.1 GiB that S3's
        10,000 parts of the default 8 MiB hold (``S3Client.put_object``'s). ``torch.save`` of
        a state dict: ``s3torch.saved_size(state_dict)`` estimates it without reading a byte."""
        bucket, key = parse_s3_uri(s3_uri, need_key=True)
        return self._client.put_object(bucket, key, size_hint=size_hint)
