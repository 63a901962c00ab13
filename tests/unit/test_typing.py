"""The package type-checks (mypy at the pinned version, with pyproject.toml's settings, against
the installed package and its _crt.pyi stub)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import s3torch

CONFIG = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_mypy_clean(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Package mode finds the package under test where Python imports it from (PEP 561).
    root = os.path.dirname(os.path.dirname(s3torch.__file__))
    env = dict(os.environ)
    if "site-packages" not in root:  # a source tree on PYTHONPATH, not an installed package
        env["MYPYPATH"] = root
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(CONFIG), "--no-incremental"]
    cmd += ["--cache-dir", str(tmp_path / "cache"), "-p", "s3torch"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
