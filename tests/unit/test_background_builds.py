"""tests/background_builds.py: a queued build runs in the environment of the session's start,
not in that of the test running when it begins."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.background_builds import Build, _Runner


def test_a_queued_build_keeps_the_environment_it_was_queued_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3TORCH_BUILD_PROBE", "at-start")
    out = tmp_path / "seen"
    runner = _Runner()
    first = Build("first", [["sleep", "0.5"]])
    second = Build("second", [["sh", "-c", f'printf %s "$S3TORCH_BUILD_PROBE" > {out}']])
    runner.start([first, second])
    monkeypatch.setenv("S3TORCH_BUILD_PROBE", "a-test-changed-it")  # as a test's monkeypatch does
    assert runner.result(second, timeout=60).returncode == 0
    assert out.read_text() == "at-start"
