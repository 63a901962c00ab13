"""Fork safety, pickling, credentials and unreachable endpoints."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import threading
import time
from typing import Iterator

import pytest

from s3torch import S3Client, S3ClientConfig, S3Exception, S3PermissionError
from s3torch._servers import REGION
from tests.conftest import BUCKET, make_client, never_answered_endpoint
from tests.forking import fork_and_wait


def test_pickle_carries_configuration_only(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    client.put(BUCKET, prefix + "p", b"pickled")
    clone = pickle.loads(pickle.dumps(client))
    assert clone.endpoint == client.endpoint and clone.s3client_config == client.s3client_config
    assert clone._get_native() is not client._get_native()
    buf = bytearray(7)
    clone.get_into(BUCKET, prefix + "p", buf)
    assert bytes(buf) == b"pickled"


def _child_read(client: S3Client, key: str, q) -> None:  # type: ignore[no-untyped-def]
    try:
        buf = bytearray(5)
        client.get_into(BUCKET, key, buf)
        q.put(bytes(buf))
    except BaseException as e:  # report, never hang the parent
        q.put(repr(e))


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_client_used_before_fork_works_in_children(seaweed, prefix: str, method: str) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    client.put(BUCKET, prefix + "f", b"forks")  # the parent's client is live before fork
    ctx = mp.get_context(method)
    q = ctx.Queue()
    procs = [ctx.Process(target=_child_read, args=(client, prefix + "f", q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert results == [b"forks", b"forks"]
    # The parent keeps working after the fork (its client is rebuilt lazily).
    buf = bytearray(5)
    client.get_into(BUCKET, prefix + "f", buf)
    assert bytes(buf) == b"forks"


class _ObjectsDataset:
    """A minimal map-style dataset reading objects through one S3Client."""

    def __init__(self, client: S3Client, keys: list) -> None:
        self.client, self.keys = client, keys

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int):  # type: ignore[no-untyped-def]
        info = self.client.head_object(BUCKET, self.keys[i])
        buf = bytearray(info.size)
        self.client.get_into(BUCKET, self.keys[i], buf)
        return (self.keys[i], bytes(buf), os.getpid())


def test_dataloader_fork_workers_each_use_their_own_client(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    from torch.utils.data import DataLoader

    client = make_client(seaweed)
    keys = [prefix + f"d{i}" for i in range(12)]
    for k in keys:
        client.put(BUCKET, k, k.encode())
    ds = _ObjectsDataset(client, keys)
    loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
    seen = list(loader)
    assert sorted(k for k, _, _ in seen) == sorted(keys)
    assert all(v == k.encode() for k, v, _ in seen)
    worker_pids = {pid for _, _, pid in seen}
    assert os.getpid() not in worker_pids and len(worker_pids) == 2


def test_wrong_credentials_are_permission_errors(seaweed) -> None:  # type: ignore[no-untyped-def]
    bad = make_client(seaweed, secret_access_key="not-the-secret")
    with pytest.raises(S3PermissionError) as ei:
        bad.get_into(BUCKET, "any", bytearray(10))
    assert isinstance(ei.value, PermissionError) and ei.value.http_status == 403
    with pytest.raises(PermissionError):
        bad.put(BUCKET, "any", b"x")


def test_unsigned_requests_are_refused_by_an_authenticated_server(seaweed) -> None:  # type: ignore[no-untyped-def]
    anon = S3Client(
        REGION, endpoint=seaweed.endpoint, s3client_config=S3ClientConfig(unsigned=True, force_path_style=True)
    )
    with pytest.raises(PermissionError):
        anon.head_object(BUCKET, "any")


def test_unreachable_endpoint_fails_fast() -> None:
    client = S3Client(
        REGION,
        endpoint=never_answered_endpoint(),  # a port with nothing listening, that no server answered on
        s3client_config=S3ClientConfig(access_key_id="a", secret_access_key="b", max_attempts=2),
    )
    t0 = time.monotonic()
    with pytest.raises(S3Exception) as ei:
        client.get_into(BUCKET, "k", bytearray(10))
    assert time.monotonic() - t0 < 15
    assert "CONNECTION_REFUSED" in str(ei.value) and "endpoint" in str(ei.value)


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """Python's own SIGINT handler for the test: started in the background or under nohup,
    SIGINT is ignored and _thread.interrupt_main() would do nothing."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def test_keyboard_interrupt_cancels_a_transfer(seaweed, prefix: str, sigint_raises) -> None:  # type: ignore[no-untyped-def]
    import _thread

    client = make_client(seaweed)
    size = 100 * 1024 * 1024
    client.put(BUCKET, prefix + "big", bytearray(size))
    buf = bytearray(size)
    timer = threading.Timer(0.05, _thread.interrupt_main)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        for _ in range(50):  # each GET takes well over 50 ms on this server
            client.get_into(BUCKET, prefix + "big", buf)
    timer.join()
    assert time.monotonic() - t0 < 20
    # The cancelled transfer is gone and the client still works.
    # (in_flight drops when the CRT has torn the meta request down, just after it finished)
    deadline = time.monotonic() + 10
    while client._get_native().in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client._get_native().in_flight == 0
    assert client.get_into(BUCKET, prefix + "big", buf) == size


def test_keyboard_interrupt_ends_an_upload_listing(sigint_raises) -> None:  # type: ignore[no-untyped-def]
    """``list_multipart_uploads`` (``s3torch uploads``, a DCP save's clean-up) against a server
    that takes the connection and never answers. Before, the whole listing ran with the GIL
    released and no signal check: Ctrl-C did nothing until the request's own time ran out.
    Now each page is waited for a slice at a time: Ctrl-C cancels it within a slice."""
    import _thread

    from tests.faults.proxy import Blackhole

    with Blackhole() as hole:
        client = S3Client(
            REGION,
            endpoint=hole.endpoint,
            s3client_config=S3ClientConfig(force_path_style=True, access_key_id="k", secret_access_key="s"),
        )
        timer = threading.Timer(0.5, _thread.interrupt_main)
        timer.start()
        t0 = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            client.list_multipart_uploads("b", "p/")
        timer.join()
        assert time.monotonic() - t0 < 3


def test_fork_while_transfers_are_in_flight(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """Forking while a GET stream and a multipart upload are running (so the at-fork hook
    cannot stop the CRT): the child must not hang or crash when it drops or touches the
    parent's transfers, its inherited clients and readers must work, and it must be able to
    fork again."""
    import gc

    from s3torch import S3InvalidArgumentError

    client = make_client(seaweed)
    big = os.urandom(24 << 20)
    client.put(BUCKET, prefix + "big", big)
    client.put(BUCKET, prefix + "small", b"small")
    reader = client.get_object(BUCKET, prefix + "small")  # made in the parent, used in the child

    stream = client.get_stream(BUCKET, prefix + "big", read_ahead=1 << 20)
    first = next(stream)
    head = bytes(first)
    first.release()  # the GET goes on until about read_ahead bytes wait: still in flight
    del first
    writer = client.put_object(BUCKET, prefix + "up")
    writer.write(big[: 20 << 20])  # a multipart upload under way, not completed
    assert client._get_native().in_flight >= 2

    def child() -> list:
        out = []
        # The parent's transfers do not run here: using them raises instead of hanging.
        with pytest.raises(S3InvalidArgumentError, match="fork"):
            next(stream)
        with pytest.raises(S3InvalidArgumentError, match="fork"):
            writer.write(b"more")
        out.append("refused")
        # The inherited client and a reader made in the parent work here.
        out.append(reader.read())
        buf = bytearray(5)
        client.get_into(BUCKET, prefix + "small", buf)
        out.append(bytes(buf))
        # And so does forking again from here (the CRT's thread bookkeeping was reset).
        status, text = fork_and_wait(lambda: bytes(client.get_object(BUCKET, prefix + "small").read()), 30)
        out.append((status, text))
        return out

    status, text = fork_and_wait(child)
    assert status == 0, text
    assert text == repr(["refused", b"small", b"small", (0, repr(b"small"))])

    def drop_everything() -> str:
        # Dropping the parent's handles (a gc of garbage inherited from the parent) frees
        # nothing of the parent's CRT: no hang, no crash.
        nonlocal stream, writer
        del stream, writer
        gc.collect()
        return "ok"

    status, text = fork_and_wait(drop_everything)
    assert status == 0, text

    # The parent's transfers were never disturbed by the children.
    assert head + b"".join(bytes(c) for c in stream) == big
    writer.write(big[20 << 20 :])
    writer.close()
    assert client.get_object(BUCKET, prefix + "up").read() == big


_HELD_CHUNK_SCRIPT = """
import gc, os, sys, time
from s3torch import _crt
from tests.conftest import BUCKET, make_client

class Server:
    endpoint = sys.argv[1]

client = make_client(Server())
key = sys.argv[2]
data = os.urandom(24 << 20)
client.put(BUCKET, key, data)
chunks = list(client.get_stream(BUCKET, key))  # the stream is over; its part buffers are held
deadline = time.monotonic() + 30
while client._get_native().in_flight and time.monotonic() < deadline:  # its shutdown callback
    time.sleep(0.01)
assert client._get_native().in_flight == 0
# The CRT's buffer pool counts no tickets: suspending the client now would free the memory
# under these chunks, and releasing one later would lock a freed mutex (a hang) or crash.
assert _crt.prepare_fork() is False
pid = os.fork()  # the at-fork hook runs too
if pid == 0:
    os._exit(0)
assert os.waitpid(pid, 0)[1] == 0
assert b"".join(bytes(c) for c in chunks) == data  # still the bytes received
del chunks
gc.collect()
assert _crt.prepare_fork() is True  # nothing held: the client is suspended
assert client.get_object(BUCKET, key).read() == data  # and rebuilt on use
print("ok")
"""


def test_fork_while_stream_chunks_are_held(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """Chunks of a finished stream still hold CRT part buffers: a fork then must not suspend
    the client (free its buffer pool) under them, and dropping them afterwards must neither
    hang nor crash. Run in its own process, so a hang or a crash fails this test only."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-c", _HELD_CHUNK_SCRIPT, seaweed.endpoint, prefix + "held"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr


def test_interrupted_multipart_put_leaves_nothing_behind(seaweed, prefix: str, sigint_raises) -> None:  # type: ignore[no-untyped-def]
    import _thread

    client = make_client(seaweed)
    s3 = seaweed.boto3_client()
    data = bytearray(os.urandom(1 << 20)) * 96  # 96 MiB: a multipart upload of 12 parts
    attempted = []
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        for i in range(100):  # each PUT takes well over 0.2 s on this server
            attempted.append(f"{prefix}put-{i}")
            client.put(BUCKET, attempted[-1], data)
    timer.join()
    # No multipart upload stays behind, and every key is either absent or whole: only the
    # interrupted PUT may be absent (an interrupt that lands while CompleteMultipartUpload is
    # already on its way cannot take the object back, so it may be whole too).
    assert s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", []) == []
    for key in attempted[:-1]:
        assert client.head_object(BUCKET, key).size == len(data)
    try:
        size = client.head_object(BUCKET, attempted[-1]).size
    except FileNotFoundError:
        size = None
    assert size in (None, len(data))


def test_crt_log_file_keeps_every_line_up_to_a_kill(seaweed, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``S3TORCH_CRT_LOG_FILE`` is written a line at a time: a process that is killed (a crash,
    the OOM killer) leaves every line up to its end, the ones a diagnosis needs. The CRT's own
    file kept them in a 4 KiB buffer that died with the process."""
    import subprocess
    import sys
    import textwrap

    from s3torch._servers import ACCESS_KEY, SECRET_KEY

    log = tmp_path / "crt.log"
    script = textwrap.dedent(
        f"""
        import os, signal, time
        from s3torch import S3Client, S3ClientConfig, S3Exception
        cfg = S3ClientConfig(force_path_style=True, access_key_id={ACCESS_KEY!r}, secret_access_key={SECRET_KEY!r})
        c = S3Client({REGION!r}, endpoint={seaweed.endpoint!r}, s3client_config=cfg)
        try:
            c.get_object({BUCKET!r}, "no/such/key").read()
        except S3Exception:
            pass
        time.sleep(0.5)  # the CRT writes its lines from a thread of its own
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "S3TORCH_CRT_LOG": "error", "S3TORCH_CRT_LOG_FILE": str(log)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert "response status=404" in log.read_text(errors="replace")
