"""Every script in examples/ runs to completion against SeaweedFS, configured only through the
environment (as a user would after `python -m s3torch serve`), and leaves its prefix empty."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from tests.conftest import BUCKET, make_client

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_runs(seaweed, script: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(
        AWS_ENDPOINT_URL=seaweed.endpoint,
        AWS_REGION=REGION,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_EC2_METADATA_DISABLED="true",
        S3TORCH_BUCKET=BUCKET,
    )
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip(), "each example says what it did"
    left = [o.key for page in make_client(seaweed).list_objects(BUCKET, "examples/") for o in page.object_info]
    assert left == []


def test_every_example_is_tested() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == {
        "dataloader.py",
        "dcp_async_save.py",
        "dcp_resume.py",
        "dcp_save_load.py",
        "lightning_checkpoint.py",
    }
