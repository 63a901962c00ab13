"""fsspec's async interface on s3torch's filesystem: what ``fsspec.filesystem("s3torch",
asynchronous=True)`` (and so zarr 3, for an ``s3torch://`` store URL) gets.

Reads of objects and of plain ranges (``_cat_file``, zarr's chunk reads) and writes of objects
of at most a part (``_pipe_file``, zarr's chunk writes) run on the event loop itself: the engine
starts the request at once and, when it finishes, writes to an eventfd the loop watches
(``_crt.CompletionPipe``, one per loop), whose callback takes the bytes or the ETag. No thread
waits on them; through the pool below, each cost two thread switches more (zarr 3, 256 chunks of
250 KB: about 10% of the client's CPU). An object larger than a part hands its copy and its rest
to a pool thread, which makes the rest's fresh pages resident first (as a waiting thread does):
on the loop, their faults landed in the CRT's thread (chunks of 16 MiB: 1.3x the CPU).

Every other call (and a read or write the engine cannot do alone: a negative offset, a range to
the end, a multipart upload, a write inside a transaction) runs the synchronous filesystem's
method on a thread of a pool of this module's own (``THREADS``), as fsspec's
``AsyncFileSystemWrapper`` does, but not on the event loop's default executor, whose
``min(32, CPUs + 4)`` threads bounded the requests in flight: zarr's 10 chunk reads at a time
ran 6 at once on 2 CPUs.

The pool and the loops' pipes are made on first use and dropped in a forked child (its threads
and its parent's transfers are not there).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, Optional, Tuple

from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

from .. import _crt
from .filesystem import _CLIP_ABOVE, _create_only, _starts_past_the_end

THREADS = 64  # calls of async callers running at once (each mostly waiting, the GIL released)

_pool: Optional[ThreadPoolExecutor] = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(THREADS, thread_name_prefix="s3torch-fsspec-async")
        return _pool


class _LoopOps:
    """The requests in flight on one event loop: a pipe the engine posts a token to as each
    finishes, and each token's operation (a ``_crt.BytesGet`` or ``BytesPut``) with the future
    it settles."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # No reference to the loop: it is this one's key in _loops, and a closed loop (each
        # asyncio.run makes one) must be able to go, and its pipe's fd with it.
        self.pipe = _crt.CompletionPipe()
        self.ops: Dict[int, Tuple[Any, "asyncio.Future[Any]"]] = {}
        self.tokens = 0
        loop.add_reader(self.pipe.fd, self._ready)

    def _ready(self) -> None:
        for token in self.pipe.take():
            entry = self.ops.get(token)
            if entry is None:  # never: one request of an operation is in flight at a time
                continue
            op, fut = entry
            if fut.done():  # cancelled: this was the cancelled request finishing
                del self.ops[token]
                continue
            if op.heavy_next():  # more than a part: the copy and the rest on a thread, as before
                del self.ops[token]
                op.detach()
                try:
                    _settle(fut, asyncio.get_running_loop().run_in_executor(_executor(), op.result))
                except RuntimeError as e:  # the pool shut down (interpreter exit)
                    fut.set_exception(e)
                continue
            try:
                got = op.step()  # the result; or None, the next request started (same token)
            except Exception as e:
                del self.ops[token]
                fut.set_exception(e)
                continue
            if got is not None:
                del self.ops[token]
                fut.set_result(got)

    async def run(self, op: Any) -> Any:
        token, self.tokens = self.tokens, self.tokens + 1
        fut: "asyncio.Future[Any]" = asyncio.get_running_loop().create_future()
        self.ops[token] = (op, fut)  # kept until its last request has finished
        op.notify(self.pipe, token)
        _populate(op)
        try:
            return await fut
        except asyncio.CancelledError:
            op.cancel()  # its finish still arrives, and lets go of it
            raise


def _settle(fut: "asyncio.Future[Any]", by: "asyncio.Future[Any]") -> None:
    """``fut`` gets ``by``'s outcome when it has one (unless cancelled meanwhile)."""

    def copy(done: "asyncio.Future[Any]") -> None:
        if fut.done():
            return
        if done.cancelled():
            fut.cancel()
        elif done.exception() is not None:
            fut.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            fut.set_result(done.result())

    by.add_done_callback(copy)


def _populate(op: Any) -> None:
    """A read of fresh memory of 4 MiB or more: its pages made resident ahead of the GET on a
    pool thread, as a thread waiting on it would (else they fault in the CRT's event-loop
    thread; zarr chunks of 16 MiB took 1.3x the CPU)."""
    if op.wants_populate():
        try:
            asyncio.get_running_loop().run_in_executor(_executor(), op.populate)
        except RuntimeError:  # the pool shut down (interpreter exit): the GET goes on without
            pass


_loops: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Optional[_LoopOps]]" = weakref.WeakKeyDictionary()


def _loop_ops() -> Optional[_LoopOps]:
    """This loop's operations; None where the loop cannot watch a file descriptor (Windows'
    proactor loops): everything then takes the pool."""
    loop = asyncio.get_running_loop()
    if loop not in _loops:
        try:
            _loops[loop] = _LoopOps(loop)
        except NotImplementedError:
            _loops[loop] = None
    return _loops[loop]


def _forget_pool() -> None:  # in a fork()ed child: the parent's threads and transfers are not there
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()
    _loops.clear()


os.register_at_fork(after_in_child=_forget_pool)


def _on_pool(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` (a synchronous filesystem call) as a coroutine run on the pool."""

    @functools.wraps(method)
    async def call(*args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_executor(), functools.partial(method, *args, **kwargs))

    return call


class AsyncFile:
    """A file of the synchronous filesystem (``open``'s) for async callers: ``read``,
    ``write`` and ``close`` as coroutines on the pool; ``async with`` closes it."""

    def __init__(self, f: Any) -> None:
        self.f = f

    async def read(self, length: int = -1) -> bytes:
        return await _on_pool(self.f.read)(length)

    async def write(self, data: bytes) -> int:
        return await _on_pool(self.f.write)(data)

    async def close(self) -> None:
        await _on_pool(self.f.close)()

    def seek(self, loc: int, whence: int = 0) -> int:
        return self.f.seek(loc, whence)

    def tell(self) -> int:
        return self.f.tell()

    async def __aenter__(self) -> "AsyncFile":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


class S3TorchAsyncFileSystem(AsyncFileSystemWrapper):  # type: ignore[misc]
    """A :class:`~s3torch.fsspec.S3TorchFileSystem` (``sync_fs``) for async callers: every
    public call as a coroutine (``_cat_file``, ``_pipe_file``, ``_ls``, ...) on the pool of
    this module, fsspec's async helpers (``_cat``, ``_walk``, ...) over them, and
    ``open_async`` (an :class:`AsyncFile`)."""

    async def _cat_file(
        self, path: str, start: Optional[int] = None, end: Optional[int] = None, **kwargs: Any
    ) -> bytes:
        """``cat_file`` as a coroutine: a whole object or a plain range (``0 <= start``, ``end``
        given) read on the event loop (this module's docstring); anything else on the pool."""
        ops = _loop_ops()
        whole = start is None and end is None
        plain = start is not None and end is not None and 0 <= start
        if plain and end - start > _CLIP_ABOVE:  # type: ignore[operator]
            plain = False  # clipped by a HEAD first, as the synchronous call does
        if kwargs or ops is None or not (whole or plain):
            return await _on_pool(self.sync_fs.cat_file)(path, start, end, **kwargs)  # type: ignore[no-any-return]
        bucket, key = self.sync_fs._object_path(path, "cat_file")
        if plain and end <= start:  # type: ignore[operator]
            return b""
        native = self.sync_fs.client._get_native()
        length = None if whole else end - start  # type: ignore[operator]
        try:
            return await ops.run(native.start_bytes(bucket, key, start or 0, length))  # type: ignore[no-any-return]
        except _crt.S3Exception as e:
            if not whole and _starts_past_the_end(e):
                return b""
            raise

    async def _pipe_file(self, path: str, value: Any, mode: str = "overwrite", **kwargs: Any) -> None:
        """``pipe_file`` as a coroutine: up to a part, one PutObject on the event loop; more (a
        multipart upload), inside a transaction, or with other arguments, on the pool."""
        ops = _loop_ops()
        if not kwargs and ops is not None and not self.sync_fs._intrans:
            bucket, key = self.sync_fs._object_path(path, "pipe_file")
            exclusive = _create_only(mode)
            op = self.sync_fs.client._get_native().start_put(bucket, key, value, exclusive=exclusive)
            if op is not None:
                await ops.run(op)
                return
        await _on_pool(self.sync_fs.pipe_file)(path, value, mode, **kwargs)

    async def open_async(self, path: str, mode: str = "rb", **kwargs: Any) -> AsyncFile:
        """The file ``sync_fs.open`` opens, for async reads or writes."""
        return AsyncFile(await _on_pool(self.sync_fs.open)(path, mode, **kwargs))

    def _wrap_all_sync_methods(self) -> None:
        for name in dir(self.sync_fs):
            if name.startswith("_") or name in ("open", "cat_file", "pipe_file"):  # their own, above
                continue
            if isinstance(inspect.getattr_static(self.sync_fs, name), property):
                continue
            method = getattr(self.sync_fs, name)
            if callable(method) and not inspect.iscoroutinefunction(method) and not inspect.isgeneratorfunction(method):
                setattr(self, f"_{name}", _on_pool(method))


__all__ = ["AsyncFile", "S3TorchAsyncFileSystem", "THREADS"]
