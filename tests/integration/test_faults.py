"""Every flow through the fault-injecting proxy (tests/faults/proxy.py) in front of SeaweedFS:
DCP save with 1 and 3 writer threads, DCP load, a 64 MiB put and get_into, a 200-object
S3IterableDataset. Each flow ends byte-exact or with the right typed error in bounded time;
never a loadable partial checkpoint; no multipart upload left behind after a transient fault.

The flows run concurrently in threads under one proxy, so one outage or one storm covers all
of them at once."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import quote

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3torch import S3Client, S3ClientConfig, S3Exception, S3IterableDataset
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch.dcp import CheckpointCorruptError, CheckpointReadError, S3StorageReader, S3StorageWriter
from tests.conftest import BUCKET, never_answered_blackhole, never_answered_endpoint
from tests.faults.proxy import Fault, FaultProxy, wait_until

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")

MiB = 1 << 20
BIG = 64 * MiB
N_OBJECTS = 200
OBJECT_BYTES = 64 * 1024
FLOWS = ("save1", "save3", "load", "put", "get", "dataset")


def _cfg(**extra: Any) -> S3ClientConfig:
    return S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, **extra)


def _sd(seed: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"w{i}": torch.randn(1024, 1024, generator=g) for i in range(6)}  # 24 MiB, 6 tensors


def _loaded(endpoint: str, path: str, cfg: Optional[S3ClientConfig] = None) -> Dict[str, torch.Tensor]:
    out = {k: torch.empty(1024, 1024) for k in _sd(0)}
    dcp.load(out, storage_reader=S3StorageReader(REGION, path, endpoint=endpoint, s3client_config=cfg or _cfg()))
    return out


class World:
    """What the read flows read, written straight to SeaweedFS once per module."""

    def __init__(self, seaweed: Any) -> None:
        self.seaweed = seaweed
        self.direct = S3Client(REGION, endpoint=seaweed.endpoint, s3client_config=_cfg())
        self.base = f"faults/{uuid.uuid4().hex[:8]}/"
        self.ckpt = f"s3://{BUCKET}/{self.base}ckpt"
        dcp.save(
            _sd(1), storage_writer=S3StorageWriter(REGION, self.ckpt, endpoint=seaweed.endpoint, s3client_config=_cfg())
        )
        self.big = torch.randint(0, 256, (BIG,), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
        self.direct.put(BUCKET, f"{self.base}big.bin", self.big)
        # 200 objects of 64 KiB and more: 12.5 MiB, more than the 8 MB the mid-flow outage lets
        # through first (at 4 KiB each, 0.8 MiB in all, the dataset once finished before it began).
        self.objects = {f"{self.base}ds/{i:04d}": bytes([i % 251]) * (OBJECT_BYTES + i) for i in range(N_OBJECTS)}
        for k, v in self.objects.items():
            self.direct.put(BUCKET, k, v)

    def uploads(self, prefix: str) -> List[str]:
        resp = self.seaweed.boto3_client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
        return [u["Key"] for u in resp.get("Uploads", [])]

    def keys(self, prefix: str) -> List[str]:
        return [o.key for p in self.direct.list_objects(BUCKET, prefix) for o in p.object_info]


@pytest.fixture(scope="module")
def world(seaweed: Any) -> World:
    return World(seaweed)


def _flow(world: World, name: str, endpoint: str, cfg: S3ClientConfig, run: str) -> Callable[[], None]:
    """One flow against ``endpoint``; returns when its result is verified byte-exact against
    SeaweedFS directly. Write flows write under ``<base><run>/<name>``."""
    out = f"{world.base}{run}/{name}"

    def save(threads: int) -> None:
        path = f"s3://{BUCKET}/{out}"
        sd = _sd(threads)
        dcp.save(
            sd,
            storage_writer=S3StorageWriter(REGION, path, endpoint=endpoint, s3client_config=cfg, thread_count=threads),
        )
        got = _loaded(world.seaweed.endpoint, path)
        assert all(torch.equal(got[k], sd[k]) for k in sd), f"{name}: saved bytes differ"

    def load() -> None:
        got = _loaded(endpoint, world.ckpt, cfg)
        want = _sd(1)
        assert all(torch.equal(got[k], want[k]) for k in want), "load: loaded bytes differ"

    def put() -> None:
        S3Client(REGION, endpoint=endpoint, s3client_config=cfg).put(BUCKET, out, world.big)
        back = torch.empty(BIG, dtype=torch.uint8)
        world.direct.get_into(BUCKET, out, back)
        assert torch.equal(back, world.big), "put: stored bytes differ"

    def get() -> None:
        back = torch.zeros(BIG, dtype=torch.uint8)
        S3Client(REGION, endpoint=endpoint, s3client_config=cfg).get_into(BUCKET, f"{world.base}big.bin", back)
        assert torch.equal(back, world.big), "get: read bytes differ"

    def dataset() -> None:
        ds = S3IterableDataset.from_prefix(
            f"s3://{BUCKET}/{world.base}ds/", region=REGION, endpoint=endpoint, s3client_config=cfg
        )
        got = {r.key: r.read() for r in ds}
        assert got == world.objects, "dataset: items differ"

    return {
        "save1": lambda: save(1),
        "save3": lambda: save(3),
        "load": load,
        "put": put,
        "get": get,
        "dataset": dataset,
    }[name]


# Which requests each flow makes, to aim a rule at one flow: its key prefix.
def _target(world: World, run: str, name: str) -> str:
    if name == "load":
        return f"{world.base}ckpt/"
    if name == "get":
        return f"{world.base}big.bin"
    if name == "dataset":
        return f"{world.base}ds/"
    return f"{world.base}{run}/{name}"


def _run_all(
    world: World,
    endpoint: str,
    cfg: S3ClientConfig,
    run: str,
    names: Tuple[str, ...] = FLOWS,
    during: Optional[Callable[[], None]] = None,
) -> Dict[str, Tuple[Optional[BaseException], float]]:
    """Start every flow in its own thread; ``during()`` runs on this thread meanwhile. Returns
    each flow's error (None: completed and verified) and seconds taken."""
    results: Dict[str, Tuple[Optional[BaseException], float]] = {}

    def timed(name: str) -> None:
        t0 = time.monotonic()
        try:
            _flow(world, name, endpoint, cfg, run)()
            results[name] = (None, time.monotonic() - t0)
        except BaseException as e:  # CheckpointException is a BaseException
            results[name] = (e, time.monotonic() - t0)

    with ThreadPoolExecutor(len(names)) as pool:
        futures = [pool.submit(timed, n) for n in names]
        if during is not None:
            during()
        for f in futures:
            f.result(600)
    return results


def _assert_completed(results: Dict[str, Tuple[Optional[BaseException], float]]) -> None:
    failed = {n: f"{type(e).__name__}: {str(e)[-400:]}" for n, (e, _) in results.items() if e is not None}
    assert failed == {}, failed


def _assert_survived(world: World, run: str, results: Dict[str, Tuple[Optional[BaseException], float]]) -> None:
    _assert_completed(results)
    assert world.uploads(f"{world.base}{run}/") == []


def _s3_error(e: Optional[BaseException]) -> BaseException:
    """s3torch's error: itself, or the one failure of torch's CheckpointException."""
    assert e is not None, "the flow completed; it should have failed"
    if isinstance(e, CheckpointException):
        (inner, _tb), *rest = e.failures.values()
        assert not rest
        return inner
    return e


# --- transient faults: a few attempts fail, then the request goes through -------------------


@pytest.mark.parametrize("kind", ["reset", "slowdown", "internal_error", "slow", "truncate"])
def test_transient_fault_on_every_flow(world: World, proxy: FaultProxy, kind: str) -> None:
    run = f"transient-{kind}"
    faults = []
    for name in FLOWS:
        method = "GET" if kind == "truncate" else None  # only responses with bodies can be cut short
        if kind == "truncate" and name.startswith("save") or kind == "truncate" and name == "put":
            continue  # their GETs go to SeaweedFS directly (verification)
        faults.append(proxy.add(Fault(kind, method=method, path=_target(world, run, name), times=2, delay=1.0)))
    _assert_survived(world, run, _run_all(world, proxy.endpoint, _cfg(), run))
    assert all(f.injected == 2 for f in faults), [(f.path, f.injected) for f in faults]


def test_silent_connection_on_every_flow(world: World, proxy: FaultProxy) -> None:
    """Two requests of each flow reach the server, and their answers stop halfway (or never
    start) on a connection that stays open: every request of a flow, uploads and their
    CompleteMultipartUpload included, is retried after ``stall_timeout_s`` of silence. The
    bound is a wide one: with the CRT's own default a stall alone takes over 30 s.

    A CreateMultipartUpload whose answer was lost created an upload nobody knows the id of:
    it stays behind, empty (docs/retries.md); nothing else may."""
    run = "stall"
    # The put's CompleteMultipartUpload (first rule matched first), and any two requests of each flow.
    complete = proxy.add(Fault("stall", method="POST", path=_target(world, run, "put") + r"\?uploadId=", times=1))
    faults = [proxy.add(Fault("stall", path=_target(world, run, name), times=2)) for name in FLOWS]
    results = _run_all(world, proxy.endpoint, _cfg(stall_timeout_s=2), run)
    _assert_completed(results)
    assert complete.injected == 1
    assert all(f.injected == 2 for f in faults), [(f.path, f.injected) for f in faults]
    assert all(t < 28 for _, t in results.values()), {n: round(t, 1) for n, (_, t) in results.items()}
    lost_creates = sorted(
        t.split(" ")[1].split("?")[0].lstrip("/").partition("/")[2]
        for f in faults
        for t in f.targets
        if t.startswith("POST") and "?uploads" in t
    )
    s3 = world.seaweed.boto3_client()
    left = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=f"{world.base}{run}/").get("Uploads", [])
    assert f"{world.base}{run}/put" in lost_creates  # its first request is its CreateMultipartUpload
    assert sorted(u["Key"] for u in left) == lost_creates, lost_creates
    for u in left:
        assert s3.list_parts(Bucket=BUCKET, Key=u["Key"], UploadId=u["UploadId"]).get("Parts", []) == []
        s3.abort_multipart_upload(Bucket=BUCKET, Key=u["Key"], UploadId=u["UploadId"])


def test_a_paused_consumer_is_not_a_stall(world: World, proxy: FaultProxy) -> None:
    """``stall_timeout_s`` counts silence on a request in flight, never a consumer that stops
    for longer: a stream read and a streaming upload pausing 5 s (stall_timeout_s=1) send the
    same requests as without the pauses, and move the same bytes."""
    cfg = _cfg(stall_timeout_s=1)
    client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=cfg)
    key = f"{world.base}big.bin"

    def read(pause: float) -> bytes:
        got = bytearray()
        for i, chunk in enumerate(client.get_stream(BUCKET, key)):
            got += chunk
            if i == 0:
                time.sleep(pause)
        return bytes(got)

    def write(pause: float, name: str) -> None:
        up = client.upload(BUCKET, f"{world.base}paused/{name}")
        data = world.big.numpy()
        for i, at in enumerate(range(0, BIG, 3 * MiB)):
            up.write(data[at : at + 3 * MiB])
            if i == 1:
                time.sleep(pause)
        up.complete()

    requests = []
    for pause in (0.0, 5.0):
        before = proxy.requests
        assert read(pause) == world.big.numpy().tobytes()
        write(pause, f"w{pause:g}")
        back = torch.empty(BIG, dtype=torch.uint8)
        world.direct.get_into(BUCKET, f"{world.base}paused/w{pause:g}", back)
        assert torch.equal(back, world.big)
        requests.append(proxy.requests - before)
    assert requests[0] == requests[1], requests


def test_complete_multipart_upload_200_with_error(world: World, proxy: FaultProxy) -> None:
    run = "complete-error"
    f = proxy.add(Fault("complete_error", method="POST", path=r"uploadId=", times=3))
    _assert_survived(world, run, _run_all(world, proxy.endpoint, _cfg(), run, ("save1", "save3", "put")))
    assert f.injected == 3


# --- long faults: ridden out with the default retry budget ------------------------------------


def test_30s_outage_in_the_middle_of_every_flow(world: World, seaweed: Any) -> None:
    """Every flow is mid-transfer when the outage begins: the proxy holds all traffic until each
    flow has sent its first request, then lets 8 MB through (at 40 MB/s) and goes down. The
    smallest flow that moves bytes, the dataset's 12.5 MiB, cannot have finished."""
    run = "outage"
    with FaultProxy.in_front_of(seaweed.endpoint, rate=40e6) as proxy:
        proxy.pause()

        def outage() -> None:
            try:
                for name in FLOWS:
                    target = _target(world, run, name)
                    if name == "dataset":  # its first request is the LIST, the prefix URL-encoded
                        target += "|" + quote(target, safe="")
                    wait_until(lambda t=target: proxy.requests_to(t) > 0, 60, f"{name} to start")  # type: ignore[misc]
                base = proxy.relayed
                proxy.resume()
                wait_until(lambda: proxy.relayed > base + 8_000_000, 60, "8 MB relayed")
            finally:
                proxy.resume()
            proxy.outage(30)

        results = _run_all(world, proxy.endpoint, _cfg(), run, during=outage)
    _assert_survived(world, run, results)
    assert all(t > 30 for _, t in results.values()), {n: round(t, 1) for n, (_, t) in results.items()}


def test_60s_slowdown_storm_on_half_the_requests(world: World, proxy: FaultProxy) -> None:
    run = "storm"
    f = proxy.add(Fault("slowdown", fraction=0.5, duration=60))
    _assert_survived(world, run, _run_all(world, proxy.endpoint, _cfg(), run))
    assert f.injected > 50


# --- persistent faults: every attempt fails; a typed error within the retry budget ------------


@pytest.mark.parametrize(
    "kind, check",
    [
        ("slowdown", lambda e: e.http_status == 503 and e.code == "SlowDown"),
        ("internal_error", lambda e: e.http_status == 500 and e.code == "InternalError"),
        ("reset", lambda e: isinstance(e, ConnectionError)),
    ],
)
def test_persistent_fault_gives_up_with_a_typed_error(world: World, proxy: FaultProxy, kind: str, check: Any) -> None:
    run = f"persistent-{kind}"
    budget = 5
    for name in FLOWS:  # every request but the aborts, which must get through to clean up
        proxy.add(Fault(kind, method="GET|HEAD|PUT|POST", path=_target(world, run, name)))
    results = _run_all(world, proxy.endpoint, _cfg(retry_timeout_s=budget), run)
    for name, (e, took) in results.items():
        err = _s3_error(e)
        assert isinstance(err, S3Exception) and check(err), (name, type(err), str(err))
        assert not isinstance(err, CheckpointCorruptError), (name, str(err))
        if name == "load":
            assert isinstance(err, CheckpointReadError)
        assert took < budget + 30, (name, took)
    assert world.uploads(f"{world.base}{run}/") == []
    assert not [k for k in world.keys(f"{world.base}{run}/") if k.endswith(".metadata")]


def test_persistent_silence_is_a_timeout_naming_stall_timeout_s(world: World, proxy: FaultProxy) -> None:
    """Every GET's answer stops halfway: each attempt is closed after stall_timeout_s, and the
    retry budget ends in a TimeoutError that says which setting to look at."""
    run = "persistent-stall"
    for name in ("get", "load", "dataset"):
        proxy.add(Fault("stall", method="GET", path=_target(world, run, name)))
    budget = 4
    results = _run_all(
        world, proxy.endpoint, _cfg(retry_timeout_s=budget, stall_timeout_s=1), run, ("get", "load", "dataset")
    )
    for name, (e, took) in results.items():
        err = _s3_error(e)
        assert isinstance(err, TimeoutError) and "stall_timeout_s" in str(err), (name, type(err), str(err))
        assert took < budget + 20, (name, took)


def test_persistent_truncation_on_a_load_is_a_read_error_naming_the_item(world: World, proxy: FaultProxy) -> None:
    proxy.add(Fault("truncate", method="GET", path=rf"{world.base}ckpt/__0_0\.distcp"))
    t0 = time.monotonic()
    with pytest.raises(CheckpointException) as info:
        _loaded(proxy.endpoint, world.ckpt, _cfg(retry_timeout_s=5))
    err = _s3_error(info.value)
    assert isinstance(err, CheckpointReadError) and not isinstance(err, CheckpointCorruptError), str(err)
    assert "__0_0.distcp item w" in str(err)
    assert time.monotonic() - t0 < 35


# --- an endpoint that never answered: fail fast ---------------------------------------------


def _attempt(endpoint: str, what: str, give_up: Callable[[], None]) -> Tuple[BaseException, float]:
    """``what`` against ``endpoint`` on a thread, bounded: after 30 s ``give_up()`` is
    called (it closes the blackhole, resetting its queued connections) and the thread is
    waited for, so no request outlives the test."""
    box: List[Tuple[BaseException, float]] = []

    def go() -> None:
        t0 = time.monotonic()
        try:
            client = S3Client(REGION, endpoint=endpoint, s3client_config=_cfg())
            if what == "get":
                client.get_into(BUCKET, "k", bytearray(10))
            elif what == "put":
                client.put(BUCKET, "k", b"x" * 10)
            else:
                _loaded(endpoint, f"s3://{BUCKET}/nothing")
            raise AssertionError("succeeded against a dead endpoint")
        except BaseException as e:
            box.append((e, time.monotonic() - t0))

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(30)
    if not box:
        give_up()
        t.join(120)
        raise AssertionError(f"{what} against {endpoint} was still waiting after 30 s")
    return box[0]


@pytest.mark.parametrize("where", ["closed_port", "blackhole"])
@pytest.mark.parametrize("what", ["get", "put", "dcp_load"])
def test_endpoint_that_never_answered_fails_fast(where: str, what: str) -> None:
    with never_answered_blackhole() as hole:
        endpoint = hole.endpoint if where == "blackhole" else never_answered_endpoint()
        e, took = _attempt(endpoint, what, hole.close)
    err = _s3_error(e)
    assert isinstance(err, S3Exception) and isinstance(err, ConnectionError), (type(err), str(err))
    assert took <= 12, took  # <= 10 s promised; 2 s for a loaded machine
