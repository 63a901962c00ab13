"""BatchWrite: writes a few at a time, all or none (a stand-in client records the deletes)."""

from __future__ import annotations

import threading
import time
from typing import Callable, List

import pytest

from s3torch import _crt
from s3torch._batch_writes import BatchWrite, delete_keys


class Client:
    def __init__(self, refuse: str = "", gone: str = "") -> None:
        self.deleted: List[str] = []
        self.refuse, self.gone = refuse, gone

    def delete_object(self, bucket: str, key: str) -> None:
        if key == self.refuse:
            raise _crt.S3Exception(f"AccessDenied deleting {key}")
        if key == self.gone:
            raise _crt.S3NotFoundError(f"NoSuchKey {key}")
        self.deleted.append(key)


def _ok(key: str, began: List[str]) -> Callable[[], str]:
    def write() -> str:
        began.append(key)
        return key.upper()

    return write


def test_results_come_in_order_and_nothing_is_deleted() -> None:
    client, began = Client(), []
    with BatchWrite(client, "b") as batch:  # type: ignore[arg-type]
        assert batch.run([(k, _ok(k, began)) for k in "abcde"], 3) == list("ABCDE")
    assert sorted(began) == list("abcde") and client.deleted == []


def test_a_failure_ends_the_writes_begun_begins_none_and_deletes_the_written() -> None:
    """One thread: a, b written, c fails, d and e never begin; a and b are deleted."""
    client, began = Client(), []

    def fail() -> str:
        began.append("c")
        raise OSError("injected")

    writes = [("a", _ok("a", began)), ("b", _ok("b", began)), ("c", fail), ("d", _ok("d", began))]
    with pytest.raises(OSError, match="injected"), BatchWrite(client, "b") as batch:  # type: ignore[arg-type]
        batch.run(writes + [("e", _ok("e", began))], 1)
    assert began == ["a", "b", "c"] and client.deleted == ["a", "b"]


def test_the_first_error_is_raised_once_every_write_begun_has_ended() -> None:
    client, ended = Client(), threading.Event()

    def slow() -> str:
        time.sleep(0.2)
        ended.set()
        return "slow"

    def fail() -> str:
        raise OSError("first")

    with pytest.raises(OSError, match="first"), BatchWrite(client, "b") as batch:  # type: ignore[arg-type]
        batch.run([("s", slow), ("f", fail)], 2)
    assert ended.is_set() and client.deleted == ["s"]


def test_files_that_cannot_be_deleted_are_noted_on_the_error() -> None:
    client = Client(refuse="a", gone="b")
    with pytest.raises(OSError) as ei, BatchWrite(client, "bk") as batch:  # type: ignore[arg-type]
        batch.run([("a", lambda: 1), ("b", lambda: 2), ("c", lambda: 3)], 1)
        raise OSError("after the writes: the index PUT failed")
    assert client.deleted == ["c"]  # b was gone already: fine
    notes = getattr(ei.value, "__notes__", [])
    assert notes == ["s3torch: files this save wrote could not be deleted: s3://bk/a"]


def test_delete_keys_notes_what_the_object_is() -> None:
    with pytest.raises(_crt.S3Exception) as ei:
        delete_keys(Client(refuse="x"), "bk", ["w", "x", "y"], "an earlier save's file")  # type: ignore[arg-type]
    assert getattr(ei.value, "__notes__", []) == [
        "s3torch: s3://bk/x is an earlier save's file; delete it, or save again"
    ]
