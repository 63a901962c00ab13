"""Local files as ``s3torch cp`` reads and writes them, so that neither a file that changes
under the copy nor a disk that fills can crash it or leave a checkpoint that mixes two saves.

Reading (up): a file is held to the version the copy listed (``stamp``: inode, size, mtime),
and read, not memory-mapped (a file that shrinks under a map is a SIGBUS on the next page).
Writing (down): a file is written through a memory map, so it gets its blocks first
(``allocate``: a page the filesystem cannot back is a SIGBUS too), and what the copy wrote is
synced directory by directory (``sync_dirs``) before anything that names it.
"""

from __future__ import annotations

import errno
import functools
import os
from typing import Any, List, Tuple

# errno values of a filesystem out of room for a file: no space, over a quota, over the
# process's file size limit.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

Stamp = Tuple[int, int, int]


class LocalFileChanged(Exception):
    """A local file is not the version the copy listed: written, truncated or replaced."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def stamp(st: os.stat_result) -> Stamp:
    """The version of a file: its inode, size and mtime."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def check_stamp(path: str, version: Stamp, st: os.stat_result) -> None:
    """LocalFileChanged unless ``st`` (of the file at ``path``) is still ``version``."""
    if stamp(st) != version:
        raise LocalFileChanged(path)


def read_full(f: Any, view: memoryview) -> int:
    """Read into all of ``view`` unless the file ends first; the bytes read."""
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def allocate(f: Any, size: int) -> None:
    """Give the open file ``size`` bytes with their disk blocks allocated now. A GET writes
    through a memory map, and a write into a page whose block the filesystem cannot give
    kills the process (SIGBUS, no message, files of full size full of holes): a full disk
    must show here, as an error, before any GET. Linux's fallocate(2) itself, not glibc's
    posix_fallocate, which on a filesystem that cannot allocate ahead (ZFS, some NFS) writes
    into every block first; there the file is sparse, as before."""
    import ctypes  # here, not at import: every verb of the command line imports this module

    fallocate = _libc_fallocate()
    if fallocate is not None and fallocate(f.fileno(), 0, 0, size) == 0:
        return
    err = ctypes.get_errno() if fallocate is not None else errno.ENOSYS
    if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise OSError(err, os.strerror(err))
    f.truncate(size)


@functools.lru_cache(maxsize=None)
def _libc_fallocate() -> Any:
    """libc's fallocate, looked up once, the first time a copy allocates."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).fallocate
    except (AttributeError, OSError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    return fn


def sync_dirs(paths: List[str]) -> None:
    """fsync the directories that hold ``paths``: their entries (new files, renames) on disk."""
    for d in sorted({os.path.dirname(p) for p in paths}):
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        except OSError as e:
            if e.errno != errno.EINVAL:  # a filesystem that cannot sync a directory
                raise
        finally:
            os.close(fd)
