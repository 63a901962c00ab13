"""Range-based reader: byte-range GETs on demand. Small reads are served from a buffer of
``buffer_size`` bytes filled from the read position; reads of at least ``buffer_size`` go
straight into the caller's memory (``readinto``) or a new bytes object (``read``). Every GET
after the first is held to the first's version (s3reader.py)."""

from __future__ import annotations

from typing import Optional

from .. import _crt
from .._checks import is_int
from .s3reader import GetObjectInfo, S3Reader

DEFAULT_BUFFER_SIZE = 8 * 1024 * 1024


class RangedS3Reader(S3Reader):
    """Ranged GETs on demand, through a buffer of ``buffer_size`` bytes (see the module docstring)."""

    def __init__(
        self,
        bucket: str,
        key: str,
        get_object_info: GetObjectInfo,
        native: "_crt.NativeClient",
        buffer_size: Optional[int] = None,
        object_info: Optional["_crt.ObjectInfo"] = None,
    ) -> None:
        super().__init__(bucket, key, get_object_info)
        if buffer_size is None:
            buffer_size = DEFAULT_BUFFER_SIZE
        if not is_int(buffer_size) or buffer_size < 0:
            raise ValueError(f"buffer_size must be a non-negative int, got {buffer_size!r}")
        self._native = native
        self._info = object_info
        self._buffer_size = buffer_size
        self._buf: Optional[memoryview] = None  # bytes [buf_start, buf_start + len(buf))
        self._buf_start = 0

    def _fill(self, pos: int) -> memoryview:
        n = min(self._buffer_size, self._size - pos)
        host = _crt.HostBuffer(n)
        got = self._get_into(memoryview(host), pos, n)
        self._buf = memoryview(host)[:got]
        self._buf_start = pos
        return self._buf

    def _copy_out(self, dest: memoryview) -> int:
        """Fill dest from the object at self._pos; returns bytes copied."""
        size = self._size
        want = min(len(dest), max(0, size - self._pos))
        if want == 0:
            return 0
        if want >= self._buffer_size:
            got = self._get_into(dest[:want], self._pos, want)
            self._pos += got
            return got
        done = 0
        while done < want:
            pos = self._pos
            buf = self._buf
            if buf is None or not (self._buf_start <= pos < self._buf_start + len(buf)):
                buf = self._fill(pos)
            off = pos - self._buf_start
            n = min(want - done, len(buf) - off)
            dest[done : done + n] = buf[off : off + n]
            done += n
            self._pos += n
        return done

    def _read(self, size: Optional[int]) -> bytes:
        return self._first_read(lambda: self._read_once(size))

    def _read_once(self, size: Optional[int]) -> bytes:
        total = self._size
        n = max(0, total - self._pos) if size is None else min(size, max(0, total - self._pos))
        if n == 0:
            return b""
        if n >= self._buffer_size and self._pinned:
            # Straight into the bytes object returned; the first GET goes through a buffer
            # instead, as it must tell the version it pins.
            data = self._native.get_bytes(self._bucket, self._key, self._pos, n, None, self._etag)
            self._pos += len(data)
            return data
        out = bytearray(n)
        got = self._copy_out(memoryview(out))
        return bytes(out) if got == n else bytes(memoryview(out)[:got])

    def _readinto(self, mv: memoryview) -> int:
        return self._first_read(lambda: self._copy_out(mv))

    def _forget_bytes(self) -> None:
        self._buf = None

    def close(self) -> None:
        """Release the buffer; later reads raise ValueError."""
        self._buf = None
        super().close()
