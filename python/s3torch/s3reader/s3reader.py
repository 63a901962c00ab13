"""S3Reader: the read-only, seekable binary stream over one S3 object.

Subclasses differ in how they fetch (the whole object at once, byte ranges on demand, or
pre-planned DCP item ranges); position, argument checking, the io.BufferedIOBase surface and
the object's version live here once.

One version per reader: a reader's GETs are requests of their own, and the object may be
replaced between two of them. The first GET pins the version that answered (its ETag); every
later GET carries it (If-Match), so a reader of a replaced object fails with
``S3ObjectChangedError`` instead of serving bytes of two versions. A size the reader took from
a listing or a HEAD older than the object, which its first GET proves stale, is replaced by
the answering version's and that first read is made again (``_first_read``).
"""

from __future__ import annotations

import io
from typing import Any, Callable, Optional, Tuple, TypeVar

from .. import _crt
from .._checks import is_int
from .._crt import ObjectInfo

T = TypeVar("T")

GetObjectInfo = Callable[[], ObjectInfo]


def _check_size(size: Optional[int]) -> Optional[int]:
    if size is None:
        return None
    if not is_int(size):
        raise TypeError(f"read size must be an int or None, got {type(size).__name__}")
    return None if size < 0 else size


class _StaleSize(Exception):
    """The reader's first GET answered from a version of another size than the one its read
    was planned with (``_first_read`` makes the read again)."""


class S3Reader(io.BufferedIOBase):
    """A read-only, seekable stream over ``s3://bucket/key``. Not thread-safe.

    A reader pickles (a DataLoader worker returning it, a process pool) as the same object at
    the same position, held to the version it has read, and reads afresh in the process that
    unpickles it, as fsspec's files pickle; a dataset's prefetched reader takes its bytes along.
    Reading in the worker (a dataset's ``transform``) is what makes workers worth having."""

    # The S3Client (and its reader constructor) that made this reader, which a pickled reader
    # is opened again with; set by S3Client.get_object and the datasets.
    _made_by: Optional[Tuple[Any, Any]] = None

    def __init__(self, bucket: str, key: str, get_object_info: GetObjectInfo) -> None:
        super().__init__()
        self._bucket = bucket
        self._key = key
        self._get_object_info = get_object_info
        self._info: Optional[ObjectInfo] = None
        self._pos = 0
        self._native: "_crt.NativeClient"  # set by each subclass
        self._pinned = False  # a GET answered: its version is the reader's
        self._etag = ""  # that version's ETag ("" when the server sends none)
        self._known_size: Optional[int] = None  # that version's size

    # --- identity -------------------------------------------------------------------------
    @property
    def bucket(self) -> str:
        """The bucket of the object read."""
        return self._bucket

    @property
    def key(self) -> str:
        """The key of the object read."""
        return self._key

    @property
    def uri(self) -> str:
        """``s3://bucket/key`` of the object read."""
        return f"s3://{self._bucket}/{self._key}"

    @property
    def size(self) -> int:
        """The object's size in bytes (a HEAD the first time, unless a GET or listing told it);
        fsspec's file objects have it, and libraries that take one read it."""
        return self._size

    def get_object_info(self) -> ObjectInfo:
        """HEAD of the object, fetched once, lazily (or given by a listing)."""
        if self._info is None:
            self._info = self._get_object_info()
        return self._info

    def _size_if_known(self) -> Optional[int]:
        """The object's size without a request: its pinned version's, else the info's (None).
        An info's 0 is not taken: an object listed empty may have been written since, and
        reading it as empty would cost no GET that could say so."""
        if self._known_size is not None:
            return self._known_size
        return int(self._info.size) if self._info is not None and self._info.size else None

    @property
    def _size(self) -> int:
        known = self._size_if_known()
        if known is None:  # no info, or a listing's 0 (above): a HEAD, whose answer is kept
            self._info = self._get_object_info()
            known = self._known_size = int(self._info.size)
        return known

    # --- one version of the object (module docstring) -------------------------------------
    def _get_into(self, dest: memoryview, offset: int, length: int) -> int:
        """GET ``length`` bytes at ``offset`` into ``dest`` (fresh memory: its pages are made
        resident while the GET lands); returns the bytes received. Held to the reader's
        version once it has one; the first GET pins it, and raises ``_StaleSize`` if the size
        the read was planned with is not that version's."""
        return self._landed(self._start_get(dest, offset, length))

    def _start_get(self, dest: memoryview, offset: int, length: int) -> "_crt.GetHandle":
        """``_get_into`` started, not waited for (``_landed`` waits): held to the reader's
        version once it has one. Start no other before the first has landed."""
        return self._native.start_get_into(self._bucket, self._key, dest, offset, length, self._etag)

    def _landed(self, h: "_crt.GetHandle") -> int:
        """Wait for a GET of ``_start_get`` (making fresh pages resident as it lands); the
        bytes received. The reader's first pins its version (``_answered``)."""
        got = h.wait(populate=True)
        self._answered(h.etag, h.object_size)
        return got

    def _answered(self, etag: str, size: int) -> None:
        """A GET of this reader answered from the version ``etag`` of ``size`` bytes (0: not
        said). The first one pins it."""
        if self._pinned:
            return
        self._pinned = True
        self._etag = etag
        if size:
            planned = self._size_if_known()
            self._known_size = size
            if planned is not None and planned != size:
                raise _StaleSize

    def _first_read(self, read: Callable[[], T]) -> T:
        """``read()``; made again, once, if the reader's first GET found the size it was
        planned with stale (the object was replaced after its listing or HEAD, before this
        reader read any of it)."""
        if self._pinned:
            return read()
        pos = self._pos
        try:
            return read()
        except _StaleSize:
            self._pos = pos
            self._forget_bytes()
            return read()

    def _forget_bytes(self) -> None:
        """Drop whatever the reader holds of the object (a stale first read's)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.uri} pos={self._pos}{' closed' if self.closed else ''}>"

    # --- io surface -----------------------------------------------------------------------
    def readable(self) -> bool:
        """True: readers can be read."""
        self._check_open()
        return True

    def seekable(self) -> bool:
        """True: readers can seek."""
        self._check_open()
        return True

    def writable(self) -> bool:
        """False: readers cannot be written."""
        return False

    @property
    def _position(self) -> int:
        # s3torchconnector's private name for the position, which its users' tests read.
        return self._pos

    def tell(self) -> int:
        """The current position in the object."""
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET, /) -> int:
        """Move to ``offset`` relative to ``whence`` (SEEK_SET, SEEK_CUR, SEEK_END); returns the new position."""
        self._check_open()
        if not is_int(offset):
            raise TypeError(f"seek offset must be an int, got {type(offset).__name__}")
        if whence == io.SEEK_SET:
            new = offset
        elif whence == io.SEEK_CUR:
            new = self._pos + offset
        elif whence == io.SEEK_END:
            new = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence!r} (use io.SEEK_SET, SEEK_CUR or SEEK_END)")
        if new < 0:
            raise ValueError(f"{self.uri}: seek to negative position {new}")
        self._pos = new
        return new

    def read(self, size: Optional[int] = None) -> bytes:
        """Up to ``size`` bytes from the current position (all the rest when size is None or negative)."""
        self._check_open()
        n = _check_size(size)
        return self._read(n)

    def peek(self, size: int = 0, /) -> bytes:
        """Bytes at the current position, without moving it: at least one unless at the end,
        up to ``max(size, io.DEFAULT_BUFFER_SIZE)``. ``readline`` and iterating over lines
        look ahead with it, a read per line rather than one per byte."""
        self._check_open()
        if not is_int(size):
            raise TypeError(f"peek size must be an int, got {type(size).__name__}")
        pos = self._pos
        data = self._read(max(size, io.DEFAULT_BUFFER_SIZE))
        self._pos = pos
        return data

    def read1(self, size: Optional[int] = -1) -> bytes:
        """Like read(): one call, at most ``size`` bytes."""
        return self.read(size)

    def readinto(self, buf: Any) -> int:
        """Read into a writable buffer; returns the number of bytes read (0 at the end)."""
        self._check_open()
        mv = memoryview(buf)
        if mv.readonly:
            raise TypeError(f"{self.uri}: readinto needs a writable buffer")
        return self._readinto(mv.cast("B") if mv.format != "B" or mv.ndim != 1 else mv)

    def readinto1(self, buf: Any) -> int:
        """Like readinto()."""
        return self.readinto(buf)

    def readall(self) -> bytes:
        """Every byte from the current position to the end."""
        return self.read()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed reader for {self.uri}")

    # --- pickling (class docstring) -------------------------------------------------------
    def __reduce__(self) -> Tuple[Any, ...]:
        client, constructor = self._made_by_client()
        pinned = self._etag if self._pinned else None
        return (_opened_again, (client, constructor, self._bucket, self._key, pinned, self._known_size, self._pos))

    def _made_by_client(self) -> Tuple[Any, Any]:
        if self.closed:
            raise TypeError(f"cannot pickle {self!r}: it is closed")
        if self._made_by is None:
            raise TypeError(
                f"cannot pickle {self!r}: only a reader made by an S3Client (get_object, the datasets) can be"
            )
        return self._made_by

    # --- the fetch strategy ---------------------------------------------------------------
    def _read(self, size: Optional[int]) -> bytes:
        """Read `size` bytes (None: to the end) at self._pos and advance."""
        raise NotImplementedError

    def _readinto(self, mv: memoryview) -> int:
        raise NotImplementedError


def _opened_again(
    client: Any, constructor: Any, bucket: str, key: str, etag: Optional[str], size: Optional[int], pos: int
) -> S3Reader:
    """A pickled reader (``S3Reader.__reduce__``): the object opened again by ``client``, at
    ``pos``, held to the version ``etag`` when the pickled reader had read one."""
    reader: S3Reader = client.get_object(bucket, key, reader_constructor=constructor)
    if etag is not None:
        reader._pinned, reader._etag, reader._known_size = True, etag, size
    reader._pos = pos
    return reader
