"""The retry policy's rules, counted at a fault-injecting proxy: attempts per request,
retries off, and throttling lowering how many requests may be in flight."""

from __future__ import annotations

import time
from typing import Any

import pytest

from s3torch import S3Client, S3ClientConfig, S3Exception
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from tests.conftest import BUCKET
from tests.faults.proxy import Fault, FaultProxy


def _client(proxy: FaultProxy, **cfg: Any) -> S3Client:
    return S3Client(
        REGION,
        endpoint=proxy.endpoint,
        s3client_config=S3ClientConfig(
            force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, **cfg
        ),
    )


@pytest.mark.parametrize("max_attempts", [1, 3])
def test_max_attempts_with_no_retry_time(proxy: FaultProxy, prefix: str, max_attempts: int) -> None:
    client = _client(proxy, max_attempts=max_attempts, retry_timeout_s=0)
    client.put(BUCKET, f"{prefix}k", b"x")  # the endpoint has answered
    proxy.add(Fault("internal_error", method="GET", path=f"{prefix}k"))
    with pytest.raises(S3Exception) as info:
        client.get_into(BUCKET, f"{prefix}k", bytearray(1))
    assert info.value.http_status == 500 and info.value.code == "InternalError"
    assert info.value.request_id and info.value.request_id.startswith("FAULTPROXY-")
    assert proxy.requests_to(f"{prefix}k", "GET") == max_attempts


def test_retry_timeout_outlasts_max_attempts(proxy: FaultProxy, prefix: str) -> None:
    client = _client(proxy, max_attempts=2, retry_timeout_s=3)
    client.put(BUCKET, f"{prefix}k", b"x")
    proxy.add(Fault("slowdown", method="GET", path=f"{prefix}k"))
    began = time.monotonic()
    with pytest.raises(S3Exception) as info:
        client.get_into(BUCKET, f"{prefix}k", bytearray(1))
    took = time.monotonic() - began
    assert info.value.http_status == 503 and info.value.code == "SlowDown"
    assert 3 <= took < 15, took
    assert proxy.requests_to(f"{prefix}k", "GET") > 2  # kept trying past max_attempts, for 3 s


def test_throttling_lowers_the_requests_in_flight_then_lets_them_grow(proxy: FaultProxy, prefix: str) -> None:
    client = _client(proxy)
    native = client._get_native()
    keys = [f"{prefix}{i}" for i in range(16)]
    for k in keys:
        client.put(BUCKET, k, b"y" * 1000)
    assert native.throttle_limit == 0  # no limit while nothing throttles
    # On loopback the first GET's SlowDown comes back before the others are sent: the limit
    # falls to 1 and that GET takes every SlowDown in turn, its backoff doubling from 0.5 s to
    # 10 s (full jitter). 8 lower the limit as surely as 24 did, in about 20 s instead of 90.
    proxy.add(Fault("slowdown", method="GET", path=prefix, times=8))
    bufs = [bytearray(1000) for _ in keys]
    client.get_into_many(BUCKET, [(k, None, None, b) for k, b in zip(keys, bufs)])
    assert all(b == b"y" * 1000 for b in bufs)
    limited = native.throttle_limit
    assert limited > 0  # SlowDown put a limit on requests in flight
    for k, b in zip(keys, bufs):  # successes raise it again
        client.get_into(BUCKET, k, b)
    assert native.throttle_limit > limited or native.throttle_limit == 0
