"""``python -m s3torch serve``: a user's local S3. Started as a user would, its printed
settings used with s3torch, then stopped with SIGTERM: it must exit 0 promptly and leave
no server process, temporary directory or socket behind."""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List

import pytest

from s3torch import S3Client, S3ClientConfig


def _children(pid: int) -> List[int]:
    out: List[int] = []
    for task in glob.glob(f"/proc/{pid}/task/*/children"):
        out += [int(c) for c in Path(task).read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_serve_prints_working_settings_and_cleans_up_on_sigterm() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3torch", "serve", "--bucket", "serve-test"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        printed = []
        assert proc.stdout is not None
        for line in proc.stdout:  # until the last line of the banner
            printed.append(line)
            if "SIGTERM stops the server" in line:
                break
        text = "".join(printed)
        if "SIGTERM stops the server" not in text:  # it ended before its banner: say why
            proc.kill()
            assert proc.stderr is not None
            pytest.fail(f"s3torch serve exited {proc.wait()} before its banner:\n{text}{proc.stderr.read()}")
        exports: Dict[str, str] = dict(re.findall(r"^export (\w+)=(\S+)$", text, re.M))
        assert set(exports) == {"AWS_ENDPOINT_URL", "AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}, text
        data_dir = re.search(r"data in (\S+), removed on exit", text)
        assert data_dir is not None, text
        tmp = Path(data_dir.group(1)).parent
        assert tmp.is_dir() and tmp.name.startswith("s3torch-weed-")
        port = exports["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]

        # The printed settings work, through the library's own environment lookup.
        env = dict(os.environ, **exports)
        script = (
            "from s3torch import S3Client, S3ClientConfig; import os;"
            "c = S3Client(os.environ['AWS_REGION']);"
            "c.put('serve-test', 'k', b'hello from serve');"
            "print(c._get_native().get_bytes('serve-test', 'k').decode())"
        )
        r = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout.strip() == "hello from serve", r.stdout + r.stderr
        client = S3Client(
            exports["AWS_REGION"],
            endpoint=exports["AWS_ENDPOINT_URL"],
            s3client_config=S3ClientConfig(
                access_key_id=exports["AWS_ACCESS_KEY_ID"], secret_access_key=exports["AWS_SECRET_ACCESS_KEY"]
            ),
        )
        assert client.head_object("serve-test", "k").size == 16

        servers = _children(proc.pid)
        assert servers and all(_alive(p) for p in servers)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() - t0 < 30
        assert not [p for p in servers if _alive(p)], "a weed process survived"
        assert not tmp.exists()
        assert not glob.glob(os.path.join(tempfile.gettempdir(), f"seaweedfs-*-{port}.sock"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_keeps_data_in_dir_between_runs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def start() -> "tuple[subprocess.Popen, Dict[str, str]]":
        proc = subprocess.Popen(
            [sys.executable, "-m", "s3torch", "serve", "--bucket", "kept", "--dir", str(tmp_path / "data")],
            stdout=subprocess.PIPE,
            text=True,
        )
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "SIGTERM stops the server" in line:
                break
        return proc, dict(re.findall(r"^export (\w+)=(\S+)$", "".join(lines), re.M))

    def client(e: Dict[str, str]) -> S3Client:
        return S3Client(
            e["AWS_REGION"],
            endpoint=e["AWS_ENDPOINT_URL"],
            s3client_config=S3ClientConfig(
                access_key_id=e["AWS_ACCESS_KEY_ID"], secret_access_key=e["AWS_SECRET_ACCESS_KEY"]
            ),
        )

    proc, e = start()
    try:
        client(e).put("kept", "obj", b"still here")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        proc, e = start()
        assert client(e)._get_native().get_bytes("kept", "obj") == b"still here"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
