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
    file's memory map and held to the listed version. Every file gets its disk blocks before
    the first GET; then a file is open and mapped only while a GET of it is in flight (``_Open``),
    so that a copy of any number of files holds at most about WINDOW open. With a ``partial``
    suffix, each file is written under its path plus that suffix and renamed once every file is
    whole (removed if the copy fails). ``durable``: the files and their directories are synced to
    disk before this returns (a checkpoint's copy), each piece's writeback started as soon as it
    lands; without, they are as durable as any file written. ``checks``: object key ->
    a ``FileCheck`` of its stored checksum, handed each piece as it lands and verified once every
    file is whole, before any rename (a mismatch raises ``ChecksumMismatchError``)."""
    native = client._get_native()
    pieces: List[Tuple[str, int, int, int, str]] = []  # (key, offset, length, index in files, ETag)
    # (handle, piece), oldest first. A handle holds its slice of the view (so the map stays
    # open) until the CRT is done with it; dropping the handle lets the slice go.
    inflight: List[Tuple[Any, Tuple[str, int, int, int, str]]] = []
    written: List[str] = []  # under their partial names, in the order of ``files``
    done = allocated = False
    populate = Prefaulter()
    maps = _Open(written, [size for _, size, _ in files], populate, durable)

    def landed(key: str, offset: int, length: int, i: int) -> None:
        check = checks.get(key) if checks else None
        if check is not None and length:
            view = maps.view(i)[offset : offset + length]
            try:
                check.add(offset, view)
            finally:
                view.release()
        if length:
            maps.landed(i, offset, length)

    try:
        for i, (name, size, etag) in enumerate(files):
            path = paths[name] + partial
            os.makedirs(os.path.dirname(path), exist_ok=True)
            written.append(path)
            with open(path, "wb") as f:
                try:
                    allocate(f, size) if size else None
                except OSError as e:
                    if e.errno not in NO_ROOM:
                        raise
                    raise NoRoom(e.errno, path, size) from e
            # A file of nothing gets a GET of nothing all the same: held to the listed version too.
            pieces += [(prefix + name, a, min(PIECE, size - a), i, etag) for a in range(0, size, PIECE)] or [
                (prefix + name, 0, 0, i, etag)
            ]
            maps.expect(i, -(-size // PIECE))
        allocated = True
        for piece in pieces:
            key, offset, length, i, etag = piece
            if length == 0:
                handle = native.start_get_into(bucket, key, _crt.HostBuffer(0), None, None, etag)
            else:
                handle = native.start_get_into(
                    bucket, key, maps.view(i)[offset : offset + length], offset, length, etag
                )
            inflight.append((handle, piece))
            del handle
            if len(inflight) >= WINDOW:
                _finish(inflight.pop(0), progress, landed)
                maps.close_whole()
        while inflight:
            _finish(inflight.pop(0), progress, landed)
            maps.close_whole()
        for check in (checks or {}).values():
            check.verify()
        # On disk before anything that names them (the .metadata, its rename) can be: as
        # torch's FileSystemWriter syncs its files, a copy that reports success survives a
        # power loss, and a crash never leaves a .metadata over files that were not written.
        for path in written if durable else ():
            _fsync_path(path)
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
        populate.stop()
        maps.close_all()
        if not done and (partial or not allocated):  # not allocated: no GET started, they hold nothing
            for path in written:
                if os.path.exists(path):
                    os.remove(path)


class _Open:
    """The files a download writes, each open and memory-mapped from its first piece's GET
    until its last piece lands: a copy of thousands of files (a checkpoint of as many ranks)
    would otherwise hold them all open at once, past a process's file limit (often 1,024) and
    the kernel's map limit (65,530). Each map is queued on the ``Prefaulter`` as it opens and
    taken back before it closes. A ``durable`` copy starts the writeback of each piece as it
    lands, so that the disk writes it while the rest downloads (the fsyncs at the end then
    wait for little, and a copy larger than the kernel's dirty-page threshold is not throttled
    all at once)."""

    def __init__(self, paths: List[str], sizes: List[int], populate: Prefaulter, durable: bool) -> None:
        self._paths, self._sizes, self._populate, self._durable = paths, sizes, populate, durable
        self._left: Dict[int, int] = {}  # file index -> pieces not landed yet
        self._whole: List[int] = []  # files every piece of which has landed, still open
        self._open: Dict[int, Tuple[Any, Any, memoryview]] = {}  # file index -> (file, mmap, view)

    def expect(self, i: int, pieces: int) -> None:
        self._left[i] = pieces

    def view(self, i: int) -> memoryview:
        """File ``i``'s map, opened and queued for populating the first time."""
        entry = self._open.get(i)
        if entry is None:
            f = open(self._paths[i], "r+b")
            try:
                m = mmap.mmap(f.fileno(), self._sizes[i])
            except BaseException:
                f.close()
                raise
            entry = self._open[i] = (f, m, memoryview(m))
            self._populate.add([entry[2]])
        return entry[2]

    def landed(self, i: int, offset: int, length: int) -> None:
        """A piece of file ``i`` is in: a durable copy starts its writeback; after the last
        piece, ``close_whole`` closes the file."""
        if self._durable:
            _start_writeback(self._open[i][0].fileno(), offset, length)
        self._left[i] -= 1
        if self._left[i] == 0:
            self._whole.append(i)

    def close_whole(self) -> None:
        """Close the files whose every piece has landed (called once the finished GETs' handles,
        which hold slices of the maps, are gone)."""
        while self._whole:
            self._close(self._whole.pop())

    def _close(self, i: int) -> None:
        f, m, view = self._open.pop(i)
        try:
            self._populate.discard(view)
            view.release()
            m.close()
        finally:
            f.close()

    def close_all(self) -> None:
        """Those still open (a copy that failed)."""
        for i in list(self._open):
            self._close(i)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing those bytes of the file to disk, and return
    (sync_file_range(2), SYNC_FILE_RANGE_WRITE); nothing where there is none (not Linux)."""
    fn = _libc_sync_file_range()
    if fn is not None:
        fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE)  # advisory: the fsync at the end is the guarantee


_SYNC_FILE_RANGE_WRITE = 2


@functools.lru_cache(maxsize=None)
def _libc_sync_file_range() -> Any:
    """libc's sync_file_range, looked up once."""
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


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
