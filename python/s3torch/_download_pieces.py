"""What both ways of writing a download into local files share (``_direct_writes``: from a
ring of buffers, ``O_DIRECT``; ``_local_files._get_mapped``: through memory maps): the pieces
each file is read in, a file opened again by its path only if it is still the one the copy
allocated, the error of a GET that brought other than its bytes, and cancelling the GETs in
flight. A file is open only while a GET of it is in flight (a copy may hold thousands), so it
is opened by its path again, after its allocation."""

from __future__ import annotations

import errno
import os
from typing import Any, Iterator, List, Tuple

from . import _crt

Piece = Tuple[str, int, int, int, str]  # (key, offset, length, file index, ETag)


def pieces(keys: List[Tuple[str, int, str]], piece: int) -> Iterator[Piece]:
    """(key, offset, length, file index, ETag) of every piece of every file (key, size, ETag),
    in order, made as they are taken (a copy of terabytes has millions); a file of nothing has
    one piece of nothing (its GET holds it to the listed version too)."""
    for i, (key, size, etag) in enumerate(keys):
        if not size:
            yield (key, 0, 0, i, etag)
        for a in range(0, size, piece):
            yield (key, a, min(piece, size - a), i, etag)


def count(size: int, piece: int) -> int:
    """How many pieces of data a file of ``size`` bytes has (none for an empty one)."""
    return -(-size // piece)


class FileReplaced(OSError):
    """Another file is now at the path of one the copy allocated (a swap in DST during the
    copy): nothing is written to it."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.ESTALE, "replaced by another file during the copy", path)

    def __reduce__(self) -> Any:
        return (FileReplaced, (self.filename,))

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


def reopen(path: str, flags: int, ident: Tuple[int, int]) -> int:
    """The file the copy allocated at ``path`` (``ident``: its device and inode then), opened
    again with ``flags``: FileReplaced where another file is there now (a file is open only
    while a GET of it is in flight, so it is opened by its path again)."""
    fd = os.open(path, flags)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != ident:
        os.close(fd)
        raise FileReplaced(path)
    return fd


def short_read(key: str, offset: int, length: int, got: int) -> Exception:
    """A ranged GET that brought other than the bytes asked for."""
    return _crt.S3Exception(f"{key}: expected {length} bytes at offset {offset}, got {got} (changed during the copy?)")


def cancel_all(handles: List[Any]) -> None:
    """Cancel the GETs, then wait for each to end. In a frame of its own: a loop variable left
    holding a handle would hold its slice of the destination (a ring buffer, a file's map),
    which could then not be unmapped (BufferError, hiding the error being raised)."""
    for h in handles:
        h.cancel()
    for h in handles:
        try:
            h.wait()
        except Exception:
            pass
