"""_local_files._Populate: the pages of downloaded files made resident ahead of the GETs."""

from __future__ import annotations

import mmap
from typing import Any, List

import pytest

from s3torch import _local_files


def test_it_walks_every_chunk_in_order_then_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: List[int] = []
    monkeypatch.setattr(_local_files._crt, "prefault", lambda chunk, fallback: seen.append(len(chunk)) or True)
    maps = [mmap.mmap(-1, n) for n in (3 * _local_files._Populate.CHUNK + 5, 7)]
    views = [memoryview(m) for m in maps]
    p = _local_files._Populate(views)
    p.stop()
    assert seen == [_local_files._Populate.CHUNK] * 3 + [5, 7]
    for v, m in zip(views, maps):  # every chunk's view released: the maps close
        v.release()
        m.close()


def test_a_kernel_that_cannot_populate_is_asked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Any] = []
    monkeypatch.setattr(_local_files._crt, "prefault", lambda chunk, fallback: calls.append(fallback) or False)
    m = mmap.mmap(-1, 4 * _local_files._Populate.CHUNK)
    v = memoryview(m)
    _local_files._Populate([v]).stop()
    assert calls == [False]  # no write fallback: the GETs write these pages anyway
    v.release()
    m.close()
