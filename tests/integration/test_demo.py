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
    assert r.stdout.count("save") == 1  # one line for the save, not the writer's too


def test_demo_help_documents_every_option() -> None:
    r = subprocess.run([sys.executable, "-m", "s3torch.demo", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    assert "verifying every tensor and printing GB/s for both." in " ".join(r.stdout.split())
    for option in ("--layers", "--d-model", "--vocab", "--region", "--endpoint", "--bucket", "--keep"):
        line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith(option))
        assert len(line.split()) > 2, line  # option, metavar and help text
