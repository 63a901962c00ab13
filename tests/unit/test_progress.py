"""s3torch._progress: a bar on a terminal, periodic lines elsewhere, a summary at the end.
Fake streams stand in for the terminal; nothing asserts how long anything took."""

from __future__ import annotations

import io
import logging
import pickle
import re
import sys
import threading
import time

import pytest

from s3torch import _progress
from s3torch._progress import Progress, human


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def wait_for(cond, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 30  # a generous bound on a stuck renderer, not a timing check
    while not cond():
        assert time.monotonic() < deadline, f"no {what}"
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def quiet_logger(monkeypatch):  # type: ignore[no-untyped-def]
    # Lines go to the stream when the s3torch logger is not enabled for INFO.
    monkeypatch.setattr(logging.getLogger("s3torch"), "level", logging.WARNING)
    monkeypatch.setattr(_progress, "BAR_TICK", 0.01)


def test_not_a_terminal_gives_periodic_lines_then_a_summary() -> None:
    stream, summary = FakeStream(tty=False), FakeStream(tty=False)
    p = Progress("DCP load from", "s3://b/c", stream=stream, interval=0.01, summary_to=summary)
    assert p.mode == "lines"
    p.start()
    p.set_total(4_000_000_000)
    p.add(1_000_000_000)
    wait_for(lambda: stream.getvalue().count("\n") >= 2, "periodic lines")
    line = stream.getvalue().splitlines()[0]
    assert line.startswith("s3torch: DCP load from s3://b/c: 1.00 GB of 4.00 GB (25%), ")
    assert "GB/s" in line and "ETA" in line and "\r" not in stream.getvalue()
    msg = p.done()
    assert msg is not None and msg.startswith("s3torch: DCP load from s3://b/c: 1000.0 MB in ")
    assert summary.getvalue() == msg + "\n"
    assert not [t for t in threading.enumerate() if t.name == "s3torch-progress"]
    assert p.n == 0 and p.total is None  # ready for the next operation


def test_lines_go_to_the_logger_when_it_is_enabled(caplog) -> None:  # type: ignore[no-untyped-def]
    stream = FakeStream(tty=False)
    with caplog.at_level(logging.INFO, logger="s3torch"):
        p = Progress("DCP save to", "s3://b/c", stream=stream, interval=0.01)
        p.start()
        p.add(5)
        wait_for(lambda: any("5 B" in r.message for r in caplog.records), "logged line")
        p.done()
    assert stream.getvalue() == ""
    assert caplog.records[-1].message.startswith("s3torch: DCP save to s3://b/c: 0.0 MB in ")


@pytest.mark.parametrize("tqdm", [True, False], ids=["tqdm", "builtin"])
def test_a_terminal_gets_a_live_bar(tqdm: bool, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if not tqdm:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # import fails: the built-in bar
    stream = FakeStream(tty=True)
    p = Progress("cp", "a -> b", stream=stream, total=2_000_000, summary=False)
    assert p.mode == "bar"
    p.start()
    assert isinstance(p._renderer, _progress._TqdmBar if tqdm else _progress._TextBar)
    p.add(1_000_000)
    wait_for(lambda: "50%" in stream.getvalue(), "bar at 50%")
    p.add(1_000_000)
    p.done()
    out = stream.getvalue()
    assert "\r" in out and "cp a -> b" in out and "100%" in out and out.endswith("\n")
    if not tqdm:
        assert re.search(r"\|#{10,30}\| 2.00 MB of 2.00 MB \(100%\)", out), out


def test_disabled_counts_silently_and_pickles_as_settings() -> None:
    stream = FakeStream(tty=True)
    p = Progress("x", "y", enabled=False, stream=stream)
    assert p.mode == "off"
    p.start()
    p.add(3)
    assert p.snapshot()[0] == 3
    q = pickle.loads(pickle.dumps(p))
    assert (q.what, q.target, q.enabled, q.n) == ("x", "y", False, 0)
    q.add(1)
    p.done()
    assert stream.getvalue() == ""
    with pytest.raises(ValueError):
        Progress("x", mode="sometimes")


def test_human_units() -> None:
    assert human(12) == "12 B"
    assert human(1_234_000) == "1.23 MB"
    assert human(4_300_000_000) == "4.30 GB"
    assert human(1200, "objects") == "1,200 objects"
