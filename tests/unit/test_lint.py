"""The tree is lint-clean and formatted: ruff (lint and format) over Python, clang-format over
csrc/, each at the version pyproject.toml pins in the test extra, with the settings in
pyproject.toml and .clang-format. `python -m pytest tests` thus enforces them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pinned(tool: str) -> str:
    m = re.search(rf'"{re.escape(tool)}==([^"]+)"', (ROOT / "pyproject.toml").read_text())
    assert m, f"{tool} is not pinned in pyproject.toml's test extra"
    return m.group(1)


def _run(cmd: list) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _clang_format() -> str:
    # The clang-format wheel installs its executable beside this interpreter's scripts.
    exe = Path(sysconfig.get_path("scripts")) / "clang-format"
    found = str(exe) if exe.exists() else shutil.which("clang-format")
    assert found, "clang-format is not installed (pip install '.[test]')"
    return found


def test_ruff_version() -> None:
    r = _run([sys.executable, "-m", "ruff", "--version"])
    assert r.stdout.split() == ["ruff", _pinned("ruff")], r.stdout + r.stderr


def test_ruff_lint() -> None:
    r = _run([sys.executable, "-m", "ruff", "check", "--no-cache", "."])
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format() -> None:
    r = _run([sys.executable, "-m", "ruff", "format", "--check", "--no-cache", "."])
    assert r.returncode == 0, "run `ruff format .`:\n" + r.stdout + r.stderr


def test_clang_format() -> None:
    exe = _clang_format()
    version = _run([exe, "--version"]).stdout
    assert f"version {_pinned('clang-format')}" in version, version
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.suffix in (".h", ".cpp"))
    assert len(files) > 20
    r = _run([exe, "--dry-run", "--Werror", "--style=file", *files])
    assert r.returncode == 0, "run `clang-format -i` on:\n" + r.stdout + r.stderr
