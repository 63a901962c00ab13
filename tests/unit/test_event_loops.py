"""How many event-loop threads the process's CRT runtime runs: half the cores (aws-c-io's
default) but at least two where there are two cores or more, or S3TORCH_EVENT_LOOP_THREADS.
The threads are counted in a fresh interpreter: the runtime is built once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Dict, Optional

import pytest

from s3torch import _crt

PROBE = """
import collections, os
from s3torch import S3Client, S3ClientConfig, _crt
want = _crt.event_loop_threads()
c = S3Client("us-east-1", endpoint="http://127.0.0.1:1", s3client_config=S3ClientConfig(unsigned=True, max_attempts=1))
try:
    c.head_object("b", "k")  # nothing listens there: this only builds the runtime
except _crt.S3Exception:
    pass
names = collections.Counter(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
# Our group's loops are named AwsEventLoop1..N; aws-c-s3 adds idle groups of its own (file I/O)
# named alike, so count distinct names.
print(want, len([n for n in names if n.startswith("AwsEventLoop")]))
"""


def _probe(threads: Optional[str]) -> subprocess.CompletedProcess:
    env: Dict[str, str] = {k: v for k, v in os.environ.items() if k != "S3TORCH_EVENT_LOOP_THREADS"}
    if threads is not None:
        env["S3TORCH_EVENT_LOOP_THREADS"] = threads
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)


def test_half_the_cores_but_at_least_two() -> None:
    cores = os.cpu_count() or 1
    r = _probe(None)
    assert r.returncode == 0, r.stderr
    want, running = map(int, r.stdout.split())
    assert want == max(2 if cores >= 2 else 1, cores // 2)
    assert running == want


def test_the_variable_sets_the_count() -> None:
    r = _probe("3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["3", "3"]


@pytest.mark.parametrize("bad", ["0", "-1", "257", "two", "2x", " "])
def test_a_malformed_count_is_refused_by_name(bad: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """(Read when the runtime is built: event_loop_threads() reads it on every call.)"""
    monkeypatch.setenv("S3TORCH_EVENT_LOOP_THREADS", bad)
    with pytest.raises(_crt.S3InvalidArgumentError, match="S3TORCH_EVENT_LOOP_THREADS must be a whole number") as e:
        _crt.event_loop_threads()
    assert f"from 1 to 256, got '{bad}'" in str(e.value)
    monkeypatch.setenv("S3TORCH_EVENT_LOOP_THREADS", "256")
    assert _crt.event_loop_threads() == 256
