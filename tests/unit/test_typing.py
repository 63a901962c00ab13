"""The package type-checks (mypy, against the installed package and its _crt.pyi stub)."""
from __future__ import annotations

import os
import subprocess
import sys

import s3torch


def test_mypy_clean() -> None:
    pkg = os.path.dirname(s3torch.__file__)
    r = subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--python-version",
                        f"{sys.version_info.major}.{sys.version_info.minor}", "--no-incremental", pkg],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
