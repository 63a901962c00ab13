"""Issue 25: faults in fresh processes, the retry budget under a persistent fault, the request
rate under persistent throttling, and the WARNING lines while retrying (docs/retries.md).

Counted at the fault-injecting proxy (tests/faults/proxy.py) in front of SeaweedFS."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid
from typing import Any, Dict

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3torch import S3Client, S3ClientConfig, S3ConnectionError, _crt
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch.dcp import CheckpointReadError, S3StorageReader, S3StorageWriter
from tests.conftest import BUCKET, never_answered_endpoint
from tests.faults.proxy import Fault, FaultProxy

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(**extra: Any) -> S3ClientConfig:
    return S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, **extra)


@pytest.fixture(scope="module")
def objects(seaweed: Any) -> Dict[str, bytes]:
    base = f"budget/{uuid.uuid4().hex[:8]}/ds/"
    client = S3Client(REGION, endpoint=seaweed.endpoint, s3client_config=_cfg())
    objs = {f"{base}{i:03d}": bytes([i % 251]) * (2048 + i) for i in range(60)}
    for k, v in objs.items():
        client.put(BUCKET, k, v)
    return objs


FRESH = textwrap.dedent(
    """
    import sys, time
    from s3torch import S3ClientConfig, S3IterableDataset
    from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
    endpoint, bucket, keys, method = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[5]
    workers = int(sys.argv[4])
    cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    if workers:
        # A DataLoader whose workers start fresh: the endpoint has answered the parent (a list)
        # and the pickled dataset carries that knowledge into the workers.
        import torch
        from s3torch import S3Client
        from tests.faults.readers import key_and_bytes
        prefix = keys[0].rsplit("/", 1)[0] + "/"
        list(S3Client(REGION, endpoint=endpoint, s3client_config=cfg).list_objects(bucket, prefix))
        ds = S3IterableDataset.from_prefix(f"s3://{bucket}/{prefix}", region=REGION, endpoint=endpoint,
                                           s3client_config=cfg, enable_sharding=True, transform=key_and_bytes)
        loader = torch.utils.data.DataLoader(ds, num_workers=workers, multiprocessing_context=method,
                                             batch_size=None)
        got = dict(loader)
    else:
        ds = S3IterableDataset.from_objects([f"s3://{bucket}/{k}" for k in keys], region=REGION,
                                            endpoint=endpoint, s3client_config=cfg)
        got = {r.key: r.read() for r in ds}
    for k in keys:
        sys.stdout.write(f"{k} {len(got[k])} {got[k][:1].hex()}\\n")
    """
)


@pytest.mark.parametrize(
    "workers,method,outage",
    [(0, "-", 5.0), (2, "spawn", 30.0), (2, "fork", 5.0)],
    ids=["0w-5s", "spawn-30s", "fork-5s"],
)
def test_fresh_process_dataset_rides_out_an_outage_at_its_first_gets(
    proxy: FaultProxy, objects: Dict[str, bytes], workers: int, method: str, outage: float
) -> None:
    keys = sorted(objects)
    proc = subprocess.Popen(
        [sys.executable, "-c", FRESH, proxy.endpoint, BUCKET, ",".join(keys), str(workers), method],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    prefix = keys[0].rsplit("/", 1)[0] + "/"
    deadline = time.monotonic() + 120
    # The first object GET (a listing's target has no key under the prefix: "?list-type=2&prefix=")
    while proxy.requests_to(prefix + "0", "GET") < 1 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proxy.outage(outage)  # the first GETs of the fresh process (or of its fresh workers)
    out, err = proc.communicate(timeout=outage + 120)
    assert proc.returncode == 0, err[-2000:]
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(prefix))
    assert lines == {k: f"{len(v)} {v[:1].hex()}" for k, v in objects.items()}


def test_never_answered_endpoint_still_fails_fast() -> None:
    """A closed port at the start of a job: S3ConnectionError in under 10 s."""
    client = S3Client(REGION, endpoint=never_answered_endpoint(), s3client_config=_cfg())
    began = time.monotonic()
    with pytest.raises(S3ConnectionError):
        client.get_into(BUCKET, "k", bytearray(8))
    assert time.monotonic() - began < 10


def test_known_endpoint_rides_out_an_outage_before_any_answer(proxy: FaultProxy, objects: Dict[str, bytes]) -> None:
    key = sorted(objects)[0]
    client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=_cfg(known_endpoint=True))
    proxy.outage(12.0)  # longer than the 8 s a never-answered endpoint gets
    buf = bytearray(len(objects[key]))
    client.get_into(BUCKET, key, buf)
    assert bytes(buf) == objects[key]


def test_a_raised_stall_timeout_lets_a_first_answer_come_later(seaweed: Any, objects: Dict[str, bytes]) -> None:
    """A server that thinks longer before its first byte, and a user who said so
    (``stall_timeout_s=20``): the first GET of a process that has never reached the endpoint
    waits for its answer (9 s here) instead of being cancelled at the 8 s a silent endpoint gets."""
    key = sorted(objects)[1]
    answered = set(_crt.answered_endpoints())
    with FaultProxy.in_front_of(seaweed.endpoint) as proxy:
        assert proxy.endpoint not in answered  # a fresh port: else the endpoint is known here already
        slow = proxy.add(Fault("slow", method="GET", delay=9.0, times=1))
        client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=_cfg(stall_timeout_s=20))
        buf = bytearray(len(objects[key]))
        began = time.monotonic()
        client.get_into(BUCKET, key, buf)
        assert time.monotonic() - began >= 9.0 and slow.injected == 1
    assert bytes(buf) == objects[key]


def test_persistent_slowdown_one_budget_few_requests_and_warnings(
    seaweed: Any, proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """Every GET of a DCP load's data file answers SlowDown: the load ends in the typed error
    within retry_timeout_s + 10 s, and the client's request rate falls instead of storming.

    The bound on requests: the GETs in flight when throttling starts (one per item, here 24)
    each get one SlowDown, then the limit falls to 1 and the one request holding it retries
    with backoff from 0.5 s up to 10 s: well under 100 in a 12 s budget. Before, every request
    in flight kept its slot and retried on its own, about 14 requests a second."""
    path = f"s3://{BUCKET}/budget/{uuid.uuid4().hex[:8]}/ckpt"
    sd = {f"w{i}": torch.full((256, 256), float(i)) for i in range(24)}
    dcp.save(sd, storage_writer=S3StorageWriter(REGION, path, endpoint=seaweed.endpoint, s3client_config=_cfg()))
    proxy.add(Fault("slowdown", method="GET", path=r"\.distcp"))
    out = {k: torch.empty(256, 256) for k in sd}
    budget = 12
    caplog.set_level(logging.WARNING, logger="s3torch")
    began = time.monotonic()
    with pytest.raises(BaseException) as info:  # torch's CheckpointException is a BaseException
        dcp.load(
            out,
            storage_reader=S3StorageReader(
                REGION, path, endpoint=proxy.endpoint, s3client_config=_cfg(retry_timeout_s=budget)
            ),
        )
    took = time.monotonic() - began
    failures = getattr(info.value, "failures", None)
    err = next(iter(failures.values()))[0] if failures else info.value
    assert isinstance(err, CheckpointReadError), repr(err)
    assert err.code == "SlowDown" and err.http_status == 503 and err.request_id
    assert budget <= took < budget + 10, took
    sent = proxy.requests_to(r"\.distcp", "GET")
    assert sent < 100, sent
    warnings = [r.getMessage() for r in caplog.records if r.name == "s3torch" and r.levelno == logging.WARNING]
    assert any("has been retrying for" in w and "SlowDown" in w and ".distcp" in w for w in warnings), warnings


def test_persistent_500_waves_share_one_budget(proxy: FaultProxy, objects: Dict[str, bytes]) -> None:
    """Requests issued one after another during a persistent fault (waves) do not each start a
    fresh budget: the second gives up when the first's budget is spent."""
    keys = sorted(objects)[:2]
    client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=_cfg(retry_timeout_s=6))
    client.head_object(BUCKET, keys[0])  # the endpoint has answered
    proxy.add(Fault("internal_error", method="GET"))
    began = time.monotonic()
    for k in keys:
        with pytest.raises(Exception) as info:
            client.get_into(BUCKET, k, bytearray(len(objects[k])))
        assert getattr(info.value, "http_status", None) == 500
    assert time.monotonic() - began < 6 + 6, time.monotonic() - began
