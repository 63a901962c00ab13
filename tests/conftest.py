"""Shared fixtures: real S3 servers on 127.0.0.1 (SeaweedFS and moto), started once per
session and stopped at the end. No test needs credentials or reaches beyond loopback."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

# Never let a credentials chain reach for instance metadata (a non-loopback address).
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
# Nor read the developer's AWS settings: a profile's endpoint_url or addressing_style, or an
# endpoint in the environment, would send every client that names no endpoint elsewhere.
# Tests of those settings set them themselves.
_NO_FILE = str(Path(tempfile.gettempdir()) / "s3torch-tests-no-aws-config")
os.environ.update(AWS_CONFIG_FILE=_NO_FILE, AWS_SHARED_CREDENTIALS_FILE=_NO_FILE)
for _name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
    os.environ.pop(_name, None)
# The CRT's own error lines (docs/engine.md) go to a file, this process's and its children's
# (appended); a test that fails shows those written while it ran ("Captured CRT log"), which
# name the CRT check behind an error such as a rare AWS_ERROR_INVALID_STATE. Read once, when the
# first client starts the runtime. Unless the caller asked for a log of their own.
CRT_LOG: Optional[Path] = None
if "S3TORCH_CRT_LOG" not in os.environ:
    CRT_LOG = Path(tempfile.gettempdir()) / f"s3torch-tests-crt-{os.getpid()}.log"
    os.environ.update(S3TORCH_CRT_LOG="error", S3TORCH_CRT_LOG_FILE=str(CRT_LOG))

from s3torch import S3Client, S3ClientConfig, _crt  # noqa: E402
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY, MotoServer, SeaweedFS, free_port  # noqa: E402
from tests.faults.proxy import Blackhole, FaultProxy  # noqa: E402

BUCKET = "s3torch-test"

# tests/gpu needs CUDA; on machines without it (CI) the folder is not collected at all.
import torch  # noqa: E402

collect_ignore = [] if torch.cuda.is_available() else ["gpu"]


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedFS]:
    with SeaweedFS(buckets=(BUCKET,)) as srv:
        yield srv


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoServer]:
    with MotoServer() as srv:
        srv.create_bucket(BUCKET)
        yield srv


@pytest.fixture
def proxy(seaweed: SeaweedFS) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the session's SeaweedFS (tests/faults/proxy.py)."""
    with FaultProxy.in_front_of(seaweed.endpoint) as p:
        yield p


@pytest.fixture(params=["seaweed", "moto"])
def server(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Each conformance test runs once per backend."""
    return request.getfixturevalue(request.param)


def never_answered_endpoint() -> str:
    """A closed port on 127.0.0.1 that no server has answered this process on. free_port()
    alone can hand back the port of a server an earlier test ran: that endpoint is then known
    to be right here (``_crt.answered_endpoints()``), and a request to it gets the long retry
    budget instead of the fast failure a never-answered endpoint gets."""
    answered = set(_crt.answered_endpoints())
    while True:
        endpoint = f"http://127.0.0.1:{free_port()}"
        if endpoint not in answered:
            return endpoint


def never_answered_blackhole() -> Blackhole:
    """A Blackhole (accepts, never answers) on a port no server has answered this process on
    (never_answered_endpoint says why); the caller closes it."""
    answered = set(_crt.answered_endpoints())
    refused: List[Blackhole] = []  # held while choosing, so the kernel hands out other ports
    try:
        while True:
            hole = Blackhole()
            if hole.endpoint not in answered:
                return hole
            refused.append(hole)
    finally:
        for h in refused:
            h.close()


def make_client(server, **overrides) -> S3Client:  # type: ignore[no-untyped-def]
    cfg = dict(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    cfg.update(overrides)
    return S3Client(REGION, endpoint=server.endpoint, s3client_config=S3ClientConfig(**cfg))


@pytest.fixture
def client(server) -> S3Client:  # type: ignore[no-untyped-def]
    return make_client(server)


# What the AWS SDKs read from the environment that a test of the shared files or of the
# credential chain must not inherit: credentials and their sources, profile, endpoint, region.
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


@pytest.fixture
def aws_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An AWS setup of the test's own: none of AWS_VARIABLES set, the shared config file at
    ``<dir>/config`` and the credentials file at ``<dir>/credentials`` (neither written yet).
    Returns the directory."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    return tmp_path


@pytest.fixture
def seaweed_env(seaweed: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> SeaweedFS:
    """The session's SeaweedFS named by the environment, endpoint, region and keys, as a
    user's shell would name it to the command line. Returns the server."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    return seaweed


@pytest.fixture
def prefix() -> str:
    """A fresh key prefix per test, so tests share a bucket without seeing each other."""
    return f"t/{uuid.uuid4().hex[:12]}/"


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    """Test modules with a ``background_build()`` (the release wheel, the fuzz target): their
    builds start now, in the background at the lowest CPU priority, and their tests run last,
    so the builds use the CPU the rest of the suite leaves idle (tests/background_builds.py)."""
    from tests.background_builds import RUNNER

    modules = []
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and hasattr(module, "background_build") and module not in modules:
            modules.append(module)
    if not modules or config.getoption("collectonly"):
        return
    items.sort(key=lambda item: getattr(item, "module", None) in modules)  # stable: the rest keep their order
    RUNNER.start([m.background_build() for m in modules])


_CRT_LOG_AT = pytest.StashKey[int]()  # where the CRT log ended when a test began


def _crt_log_size() -> int:
    try:
        return CRT_LOG.stat().st_size if CRT_LOG is not None else 0
    except FileNotFoundError:
        return 0


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_CRT_LOG_AT] = _crt_log_size()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    at = item.stash.get(_CRT_LOG_AT, None)
    if CRT_LOG is None or at is None or not report.failed:
        return
    time.sleep(0.2)  # the CRT writes its lines from a thread of its own
    if _crt_log_size() <= at:
        return
    with open(CRT_LOG, "rb") as f:
        f.seek(at)
        text = f.read().decode("utf-8", "replace")
    report.sections.append(("Captured CRT log", text[-20000:]))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if CRT_LOG is not None:
        CRT_LOG.unlink(missing_ok=True)
