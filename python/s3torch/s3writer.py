"""S3Writer: a write-only binary stream that uploads one S3 object.

Bytes go from the caller's buffer to the native upload without a copy in Python. Up to one
part is held in memory; beyond that a multipart upload runs with parts in flight while you
keep writing. ``close()`` completes the upload (the object appears atomically then); leaving
a ``with`` block by an exception, or dropping an unclosed writer, aborts it: no object and no
orphaned parts.
"""

from __future__ import annotations

import io
from types import TracebackType
from typing import Any, Optional, Type

from . import _crt


class S3Writer(io.BufferedIOBase):
    """A file-like stream into one S3 object; the object appears, complete, when the writer is closed."""

    def __init__(self, upload: "_crt.Upload", bucket: str, key: str) -> None:
        super().__init__()
        self._upload = upload
        self.bucket = bucket
        self.key = key
        self._pos = 0
        self.etag: Optional[str] = None

    @property
    def uri(self) -> str:
        """``s3://bucket/key`` of the object written."""
        return f"s3://{self.bucket}/{self.key}"

    def writable(self) -> bool:
        """True: writers can be written."""
        return not self.closed

    def readable(self) -> bool:
        """False: writers cannot be read."""
        return False

    def seekable(self) -> bool:
        """False: writers only append."""
        return False

    def write(self, data: Any) -> int:  # type: ignore[override]
        """Write a bytes-like object (bytes, bytearray, memoryview, numpy array, tensor)."""
        if self.closed:
            raise ValueError(f"write to closed writer for {self.uri}")
        n = self._upload.write(data)
        self._pos += n
        return n

    def tell(self) -> int:
        """Bytes written so far."""
        return self._pos

    def flush(self) -> None:
        """Nothing to do: data goes to the upload as parts fill; close() completes the object."""
        if self.closed:
            raise ValueError(f"flush of closed writer for {self.uri}")
        # Parts are uploaded as they fill; there is nothing to push early.

    def close(self) -> None:
        """Complete the upload. Idempotent."""
        if self.closed:
            return
        try:
            self.etag = self._upload.complete() or None
        finally:
            super().close()

    def abort(self) -> None:
        """Abandon the upload: nothing is written and no parts stay behind."""
        if not self.closed:
            try:
                self._upload.abort()
            finally:
                super().close()

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()

    def __del__(self) -> None:
        # Never complete implicitly: an unclosed writer was not finished on purpose.
        try:
            if not self.closed:
                self.abort()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<S3Writer {self.uri} pos={self._pos}{' closed' if self.closed else ''}>"
