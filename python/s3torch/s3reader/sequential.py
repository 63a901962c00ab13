"""Sequential reader: an object of known size up to ``readahead.WHOLE_MAX`` is fetched whole
once, with parallel ranged GETs straight into one buffer, then served from memory; large reads
before that go straight into the caller's memory. A larger object, or one of a size nobody
told the reader, is read through bounded segments and read-ahead (readahead.py), so
``torch.load`` of a checkpoint of any size takes the storages it fills and a bounded window,
not the whole file besides. Every GET after the first is held to its version (s3reader.py)."""

from __future__ import annotations

from typing import Optional

from .. import _crt
from . import readahead
from .readahead import ReadAhead
from .s3reader import GetObjectInfo, S3Reader


class SequentialS3Reader(S3Reader):
    """Reads an object of known size up to ``readahead.WHOLE_MAX`` whole, with one (auto-ranged)
    GET on first read, then serves reads from memory; others through read-ahead segments."""

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
        self._ahead: Optional[ReadAhead] = None  # segments, for objects not held whole

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

    def _segmented(self) -> Optional[ReadAhead]:
        """The read-ahead segments, when this object is not (to be) held whole: it is larger
        than ``WHOLE_MAX`` or its size is not known before the first read."""
        if self._ahead is None and self._data is None:
            size = self._size_if_known()
            if size is None or size > readahead.WHOLE_MAX:
                self._ahead = ReadAhead(self)
        return self._ahead

    def _read(self, size: Optional[int]) -> bytes:
        if self._data is None and self._ahead is None and self._pos == 0 and size is None:
            # Whole object, first read: straight into the bytes object we return.
            whole = self._whole()
            self._pos = len(whole)
            return whole
        ahead = self._segmented()
        if ahead is not None:
            if size is not None:
                small = ahead.read(self._pos, size)  # inside the last read's segment
                if small is not None:
                    self._pos += size
                    return small
            return self._first_read(lambda: self._read_segmented(size))
        data = self._load()
        start = min(self._pos, len(data))
        end = len(data) if size is None else min(len(data), start + size)
        self._pos = end if end > start else self._pos
        return bytes(data[start:end])

    def _read_segmented(self, size: Optional[int]) -> bytes:
        ahead = self._segmented()
        if ahead is None:  # a stale first read found the object small enough to hold whole
            return self._read(size)
        if size is None:
            size = max(0, self._size - self._pos)
        out = bytearray(size)
        got = self._readinto_segmented(memoryview(out))
        return bytes(out) if got == size else bytes(memoryview(out)[:got])

    def _readinto(self, mv: memoryview) -> int:
        ahead = self._segmented()
        if ahead is not None:
            return self._first_read(lambda: self._readinto_segmented(mv))
        if self._data is None and len(mv) >= readahead.DIRECT_MIN:  # before it is buffered: straight in
            return self._first_read(lambda: self._direct_readinto(mv))
        data = self._load()
        start = min(self._pos, len(data))
        n = min(len(mv), len(data) - start)
        mv[:n] = data[start : start + n]
        self._pos += n
        return n

    def _readinto_segmented(self, mv: memoryview) -> int:
        ahead = self._segmented()
        if ahead is None:  # a stale first read found the object small enough to hold whole
            return self._readinto(mv)
        got = ahead.readinto(mv, self._pos)
        self._pos += got
        return got

    def _forget_bytes(self) -> None:
        # A stale first read (s3reader.py): the size it was planned with decides again.
        if self._ahead is not None:
            self._ahead.close()
        self._ahead = None

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
        self._forget_bytes()
        super().close()
