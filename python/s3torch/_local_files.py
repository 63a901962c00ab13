"""Objects to and from local files, as ``s3torch cp`` and the fsspec filesystem copy them, so
that neither a file that changes under the copy nor a disk that fills can crash it or leave a
checkpoint that mixes two saves.

Reading (up): a file is held to the version the copy listed (``stamp``: inode, size, mtime),
and read, not memory-mapped (a file that shrinks under a map is a SIGBUS on the next page).
Writing (down): every file gets its blocks first (``allocate``: through a memory map, a page
the filesystem cannot back is a SIGBUS too), then a checkpoint's copy is written straight to
disk (``_direct_writes``) and anything else through memory maps (``_get_mapped``), a file open
only while a GET of it is in flight; what the copy wrote is synced directory by directory
(``sync_dirs``) before anything that names it.
"""

from __future__ import annotations

import errno
import functools
import mmap
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Protocol, Tuple

from . import _crt, _direct_writes
from ._download_pieces import cancel_all, count, pieces, reopen, short_read
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
    """The filesystem refused the file at ``filename`` its ``size`` bytes of blocks, or (where
    it allocates no blocks ahead) a write into it (the copy then removed its files).
    ``removed``: what the copy had done with the files it removed (``allocated``, ``written``)."""

    def __init__(self, err: int, path: str, size: int, removed: str = "allocated") -> None:
        super().__init__(err, os.strerror(err), path)
        self.size = size
        self.removed = removed

    def __reduce__(self) -> Any:  # pickled with its own arguments (a worker's error crosses over)
        return (NoRoom, (self.errno, self.filename, self.size, self.removed))

    def why(self) -> str:
        """``PATH: No space left on device (12.58 MB)``."""
        return f"{self.filename}: {self.strerror} ({human(self.size)})"

    def __str__(self) -> str:
        return f"{self.why()}; the copy stopped, and removed the files it had {self.removed}"


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
        upload = client.upload(bucket, key, exclusive=exclusive, size_hint=size)
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
    by ranged GETs held to the listed version. Every file gets its disk blocks before the first
    GET; then a file is open only while a GET of it is in flight, so that a copy of any number of
    files holds only a few open. ``durable`` (a checkpoint's copy): written straight to disk
    (``_direct_writes``: no page cache), and the files and their directories synced before this
    returns; without (or where there is no ``O_DIRECT``), each GET writes into the file's memory
    map (``_get_mapped``), and the files are as durable as any file written. With a ``partial``
    suffix, each file is written under its path plus that suffix and renamed once every file is
    whole (removed if the copy fails). ``checks``: object key -> a ``FileCheck`` of its stored
    checksum, handed each piece as it lands and verified once every file is whole, before any
    rename (a mismatch raises ``ChecksumMismatchError``)."""
    native = client._get_native()
    written: List[str] = []  # under their partial names, in the order of ``files``
    idents: List[Tuple[int, int]] = []  # each one's device and inode: what a GET may write into
    done = allocated = False
    full = False  # the filesystem refused room: whatever was written goes
    try:
        for name, size, _ in files:
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
                st = os.fstat(f.fileno())
                idents.append((st.st_dev, st.st_ino))
        allocated = True
        keys = [(prefix + name, size, etag) for name, size, etag in files]
        if durable and _direct_writes.supported():
            ring = _direct_writes.ring_size(client._config.throughput_target_gbps)
            try:
                _direct_writes.stream(native, bucket, keys, written, idents, ring, progress.add, checks)
            except OSError as e:
                if e.errno not in NO_ROOM or isinstance(e, NoRoom):
                    raise
                # A filesystem that allocates no blocks ahead (then the files are sparse) filled.
                size = files[written.index(e.filename)][1] if e.filename in written else 0
                raise NoRoom(e.errno, e.filename, size, "written") from e
        else:
            _get_mapped(native, bucket, keys, written, idents, progress, checks)
        for check in (checks or {}).values():
            check.verify()
        # On disk before anything that names them (the .metadata, its rename) can be: as
        # torch's FileSystemWriter syncs its files, a copy that reports success survives a
        # power loss, and a crash never leaves a .metadata over files that were not written.
        for path, ident in zip(written, idents) if durable else ():
            _fsync_path(path, ident)
        for path in written if partial else ():
            os.replace(path, path[: -len(partial)])
        if durable:
            sync_dirs(written)
        done = True
    except NoRoom:
        full = True
        raise
    finally:
        if not done and (partial or not allocated or full):  # not allocated: no GET started, they hold nothing
            for path in written:
                if os.path.exists(path):
                    os.remove(path)


def _get_mapped(
    native: Any,
    bucket: str,
    keys: List[Tuple[str, int, str]],
    paths: List[str],
    idents: List[Tuple[int, int]],
    progress: Counter,
    checks: Optional[Dict[str, Any]],
) -> None:
    """Each file (key, size, ETag; at ``paths[i]``) by pieces of PIECE bytes, WINDOW in
    flight, each GET writing straight into its file's memory map (a file open and mapped only
    while a GET of it is in flight: ``_Open``); the path of a copy that is not durable (fsspec's
    ``get``: the file is read next, from the page cache), or where there is no ``O_DIRECT``."""
    # (handle, piece), oldest first. A handle holds its slice of the view (so the map stays
    # open) until the CRT is done with it; dropping the handle lets the slice go.
    inflight: List[Tuple[Any, Tuple[str, int, int, int, str]]] = []
    populate = Prefaulter()
    maps = _Open(paths, idents, [size for _, size, _ in keys], populate)

    def landed(key: str, offset: int, length: int, i: int) -> None:
        check = checks.get(key) if checks else None
        if check is not None and length:
            view = maps.view(i)[offset : offset + length]
            try:
                check.add(offset, view)
            finally:
                view.release()
        if length:
            maps.landed(i)

    try:
        for piece in pieces(keys, PIECE):
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
    except BaseException:
        cancel_all([h for h, _ in inflight])
        raise
    finally:
        inflight.clear()
        populate.stop()
        maps.close_all()


class _Open:
    """The files a download writes through memory maps, each open and mapped from its first
    piece's GET until its last piece lands: a copy of thousands of files (a checkpoint of as
    many ranks) would otherwise hold them all open at once, past a process's file limit (often
    1,024) and the kernel's map limit (65,530). Each file's pieces are PIECE bytes. Each map is
    queued on the ``Prefaulter`` as it opens and taken back before it closes."""

    def __init__(self, paths: List[str], idents: List[Tuple[int, int]], sizes: List[int], populate: Prefaulter) -> None:
        self._paths, self._idents, self._sizes, self._populate = paths, idents, sizes, populate
        self._left = {i: count(size, PIECE) for i, size in enumerate(sizes)}  # pieces not landed yet
        self._whole: List[int] = []  # files every piece of which has landed, still open
        self._open: Dict[int, Tuple[int, Any, memoryview]] = {}  # file index -> (descriptor, mmap, view)

    def view(self, i: int) -> memoryview:
        """File ``i``'s map, opened and queued for populating the first time."""
        entry = self._open.get(i)
        if entry is None:
            fd = reopen(self._paths[i], os.O_RDWR, self._idents[i])
            try:
                m = mmap.mmap(fd, self._sizes[i])
            except BaseException:
                os.close(fd)
                raise
            entry = self._open[i] = (fd, m, memoryview(m))
            self._populate.add([entry[2]])
        return entry[2]

    def landed(self, i: int) -> None:
        """A piece of file ``i`` is in: after the last, ``close_whole`` closes the file."""
        self._left[i] -= 1
        if self._left[i] == 0:
            self._whole.append(i)

    def close_whole(self) -> None:
        """Close the files whose every piece has landed (called once the finished GETs' handles,
        which hold slices of the maps, are gone)."""
        while self._whole:
            self._close(self._whole.pop())

    def _close(self, i: int) -> None:
        fd, m, view = self._open.pop(i)
        try:
            self._populate.discard(view)
            view.release()
            m.close()
        finally:
            os.close(fd)

    def close_all(self) -> None:
        """Those still open (a copy that failed)."""
        for i in list(self._open):
            self._close(i)


def _fsync_path(path: str, ident: Tuple[int, int]) -> None:
    fd = reopen(path, os.O_RDONLY, ident)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
        raise short_read(key, offset, length, got)
    landed(key, offset, length, i)
    progress.add(length)
