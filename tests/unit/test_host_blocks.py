"""HostBuffer memory kept for reuse (csrc/s3torch/block_cache.h): a freed block goes to the next
HostBuffer of the same size, never while anything still views it, within fixed bounds, in
threads and across fork()."""

from __future__ import annotations

import ctypes
import os
import threading

import pytest

from s3torch import _crt

MiB = 1024 * 1024


def _addr(buf: "_crt.HostBuffer") -> int:
    view = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(view)
    finally:
        del view


@pytest.fixture(autouse=True)
def _empty() -> None:
    _crt.drop_kept_host_blocks()
    yield
    _crt.drop_kept_host_blocks()


def test_a_freed_block_goes_to_the_next_buffer_of_its_size() -> None:
    first = _crt.HostBuffer(4 * MiB)
    where = _addr(first)
    del first
    assert _crt.kept_host_blocks() == (1, 4 * MiB)
    other = _crt.HostBuffer(4 * MiB + 4096)  # another size: not that block
    assert _crt.kept_host_blocks() == (1, 4 * MiB)
    again = _crt.HostBuffer(4 * MiB)
    assert _addr(again) == where
    assert _crt.kept_host_blocks() == (0, 0)
    del other, again


def test_a_block_still_viewed_is_not_reused() -> None:
    buf = _crt.HostBuffer(2 * MiB)
    view = memoryview(buf)
    view[:5] = b"hello"
    del buf  # the view holds the buffer: nothing is freed yet
    assert _crt.kept_host_blocks() == (0, 0)
    fresh = _crt.HostBuffer(2 * MiB)
    assert bytes(view[:5]) == b"hello"
    view.release()
    assert _crt.kept_host_blocks() == (1, 2 * MiB)
    del fresh


def test_bounds() -> None:
    many = [_crt.HostBuffer(4 * MiB) for _ in range(10)]
    del many
    blocks, nbytes = _crt.kept_host_blocks()
    assert blocks == _crt.KEPT_HOST_BLOCKS_MAX and nbytes == blocks * 4 * MiB <= _crt.KEPT_HOST_BYTES_MAX
    _crt.drop_kept_host_blocks()
    big = [_crt.HostBuffer(12 * MiB) for _ in range(4)]  # 48 MiB: over the byte bound
    del big
    blocks, nbytes = _crt.kept_host_blocks()
    assert nbytes <= _crt.KEPT_HOST_BYTES_MAX and blocks == _crt.KEPT_HOST_BYTES_MAX // (12 * MiB)
    _crt.drop_kept_host_blocks()
    small = _crt.HostBuffer(_crt.KEPT_HOST_BLOCK_MIN - 1)  # malloc reuses these itself
    huge = _crt.HostBuffer(_crt.KEPT_HOST_BYTES_MAX + 4096)
    del small, huge
    assert _crt.kept_host_blocks() == (0, 0)


def test_threads_taking_and_giving_at_once() -> None:
    errors = []

    def churn(size: int) -> None:
        try:
            for i in range(200):
                b = _crt.HostBuffer(size)
                memoryview(b)[:8] = i.to_bytes(8, "little")
                assert bytes(memoryview(b)[:8]) == i.to_bytes(8, "little")
                del b
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=churn, args=((1 + t % 3) * MiB,)) for t in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    blocks, nbytes = _crt.kept_host_blocks()
    assert blocks <= _crt.KEPT_HOST_BLOCKS_MAX and nbytes <= _crt.KEPT_HOST_BYTES_MAX


def test_a_forked_child_takes_and_gives_blocks() -> None:
    kept = _crt.HostBuffer(3 * MiB)
    del kept
    stop = threading.Event()

    def churn() -> None:  # another thread takes and gives while the process forks
        while not stop.is_set():
            b = _crt.HostBuffer(3 * MiB)
            del b

    t = threading.Thread(target=churn)
    t.start()
    try:
        for _ in range(20):
            pid = os.fork()
            if pid == 0:  # never inherits the lock held: these would hang
                try:
                    b = _crt.HostBuffer(3 * MiB)
                    memoryview(b)[:3] = b"abc"
                    del b
                    c = _crt.HostBuffer(5 * MiB)
                    del c
                    os._exit(0 if _crt.kept_host_blocks()[0] >= 1 else 3)
                finally:
                    os._exit(2)
            _, status = os.waitpid(pid, 0)
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        stop.set()
        t.join()
