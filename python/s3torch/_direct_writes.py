"""A download written straight to disk: each GET lands in a buffer of a ring, and a writer
thread hands the buffer to the disk with ``O_DIRECT``.

Why not the page cache: a copy down through a memory map (``_local_files``' other path) has
the kernel zero every fresh page-cache page it faults in before the GET overwrites it (``perf``
of ``s3torch cp`` down: a third of its samples in ``zero_user_segments``), and then write each
page back. Here the ring's buffers are resident after their first use, the disk reads them
where they are, nothing is zeroed, nothing is left dirty (the fsyncs at the end flush only
metadata and the device's cache), and a checkpoint larger than memory does not evict the
machine's page cache on its way to disk. A 1 GB checkpoint down: 0.660 -> 0.954 GB/s, 1.31 ->
0.75 CPU-s/GB (2 CPUs, SeaweedFS; ``benchmarks/results/cp-down-verify/run4.md``).

``O_DIRECT`` wants the buffer, the offset and the length aligned to the device's logical block:
the buffers are page aligned (anonymous maps), pieces start at multiples of ``PIECE``, and a
file's last piece, which ends where the file does, goes direct up to its last whole page and
through the page cache for the rest (an ordinary descriptor of the same file; the fsync at the
end covers both). A filesystem without ``O_DIRECT`` (tmpfs, some FUSE) refuses the open with
EINVAL, and a device with larger blocks refuses the write: that file is then written through the
page cache, from the same buffers.

The ring holds as many pieces as aws-c-s3 opens connections for the client's throughput target
(one per 0.4 Gbps: 25 for the default 10 Gbps, 200 MiB), at least ``MIN_RING``, at most
``MAX_RING_BYTES``, each allocated when first needed (a small copy allocates little). A GET
starts only when a buffer is free, so a disk slower than the network holds the copy back
instead of filling memory."""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import math
import mmap
import os
import threading
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from . import _crt
from ._download_pieces import FileReplaced, Piece, cancel_all, count, pieces, reopen, short_read

# What goes direct: whole pages, so that a file's tail, written through the page cache, never
# shares a page with a direct write (whose page, read in for the tail meanwhile, would be written
# back over it); 4 KiB at least, the largest logical block of common devices (a larger one is
# handled by the fallback). 64 KiB on kernels of 64 KiB pages (some aarch64).
ALIGN = max(4096, mmap.PAGESIZE)
PIECE = 8 << 20  # bytes per GET and per buffer of the ring (a multiple of ALIGN)
MIN_RING = 16
MAX_RING_BYTES = 1 << 30
WRITERS = 4  # threads writing to disk at once (a direct write waits for the device)
GBPS_PER_CONNECTION = 0.4  # aws-c-s3's ideal connection count: target / 0.4
_O_DIRECT = getattr(os, "O_DIRECT", 0)  # Linux's; 0 elsewhere


def supported() -> bool:
    """Whether this platform has ``O_DIRECT`` at all (Linux does)."""
    return bool(_O_DIRECT)


def ring_size(throughput_gbps: float) -> int:
    """Buffers of the ring for a client of that throughput target."""
    return max(MIN_RING, min(MAX_RING_BYTES // PIECE, math.ceil(throughput_gbps / GBPS_PER_CONNECTION)))


class _File:
    """One file of the copy while pieces of it are in flight: a direct descriptor, and an
    ordinary one for what cannot go direct, each opened when first needed (a file smaller
    than ALIGN never opens a direct one)."""

    def __init__(self, path: str, ident: Tuple[int, int]) -> None:
        self.path, self.ident = path, ident
        self._lock = threading.Lock()
        self._fds: Dict[bool, Optional[int]] = {}  # direct? -> its descriptor (None: no O_DIRECT here)

    def _fd(self, direct: bool) -> Optional[int]:
        with self._lock:
            if direct not in self._fds:
                try:
                    self._fds[direct] = reopen(self.path, os.O_WRONLY | (_O_DIRECT if direct else 0), self.ident)
                except OSError as e:
                    if not direct or e.errno != errno.EINVAL:  # EINVAL: this filesystem has no O_DIRECT
                        raise
                    self._fds[direct] = None
            return self._fds[direct]

    def write(self, view: memoryview, offset: int) -> None:
        """All of ``view`` at ``offset`` (from a writer thread; pieces never overlap)."""
        head = len(view) & ~(ALIGN - 1)
        fd = self._fd(True) if head else None
        if fd is None:
            head = 0
        else:
            try:
                _pwrite_all(fd, view[:head], offset)
            except OSError as e:
                if e.errno != errno.EINVAL:  # EINVAL: not aligned enough for this device
                    raise
                head = 0
        if head < len(view):
            _pwrite_all(self._fd(False), view[head:], offset + head)

    def close(self) -> None:
        with self._lock:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            if fd is not None:
                os.close(fd)


def _pwrite_all(fd: Optional[int], view: memoryview, offset: int) -> None:
    assert fd is not None
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], offset + done)


def _write(f: _File, buf: mmap.mmap, offset: int, length: int, check: Any) -> None:
    view = memoryview(buf)[:length]
    error: Optional[BaseException] = None
    try:
        if check is not None:
            check.add(offset, view)  # the CRC beside the write, on this thread (GIL released)
        f.write(view, offset)
    except OSError as e:
        error = FileReplaced(f.path) if isinstance(e, FileReplaced) else OSError(e.errno, e.strerror, f.path)
    except Exception as e:
        error = e.with_traceback(None)
    finally:
        view.release()
    # Raised here, without the first traceback: its frames hold slices of the buffer, which
    # could then not be unmapped (BufferError, hiding this error).
    if error is not None:
        raise error


def stream(
    native: Any,
    bucket: str,
    keys: List[Tuple[str, int, str]],
    paths: List[str],
    idents: List[Tuple[int, int]],
    ring: int,
    done_bytes: Callable[[int], None],
    checks: Optional[Dict[str, Any]] = None,
) -> None:
    """GET every piece of every file (``keys[i]``: key, size, ETag; at ``paths[i]``, allocated
    at its full size, ``idents[i]`` its device and inode) into the ring's buffers and write each
    to its file, in order; ``done_bytes`` is called with each piece's length once it is written.
    An error cancels the GETs in flight and waits for the writes in flight before it is raised
    (the buffers are theirs until then)."""
    left = {i: count(size, PIECE) for i, (_, size, _) in enumerate(keys)}
    files: Dict[int, _File] = {}
    free: List[mmap.mmap] = []
    buffers: List[mmap.mmap] = []
    gets: Deque[Tuple[Any, Optional[mmap.mmap], Piece]] = collections.deque()
    writes: Deque[Tuple["concurrent.futures.Future[None]", mmap.mmap, Piece]] = collections.deque()
    pool = concurrent.futures.ThreadPoolExecutor(WRITERS, thread_name_prefix="s3torch-write")

    def land_oldest() -> None:
        handle, buf, piece = gets.popleft()
        key, offset, length, i, _ = piece
        try:
            got = handle.wait()
        finally:
            del handle  # it holds the buffer's view until dropped
        if got != length:
            raise short_read(key, offset, length, got)
        if buf is not None:
            check = checks.get(key) if checks else None
            writes.append((pool.submit(_write, files[i], buf, offset, length, check), buf, piece))

    def collect_oldest() -> None:
        future, buf, piece = writes.popleft()
        future.result()
        free.append(buf)
        done_bytes(piece[2])
        left[piece[3]] -= 1
        if not left[piece[3]]:
            files.pop(piece[3]).close()

    def take() -> mmap.mmap:
        while not free:
            if len(buffers) < ring:
                buffers.append(mmap.mmap(-1, PIECE))
                return buffers[-1]
            if writes and (writes[0][0].done() or not gets):
                collect_oldest()
            else:
                land_oldest()
        return free.pop()

    try:
        for piece in pieces(keys, PIECE):
            key, offset, length, i, etag = piece
            if not length:  # a file of nothing: a GET of nothing, held to the listed version too
                gets.append((native.start_get_into(bucket, key, _crt.HostBuffer(0), None, None, etag), None, piece))
                continue
            buf = take()
            if i not in files:
                files[i] = _File(paths[i], idents[i])
            handle = native.start_get_into(bucket, key, memoryview(buf)[:length], offset, length, etag)
            gets.append((handle, buf, piece))
            del handle
        while gets:
            land_oldest()
        while writes:
            collect_oldest()
    except BaseException:
        cancel_all([g[0] for g in gets])
        gets.clear()
        concurrent.futures.wait([w[0] for w in writes])
        writes.clear()
        raise
    finally:
        pool.shutdown(wait=True)
        for f in files.values():
            f.close()
        for buf in buffers:
            buf.close()
