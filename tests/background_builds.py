"""The suite's two slow native builds, run in the background while the other tests run.

The release wheel (scripts/build_wheel.sh: on a cold machine the AWS CRT with zig, then the
extension) and the sanitizer build of the fuzz target take minutes of CPU, while most of the
suite waits on servers, sleeps through injected outages or counts retries. When a session
collects the tests that need them, tests/conftest.py starts both builds at its start, one
after the other, at the lowest CPU priority (``nice -n 19``: they take only the CPU the other
tests leave idle), and moves those tests to the end of the run. A test that needs a build
waits for it (``result``) and fails with the build's output when it failed.

Each build is the same command the test would run itself; run alone (``pytest
tests/packaging``), a test starts its build in the foreground of that wait.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional


@dataclass
class Build:
    """One build: commands run in order (none: nothing to build), stopping at the first that fails."""

    name: str
    steps: List[List[str]]
    env: Dict[str, str] = field(default_factory=dict)
    cwd: Optional[str] = None
    # The environment it runs in, but for ``env``: the process's when the build was queued
    # (the session's start), not when it begins. A build that began while a test had changed
    # os.environ (HOME and HTTPS_PROXY of a test's own, monkeypatched) ran in that test's
    # environment: the fuzz build then found an empty CRT cache and a closed proxy.
    base_env: Optional[Dict[str, str]] = None


@dataclass
class Outcome:
    returncode: int
    output: str  # stdout and stderr of every step, interleaved

    def tail(self, n: int = 6000) -> str:
        return self.output[-n:]


class _Runner:
    """Runs registered builds one after another on a thread; ``result`` waits for one.

    The thread only waits on child processes; the lock guards ``_outcomes``/``_queue``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: List[Build] = []
        self._outcomes: Dict[str, Outcome] = {}
        self._running: Optional[str] = None
        self._thread: Optional[threading.Thread] = None

    def start(self, builds: List[Build]) -> None:
        with self._lock:
            now = dict(os.environ)
            self._queue.extend(dataclasses.replace(b, base_env=now) for b in builds if b.name not in self._outcomes)
            if self._thread is None and self._queue:
                self._thread = threading.Thread(target=self._run_queue, name="background-builds", daemon=True)
                self._thread.start()

    def _run_queue(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._thread = None
                    self._cond.notify_all()
                    return
                build = self._queue.pop(0)
                self._running = build.name
            outcome = _run(build, nice=True)
            with self._lock:
                self._outcomes[build.name] = outcome
                self._running = None
                self._cond.notify_all()

    def result(self, build: Build, timeout: float) -> Outcome:
        """The outcome of ``build``: waits for it if queued or running, else runs it now."""
        with self._lock:
            queued = any(b.name == build.name for b in self._queue) or self._running == build.name
            if queued and not self._cond.wait_for(lambda: build.name in self._outcomes, timeout=timeout):
                return Outcome(124, f"{build.name}: still building in the background after {timeout:.0f} s")
            if build.name in self._outcomes:
                return self._outcomes[build.name]
        return _run(build, nice=False)


def _run(build: Build, nice: bool) -> Outcome:
    env = {**(os.environ if build.base_env is None else build.base_env), **build.env}
    rc = 0
    with tempfile.TemporaryFile(mode="w+") as log:
        for step in build.steps:
            cmd = (["nice", "-n", "19"] if nice else []) + step
            rc = subprocess.run(cmd, env=env, cwd=build.cwd, stdout=log, stderr=subprocess.STDOUT).returncode
            if rc != 0:
                break
        log.seek(0)
        return Outcome(rc, log.read())


RUNNER = _Runner()
