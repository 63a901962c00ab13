"""An upload whose abort an outage blocked is remembered, and aborted once the server is back:
no parts stay behind even when the failure and the outage coincide."""

from __future__ import annotations

import os
import time
from typing import Any

from s3torch import S3Client, S3ClientConfig
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from tests.conftest import BUCKET
from tests.faults.proxy import FaultProxy

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
