"""README command 1's main job, at a tiny model size: it starts its own SeaweedFS, saves,
restores, verifies, and exits 0."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_end_to_end() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "s3torch.demo", "--layers", "1", "--d-model", "128", "--vocab", "1000"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "starting a local SeaweedFS" in r.stdout
    assert "DCP save to s3://" in r.stdout and "GB/s" in r.stdout
    assert "verified: all" in r.stdout and "bit for bit" in r.stdout
