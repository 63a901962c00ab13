"""``_crt.wait_any``: the first of several GETs to finish, whatever order they started in (what
the staging ring lands slots by). A proxy holds chosen ranged GETs so the order is known."""

from __future__ import annotations

import os
import time

import pytest

from s3torch import S3InvalidArgumentError, _crt
from tests.conftest import BUCKET, make_client
from tests.faults.proxy import Fault
from tests.forking import fork_and_wait


def test_the_first_to_finish_not_the_first_started(seaweed, proxy, prefix: str) -> None:  # type: ignore[no-untyped-def]
    data = os.urandom(8192)
    make_client(seaweed).put(BUCKET, prefix + "o", data)
    proxy.add(Fault("slow", method="GET", range="^bytes=0-4095$", delay=1.5))
    native = make_client(proxy)._get_native()
    a, b = bytearray(4096), bytearray(4096)
    held = native.start_get_into(BUCKET, prefix + "o", a, 0, 4096)
    quick = native.start_get_into(BUCKET, prefix + "o", b, 4096, 4096)
    assert _crt.wait_any([held, quick]) == 1
    assert quick.wait() == 4096 and bytes(b) == data[4096:]
    # Only the held one left: a timeout returns None, and no wait is longer than asked.
    t0 = time.monotonic()
    assert _crt.wait_any([held], timeout=0.2) is None
    assert 0.15 < time.monotonic() - t0 < 1.2
    assert native.wait_any([held]) == 0  # the same function, reached from a client
    assert held.wait() == 4096 and bytes(a) == data[:4096]
    # Several finished: the first in the list.
    assert _crt.wait_any([quick, held]) == 0 and _crt.wait_any([held, quick]) == 0


def test_a_failed_get_is_finished_and_wait_raises(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    native = make_client(seaweed)._get_native()
    h = native.start_get_into(BUCKET, prefix + "missing", bytearray(10), 0, 10)
    assert _crt.wait_any([h], timeout=30) == 0  # wait_any itself never raises the GET's error
    with pytest.raises(_crt.S3Exception):
        h.wait()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(S3InvalidArgumentError, match="at least one"):
        _crt.wait_any([])
    with pytest.raises(TypeError):
        _crt.wait_any([object()])  # type: ignore[list-item]


def test_in_a_forked_child(seaweed, proxy, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """A parent's GET in flight is refused in the child (it never finishes there); GETs the
    child starts are waited for normally (the child has its own completion signal)."""
    make_client(seaweed).put(BUCKET, prefix + "o", b"x" * 4096)
    proxy.add(Fault("slow", method="GET", range="^bytes=0-99$", delay=3.0))
    client = make_client(proxy)
    native = client._get_native()
    held = native.start_get_into(BUCKET, prefix + "o", bytearray(100), 0, 100)

    def child() -> list:
        out = []
        try:
            _crt.wait_any([held], timeout=1)
        except S3InvalidArgumentError as e:
            out.append("fork" in str(e))
        mine = client._get_native().start_get_into(BUCKET, prefix + "o", bytearray(50), 200, 50)
        out.append(_crt.wait_any([mine], timeout=30))
        out.append(mine.wait())
        return out

    status, text = fork_and_wait(child)
    assert status == 0, text
    assert text == repr([True, 0, 50])
    assert held.wait() == 100
