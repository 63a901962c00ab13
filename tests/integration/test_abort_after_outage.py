"""An upload whose abort an outage blocked is remembered, and aborted once the server is back:
no parts stay behind even when the failure and the outage coincide."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, List, Tuple

from s3torch import S3Client, S3ClientConfig, S3PermissionError, _uploads
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from tests.conftest import BUCKET
from tests.faults.proxy import Fault, FaultProxy

OUTAGE_S = 15


def _server_uploads(seaweed: Any, prefix: str) -> list:
    resp = seaweed.boto3_client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
    return [u["Key"] for u in resp.get("Uploads", [])]


def test_abort_blocked_by_an_outage_is_remembered_then_done(seaweed: Any, prefix: str) -> None:
    # Short retries, so the abort gives up inside the outage.
    cfg = S3ClientConfig(
        force_path_style=True,
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        max_attempts=2,
        retry_timeout_s=1,
    )
    with FaultProxy.in_front_of(seaweed.endpoint) as proxy:
        client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=cfg)
        key = f"{prefix}ckpt/__0_0.distcp"
        up = client.upload(BUCKET, key)
        up.write(os.urandom(cfg.part_size + 1))  # one part goes up: the multipart upload exists
        deadline = time.monotonic() + 30
        while not _server_uploads(seaweed, prefix) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _server_uploads(seaweed, prefix) == [key]

        proxy.outage(OUTAGE_S)
        began = time.monotonic()
        up.abort()  # cannot reach the server: bounded, then remembered
        took = time.monotonic() - began
        assert took < OUTAGE_S + 5, took
        pending = client.pending_aborts()
        assert [(b, k) for b, k, _ in pending] == [(BUCKET, key)], pending
        assert _server_uploads(seaweed, prefix) == [key]  # the parts are still there

        # Once the server is back, the client aborts it (a DCP save through it does this first,
        # and so does the process at exit).
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - began)) + 0.5)
        assert client.pending_aborts(retry=True) == []
        assert client.pending_aborts() == []
        assert _server_uploads(seaweed, prefix) == []


# One deadline for all: tried one at a time, N held aborts took N times it.
HELD_UPLOADS = 4


def _held_aborts(seaweed: Any, prefix: str) -> List[Tuple[str, str]]:
    """HELD_UPLOADS empty multipart uploads under ``prefix``: (key, upload_id)."""
    s3 = seaweed.boto3_client()
    keys = [f"{prefix}ckpt/__{i}_0.distcp" for i in range(HELD_UPLOADS)]
    return [(k, s3.create_multipart_upload(Bucket=BUCKET, Key=k)["UploadId"]) for k in keys]


def test_remembered_aborts_are_tried_again_all_at_once(seaweed: Any, prefix: str) -> None:
    uploads = _held_aborts(seaweed, prefix)
    cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    wait_s = 3.0
    with FaultProxy.in_front_of(seaweed.endpoint) as proxy:
        client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=cfg)
        proxy.pause()  # the server takes every request and answers none
        for key, upload_id in uploads:
            assert client.abort_multipart_upload(BUCKET, key, upload_id, wait_s=0.2) is False
        assert sorted(k for _, k, _ in client.pending_aborts()) == [k for k, _ in uploads]

        began = time.monotonic()
        left = client.pending_aborts(retry=True, wait_s=wait_s)
        took = time.monotonic() - began
        assert sorted(k for _, k, _ in left) == [k for k, _ in uploads]  # still remembered
        assert wait_s - 0.1 <= took < 2 * wait_s, took  # one at a time: 4 x wait_s

        proxy.resume()
        assert client.pending_aborts(retry=True) == []
    assert _server_uploads(seaweed, prefix) == []


_EXITS_WITH_HELD_ABORTS = """
import sys, time
from s3torch import S3Client, S3ClientConfig, _uploads
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
endpoint, bucket = sys.argv[1], sys.argv[2]
cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
client = S3Client(REGION, endpoint=endpoint, s3client_config=cfg)
for pair in sys.argv[3:]:
    key, upload_id = pair.split("=", 1)
    assert client.abort_multipart_upload(bucket, key, upload_id, wait_s=0.2) is False
print("exiting", time.monotonic(), flush=True)
"""


def test_exit_with_remembered_aborts_is_bounded_once(seaweed: Any, prefix: str) -> None:
    """A process that exits during an outage with uploads it could not abort tries them again
    for EXIT_WAIT_S in all, not EXIT_WAIT_S for each."""
    uploads = _held_aborts(seaweed, prefix)
    with FaultProxy.in_front_of(seaweed.endpoint) as proxy:
        proxy.pause()
        proc = subprocess.run(
            [sys.executable, "-c", _EXITS_WITH_HELD_ABORTS, proxy.endpoint, BUCKET] + [f"{k}={u}" for k, u in uploads],
            capture_output=True,
            text=True,
            timeout=120,
        )
        ended = time.monotonic()
        assert proc.returncode == 0, proc.stderr
        exiting = float(proc.stdout.split()[-1])
        # The exit hook sent all four aborts (held by the paused proxy).
        assert proxy.requests_to("uploadId=", "DELETE") >= 2 * HELD_UPLOADS
        took = ended - exiting
        assert _uploads.EXIT_WAIT_S - 0.1 <= took < 2 * _uploads.EXIT_WAIT_S, took  # one at a time: 4 x
        proxy.resume()
    # The process gave up on them; the next save through a client, or `s3torch uploads --abort`, removes them.
    assert sorted(_server_uploads(seaweed, prefix)) == [k for k, _ in uploads]


# --- many uploads at once (`s3torch uploads --abort`, a DCP save's clean-up) ---------------


def _uploads_of(seaweed: Any, prefix: str, n: int) -> List[Tuple[str, str]]:
    s3 = seaweed.boto3_client()
    keys = [f"{prefix}many/{i:03d}" for i in range(n)]
    return [(k, s3.create_multipart_upload(Bucket=BUCKET, Key=k)["UploadId"]) for k in keys]


def test_many_uploads_are_aborted_at_once_each_with_its_outcome(seaweed: Any, prefix: str) -> None:
    """More uploads than go at once (64), each answer held 0.2 s by the proxy: one at a time
    that took 70 x 0.2 s = 14 s. One upload the server refuses (403), one already gone."""
    uploads = _uploads_of(seaweed, prefix, 70)
    refused_key, refused_id = _uploads_of(seaweed, prefix + "refused-", 1)[0]
    cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    with FaultProxy.in_front_of(seaweed.endpoint) as proxy:
        proxy.add(Fault("error", method="DELETE", path=r".*refused-.*uploadId=", status=403, code="AccessDenied"))
        proxy.add(Fault("slow", method="DELETE", path=r"uploadId=", delay=0.2))
        client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=cfg)
        batch = uploads + [(f"{prefix}gone", "no-such-upload"), (refused_key, refused_id)]
        began = time.monotonic()
        results = client.abort_multipart_uploads(BUCKET, batch, wait_s=10)
        took = time.monotonic() - began
    assert results[:71] == [True] * 71  # aborted; already gone (NoSuchUpload) counts as gone
    assert isinstance(results[71], S3PermissionError) and results[71].key == refused_key, results[71]
    assert took < 7, took  # 64 at a time: 2 rounds of 0.2 s, not 70
    assert client.pending_aborts() == []  # a refusal is not remembered: retrying cannot help
    assert _server_uploads(seaweed, prefix) == [refused_key]


def test_many_uploads_in_an_outage_wait_once_then_are_remembered(seaweed: Any, prefix: str) -> None:
    """No answer at all: the wait ends after ``wait_s`` without progress, for all of them
    (those waiting their turn too), not ``wait_s`` per upload."""
    uploads = _uploads_of(seaweed, prefix, 70)
    cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    wait_s = 2.0
    with FaultProxy.in_front_of(seaweed.endpoint) as proxy:
        client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=cfg)
        proxy.pause()
        began = time.monotonic()
        results = client.abort_multipart_uploads(BUCKET, uploads, wait_s=wait_s)
        took = time.monotonic() - began
        assert results == [False] * len(uploads)
        assert wait_s - 0.1 <= took < 2 * wait_s, took
        assert sorted(k for _, k, _ in client.pending_aborts()) == [k for k, _ in uploads]
        proxy.resume()
        assert client.pending_aborts(retry=True) == []
    assert _server_uploads(seaweed, prefix) == []


def test_ctrl_c_ends_a_batch_of_aborts_and_remembers_them(seaweed: Any, prefix: str) -> None:
    import _thread
    import signal
    import threading

    import pytest

    uploads = _uploads_of(seaweed, prefix, 3)
    cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # also under nohup
    try:
        with FaultProxy.in_front_of(seaweed.endpoint) as proxy:
            client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=cfg)
            proxy.pause()
            timer = threading.Timer(0.5, _thread.interrupt_main)
            timer.start()
            began = time.monotonic()
            with pytest.raises(KeyboardInterrupt):
                client.abort_multipart_uploads(BUCKET, uploads, wait_s=60)
            timer.join()
            assert time.monotonic() - began < 3
            assert sorted(k for _, k, _ in client.pending_aborts()) == [k for k, _ in uploads]
            proxy.resume()
            assert client.pending_aborts(retry=True) == []
    finally:
        signal.signal(signal.SIGINT, old)
    assert _server_uploads(seaweed, prefix) == []
