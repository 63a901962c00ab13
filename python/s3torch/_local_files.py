"""Objects to and from local files, as ``s3torch cp`` and the fsspec filesystem copy them, so
that neither a file that changes under the copy nor a disk that fills can crash it or leave a
checkpoint that mixes two saves.

Reading (up): a file is held to the version the copy listed (``stamp``: inode, size, mtime),
and read, not memory-mapped (a file that shrinks under a map is a SIGBUS on the next page).
Writing (down): a file is written through a memory map, so it gets its blocks first
(``allocate``: a page the filesystem cannot back is a SIGBUS too), and what the copy wrote is
synced directory by directory (``sync_dirs``) before anything that names it.
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Tuple

from . import _crt
from ._prefault import Prefaulter
from ._progress import human

if TYPE_CHECKING:
    from ._client import S3Client

PIECE = 64 << 20  # download: bytes per ranged GET handed to the CRT (it splits them into parts)
WINDOW = 16  # download: pieces in flight at once, across files
CHUNK = 16 << 20  # upload: bytes per write() into a multipart upload

# errno values of a filesystem out of room for a file: no space, over a quota, over the
# process's file size limit.
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

Stamp = Tuple[int, int, int]


class Counter(Protocol):
    """What a copy reports its bytes to (a ``Progress``, or an fsspec callback's adapter)."""

    def add(self, n: int) -> None: ...


class NoRoom(OSError):
    """The filesystem refused the file at ``filename`` its ``size`` bytes of blocks (the copy
    then removed the files it had only allocated)."""

    def __init__(self, err: int, path: str, size: int) -> None:
        super().__init__(err, os.strerror(err), path)
        self.size = size

    def __reduce__(self) -> Any:  # pickled with its own arguments (a worker's error crosses over)
        return (NoRoom, (self.errno, self.filename, self.size))

    def why(self) -> str:
        """``PATH: No space left on device (12.58 MB)``."""
        return f"{self.filename}: {self.strerror} ({human(self.size)})"

    def __str__(self) -> str:
        return f"{self.why()}; the copy stopped, and removed the files it had only allocated"


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


def put_file(
    client: "S3Client",
    bucket: str,
    key: str,
    path: str,
    version: Stamp,
    progress: Counter,
    exclusive: bool = False,
) -> None:
    """Upload the file at ``path``, which must stay ``version`` (``stamp``) from before
    its first byte is read until after its last: read (not memory-mapped, where a file that
    shrinks under the copy is a SIGBUS) a chunk at a time into one buffer. ``exclusive``:
    create only (``S3Client.put_object``'s)."""
    try:
        f = open(path, "rb", buffering=0)
    except FileNotFoundError as e:  # removed since the listing
        raise LocalFileChanged(path) from e
    with f:
        check_stamp(path, version, os.fstat(f.fileno()))  # the file opened is the one listed
        size = version[1]
        if size == 0:
            client.put(bucket, key, b"", exclusive=exclusive)
            return
        buf = memoryview(bytearray(min(CHUNK, size)))
        upload = client.upload(bucket, key, exclusive=exclusive)
        try:
            for a in range(0, size, CHUNK):
                n = min(CHUNK, size - a)
                if read_full(f, buf[:n]) != n:  # shorter than listed: truncated meanwhile
                    raise LocalFileChanged(path)
                upload.write(buf[:n])  # returns once the bytes are in the upload's part buffers
                progress.add(n)
            check_stamp(path, version, os.fstat(f.fileno()))  # written meanwhile, whatever its size
            upload.complete()
        except BaseException:
            upload.abort()
            raise


def get_files(
    client: "S3Client",
    bucket: str,
    prefix: str,
    paths: Dict[str, str],
    files: List[Tuple[str, int, str]],
    progress: Counter,
    partial: str = "",
    durable: bool = True,
    checks: Optional[Dict[str, Any]] = None,
) -> None:
    """Every file (name, size, ETag as listed; at ``paths[name]``, checked by ``local_path``),
    by pieces of PIECE bytes, WINDOW of them in flight, each GET writing straight into the
    file's memory map and held to the listed version. With a ``partial`` suffix, each file is
    written under its path plus that suffix and renamed once every file is whole (removed if
    the copy fails). ``durable``: the files and their directories are synced to disk before
    this returns (a checkpoint's copy); without, they are as durable as any file written.
    ``checks``: object key -> a ``FileCheck`` of its stored checksum, handed each piece as it
    lands and verified once every file is whole, before any rename (a mismatch raises
    ``ChecksumMismatchError``)."""
    native = client._get_native()
    maps: List[Tuple[Any, Any, Any]] = []  # (file, mmap, memoryview), closed at the end
    pieces: List[Tuple[str, int, int, int, str]] = []  # (key, offset, length, index in maps, ETag)
    # (handle, piece), oldest first. A handle holds its slice of the view (so the map stays
    # open) until the CRT is done with it; dropping the handle lets the slice go.
    inflight: List[Tuple[Any, Tuple[str, int, int, int, str]]] = []
    written: List[str] = []  # under their partial names
    done = allocated = False
    populate: Optional[Prefaulter] = None

    def landed(key: str, offset: int, length: int, i: int) -> None:
        check = checks.get(key) if checks else None
        if check is not None and length:
            view = maps[i][2][offset : offset + length]
            try:
                check.add(offset, view)
            finally:
                view.release()

    try:
        for name, size, etag in files:
            path = paths[name] + partial
            os.makedirs(os.path.dirname(path), exist_ok=True)
            written.append(path)
            f = open(path, "wb+")
            if size == 0:  # a GET of nothing all the same: held to the listed version too
                f.close()
                pieces.append((prefix + name, 0, 0, -1, etag))
                continue
            try:
                allocate(f, size)
            except OSError as e:
                f.close()
                if e.errno not in NO_ROOM:
                    raise
                raise NoRoom(e.errno, path, size) from e
            m = mmap.mmap(f.fileno(), size)
            maps.append((f, m, memoryview(m)))
            pieces += [(prefix + name, a, min(PIECE, size - a), len(maps) - 1, etag) for a in range(0, size, PIECE)]
        allocated = True
        # The files' pages made resident ahead of the GETs, on a thread of its own, so that the
        # event-loop threads copying each response into a map do not take the faults (and the
        # page-cache allocations) one at a time: s3torch cp down of a 1 GB checkpoint 0.66-0.68
        # -> 0.76 GB/s at 1.3 -> 1.05 CPU-s/GB (2 CPUs, SeaweedFS). Stopped before the maps close.
        populate = Prefaulter([m[2] for m in maps])
        for piece in pieces:
            key, offset, length, i, etag = piece
            if i < 0:
                handle = native.start_get_into(bucket, key, _crt.HostBuffer(0), None, None, etag)
            else:
                handle = native.start_get_into(bucket, key, maps[i][2][offset : offset + length], offset, length, etag)
            inflight.append((handle, piece))
            del handle
            if len(inflight) >= WINDOW:
                _finish(inflight.pop(0), progress, landed)
        while inflight:
            _finish(inflight.pop(0), progress, landed)
        for check in (checks or {}).values():
            check.verify()
        # On disk before anything that names them (the .metadata, its rename) can be: as
        # torch's FileSystemWriter syncs its files, a copy that reports success survives a
        # power loss, and a crash never leaves a .metadata over files that were not written.
        for f, _, _ in maps if durable else ():
            os.fsync(f.fileno())
        for path in written if partial else ():
            os.replace(path, path[: -len(partial)])
        if durable:
            sync_dirs(written)
        done = True
    except BaseException:
        _cancel(inflight)
        raise
    finally:
        inflight.clear()
        if populate is not None:
            populate.stop()
        for f, m, view in maps:
            view.release()
            m.close()  # writes the pages back (MAP_SHARED) as the process ends at the latest
            f.close()
        if not done and (partial or not allocated):  # not allocated: no GET started, they hold nothing
            for path in written:
                if os.path.exists(path):
                    os.remove(path)


def _cancel(inflight: List[Tuple[Any, Tuple[str, int, int, int, str]]]) -> None:
    """Cancel the GETs still in flight and wait for each to end. In a frame of its own: a
    loop variable left holding a handle (and its slice of a file's map) would keep the map
    from closing (BufferError, hiding the error being raised)."""
    for h, _ in inflight:
        h.cancel()
        try:
            h.wait()
        except Exception:
            pass


def _finish(
    entry: Tuple[Any, Tuple[str, int, int, int, str]],
    progress: Counter,
    landed: Callable[[str, int, int, int], None],
) -> None:
    handle, (key, offset, length, i, _) = entry
    try:
        got = handle.wait()
    finally:
        # A failed GET's handle holds a slice of the file's map: let it go here, not with the
        # traceback, so the caller can close the map (else BufferError hides the error).
        del entry, handle
    if got != length:
        raise _crt.S3Exception(
            f"{key}: expected {length} bytes at offset {offset}, got {got} (changed during the copy?)"
        )
    landed(key, offset, length, i)
    progress.add(length)
