"""Sequential reader: the whole object, fetched once with parallel ranged GETs straight into
one buffer, then served from memory. Large reads before that go straight into the caller's
memory, each a GET held to the version of the reader's first (s3reader.py)."""

from __future__ import annotations

from typing import Optional

from .. import _crt
from .s3reader import GetObjectInfo, S3Reader

# readinto of at least this many bytes, before the object is buffered, goes straight into
# the caller's buffer.
DIRECT_READINTO_BYTES = 1 << 20


class SequentialS3Reader(S3Reader):
    """Reads the whole object with one (auto-ranged) GET on first read, then serves reads from memory."""

    def __init__(
        self,
        bucket: str,
        key: str,
        get_object_info: GetObjectInfo,
        native: "_crt.NativeClient",
        object_info: Optional["_crt.ObjectInfo"] = None,
    ) -> None:
        super().__init__(bucket, key, get_object_info)
        self._native = native
        self._info = object_info
        self._data: Optional[memoryview] = None

    def _whole(self) -> bytes:
        """The whole object, of one version: the reader's, once a GET pinned it. A size hint
        from a listing older than the object is checked by the core against its answer."""
        whole = self._native.get_bytes(self._bucket, self._key, 0, None, self._size_if_known(), self._etag)
        self._known_size = len(whole)
        self._data = memoryview(whole)  # later reads and seeks are served from it
        return whole

    def _load(self) -> memoryview:
        if self._data is None:
            self._whole()
        assert self._data is not None
        return self._data

    def _read(self, size: Optional[int]) -> bytes:
        if self._data is None and self._pos == 0 and size is None:
            # Whole object, first read: straight into the bytes object we return.
            whole = self._whole()
            self._pos = len(whole)
            return whole
        data = self._load()
        start = min(self._pos, len(data))
        end = len(data) if size is None else min(len(data), start + size)
        self._pos = end if end > start else self._pos
        return bytes(data[start:end])

    def _readinto(self, mv: memoryview) -> int:
        if self._data is None and len(mv) >= DIRECT_READINTO_BYTES:
            return self._first_read(lambda: self._direct_readinto(mv))
        data = self._load()
        start = min(self._pos, len(data))
        n = min(len(mv), len(data) - start)
        mv[:n] = data[start : start + n]
        self._pos += n
        return n

    def _direct_readinto(self, mv: memoryview) -> int:
        # A large read before anything is buffered: GET straight into the caller's memory
        # (no buffer of our own, no copy). The object is buffered only if reads go on.
        size = self._size_if_known()
        if size is not None and self._pos >= size:
            return 0
        try:
            got = self._get_into(mv, self._pos, len(mv))
        except _crt.S3Exception as e:
            if e.http_status == 416:  # at or past the end of the object
                return 0
            raise
        self._pos += got
        return got

    def close(self) -> None:
        """Release the object's bytes; later reads raise ValueError."""
        self._data = None
        super().close()
