"""Credential sources of the AWS CRT's default chain that users already have, end to end
against SeaweedFS (which checks the signature of every request against its one key pair):

- keys in ``~/.aws/credentials`` (or ``~/.aws/config``), the default profile or the one
  ``$AWS_PROFILE`` names: until this test, never found unless ``profile=`` was given (an empty
  profile name went to the CRT as a name, so neither ``$AWS_PROFILE`` nor ``default`` was read);
- a profile's ``credential_process`` (aws-vault, granted, a company's own helper);
- a container's credentials endpoint with an authorization token, as EKS Pod Identity and ECS
  set it up (``AWS_CONTAINER_CREDENTIALS_FULL_URI``, ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE``).

Each source is shown to be the one that signed: a wrong key from it is refused."""

from __future__ import annotations

import contextlib
import http.server
import json
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import boto3
import pytest

from s3torch import S3Client, S3ClientConfig, S3NotFoundError, S3PermissionError
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from tests.conftest import BUCKET
from tests.faults.proxy import FaultProxy
from tests.faults.serving import reply, serving
from tests.faults.tls import PROXY_VARIABLES, ConnectProxy, TlsFront, make_ca
from tests.forking import fork_and_wait


@pytest.fixture
def chain(aws_home: Path) -> Path:
    """An environment with no credentials in it; returns the config file's path (not written)."""
    return aws_home / "config"


def _round_trip(client: S3Client, key: str) -> None:
    data = b"signed by the chain " * 1000
    client.put(BUCKET, key, data)
    buf = bytearray(len(data))
    assert client.get_into(BUCKET, key, buf) == len(data) and bytes(buf) == data


@pytest.mark.parametrize("how", ["default profile", "AWS_PROFILE", "AWS_DEFAULT_PROFILE", "config file", "profile="])
def test_keys_of_a_profile(seaweed: Any, prefix: str, chain: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    keys = f"aws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    wrong = f"aws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = not-the-secret\n"
    if how == "config file":
        chain.write_text(f"[default]\n{keys}\n[profile wrong]\n{wrong}")
    elif how == "default profile":
        (chain.parent / "credentials").write_text(f"[default]\n{keys}\n[wrong]\n{wrong}")
    else:
        (chain.parent / "credentials").write_text(f"[default]\n{wrong}\n[dev]\n{keys}\n[wrong]\n{wrong}")
    if how == "AWS_PROFILE":
        monkeypatch.setenv("AWS_PROFILE", "dev")
    if how == "AWS_DEFAULT_PROFILE":  # botocore reads it first, before $AWS_PROFILE
        monkeypatch.setenv("AWS_DEFAULT_PROFILE", "dev")
        monkeypatch.setenv("AWS_PROFILE", "wrong")
        assert boto3.session.Session().profile_name == "dev"
    cfg = S3ClientConfig(profile="dev" if how == "profile=" else None, max_attempts=1)
    _round_trip(S3Client(REGION, endpoint=seaweed.endpoint, s3client_config=cfg), prefix + "keys")
    monkeypatch.delenv("AWS_DEFAULT_PROFILE", raising=False)
    monkeypatch.setenv("AWS_PROFILE", "wrong")
    with pytest.raises(S3PermissionError):
        S3Client(REGION, endpoint=seaweed.endpoint, s3client_config=S3ClientConfig(max_attempts=1)).head_object(
            BUCKET, prefix + "keys"
        )


@pytest.mark.parametrize("named", ["config", "AWS_PROFILE"])
def test_credential_process(
    seaweed: Any, prefix: str, chain: Path, monkeypatch: pytest.MonkeyPatch, named: str
) -> None:
    helper = chain.parent / "helper.py"
    helper.write_text(
        "import json, sys\n"
        "secret = sys.argv[1]\n"
        f"print(json.dumps({{'Version': 1, 'AccessKeyId': {ACCESS_KEY!r}, 'SecretAccessKey': secret}}))\n"
    )
    chain.write_text(
        f"[profile good]\ncredential_process = {sys.executable} {helper} {SECRET_KEY}\n\n"
        f"[profile wrong]\ncredential_process = {sys.executable} {helper} not-the-secret\n"
    )
    if named == "AWS_PROFILE":
        monkeypatch.setenv("AWS_PROFILE", "good")
        cfg = S3ClientConfig(max_attempts=1)
    else:
        cfg = S3ClientConfig(profile="good", max_attempts=1)
    _round_trip(S3Client(REGION, endpoint=seaweed.endpoint, s3client_config=cfg), prefix + "proc")
    wrong = S3Client(REGION, endpoint=seaweed.endpoint, s3client_config=S3ClientConfig(profile="wrong", max_attempts=1))
    with pytest.raises(S3PermissionError):
        wrong.head_object(BUCKET, prefix + "proc")


class _JsonEndpoint(http.server.BaseHTTPRequestHandler):
    """A credentials endpoint: records (path, the token a request brought) in ``seen`` and
    answers ``body()`` as JSON to a request that brings ``token``, else ``refusal``."""

    token = ""
    refusal = 403
    seen: List[Tuple[str, str]] = []

    def brought(self) -> str:
        raise NotImplementedError

    def body(self) -> Any:
        raise NotImplementedError

    def do_GET(self) -> None:
        brought = self.brought()
        type(self).seen.append((self.path, brought))
        if brought != self.token:
            reply(self, self.refusal)
            return
        reply(self, 200, json.dumps(self.body()).encode(), "application/json")

    def log_message(self, *args: object) -> None:
        pass


class _Credentials(_JsonEndpoint):
    """A container credentials endpoint: the keys, to a request that brings the token. No
    session token: SeaweedFS would look the key up among its temporary ones."""

    secret = ""
    expiration = "2099-01-01T00:00:00Z"

    def brought(self) -> str:
        return self.headers.get("Authorization", "")

    def body(self) -> Any:
        return {"AccessKeyId": ACCESS_KEY, "SecretAccessKey": self.secret, "Expiration": self.expiration}


@pytest.fixture
def container_endpoint() -> Iterator[Tuple[str, type]]:
    handler = type("Handler", (_Credentials,), {"seen": []})
    with serving(handler) as url:
        yield f"{url}/v1/credentials", handler


@pytest.mark.parametrize("token_from", ["file", "variable"])
def test_container_credentials_with_a_token(
    seaweed: Any, prefix: str, chain: Path, monkeypatch: pytest.MonkeyPatch, container_endpoint: Any, token_from: str
) -> None:
    url, handler = container_endpoint
    handler.token, handler.secret = "pod-identity-token", SECRET_KEY
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", url)
    # A proxy set for everything, which cannot reach anything: the container's endpoint (link-local
    # on EKS and ECS) is reached directly, as boto3 reaches it.
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    if token_from == "file":
        # As Kubernetes projects it: no newline at the end (the CRT sends the file whole, and a
        # header with a newline in it is refused before it is sent).
        (chain.parent / "token").write_text("pod-identity-token")
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(chain.parent / "token"))
    else:
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "pod-identity-token")
    _round_trip(S3Client(REGION, endpoint=seaweed.endpoint, s3client_config=S3ClientConfig()), prefix + "pod")
    assert handler.seen and all(s == ("/v1/credentials", "pod-identity-token") for s in handler.seen), handler.seen
    _shared_then_asked_again(seaweed, prefix + "pod", handler, monkeypatch)


def _pod_identity(handler: Any, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    handler.token, handler.secret = "pod-identity-token", SECRET_KEY
    monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", url)
    monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "pod-identity-token")


def test_checkpoints_share_the_processs_credentials(
    seaweed: Any, prefix: str, chain: Path, monkeypatch: pytest.MonkeyPatch, container_endpoint: Any
) -> None:
    """Every DCP save and load makes a client of its own; under EKS Pod Identity, ECS or EC2
    each asked the metadata endpoint for credentials again (under IRSA, STS: a call per rank per
    checkpoint, against a quota shared by the account). A training loop's saves and its restore
    now ask once."""
    import torch
    import torch.distributed.checkpoint as dcp

    from s3torch.dcp import S3StorageReader, S3StorageWriter

    url, handler = container_endpoint
    _pod_identity(handler, url, monkeypatch)
    path = f"s3://{BUCKET}/{prefix}ckpt"
    for step in range(3):
        state = {"w": torch.full((64,), float(step))}
        dcp.save(state, storage_writer=S3StorageWriter(REGION, f"{path}/{step}", endpoint=seaweed.endpoint))
    out = {"w": torch.zeros(64)}
    dcp.load(out, storage_reader=S3StorageReader(REGION, f"{path}/2", endpoint=seaweed.endpoint))
    assert torch.equal(out["w"], torch.full((64,), 2.0))
    assert len(handler.seen) == 1, handler.seen


def _new_head(seaweed: Any, key: str, missing_ok: bool = False) -> None:
    """A HEAD by a new client: signed with what the chain gave it (a missing key is an answer too)."""
    client = S3Client(REGION, endpoint=seaweed.endpoint, s3client_config=S3ClientConfig(max_attempts=1))
    try:
        client.head_object(BUCKET, key)
    except S3NotFoundError:
        if not missing_ok:
            raise


def _shared_then_asked_again(seaweed: Any, key: str, handler: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials from an endpoint are shared by the clients of a process whose environment
    is the same (each DCP save makes a client: before, each asked the endpoint again); a
    changed environment gets its own; credentials S3 refused are not given to the next client."""
    asked = len(handler.seen)
    for _ in range(3):
        _new_head(seaweed, key)
    assert len(handler.seen) == asked, handler.seen
    handler.secret = "not-the-secret"
    monkeypatch.setenv("AWS_S3TORCH_TEST_GENERATION", "2")  # any AWS_* variable: another provider
    with pytest.raises(S3PermissionError):
        _new_head(seaweed, key)  # asked again, and signed with what it was given
    assert len(handler.seen) == asked + 1, handler.seen
    handler.secret = SECRET_KEY
    _new_head(seaweed, key)  # the refused credentials were dropped: asked again
    assert len(handler.seen) == asked + 2, handler.seen
    _new_head(seaweed, key)
    assert len(handler.seen) == asked + 2, handler.seen


def _settled() -> None:
    """Stop the CRT as a fork() does, once no transfer is in flight. A transfer counts until the
    CRT's shutdown callback, milliseconds after the call that made it returned; a fork in that
    window keeps the runtime running and its child starts without the process's credentials."""
    from s3torch import _crt

    deadline = time.monotonic() + 10
    while not _crt.prepare_fork():
        assert time.monotonic() < deadline, "transfers still in flight after 10 s"
        time.sleep(0.01)


def _size_read(reader: Any) -> int:
    return len(reader.read())


def test_dataloader_workers_and_their_parent_keep_the_processs_credentials(
    seaweed: Any, prefix: str, chain: Path, monkeypatch: pytest.MonkeyPatch, container_endpoint: Any
) -> None:
    """The CRT's threads are stopped before a fork(), and its providers with them: the parent
    after the fork and every DataLoader worker (at every epoch, workers not being persistent)
    asked for credentials again; under EKS IRSA, an STS call each. They now start from what the
    process had fetched, as boto3's credentials live on in a forked process."""
    from torch.utils.data import DataLoader

    from s3torch import S3MapDataset

    url, handler = container_endpoint
    _pod_identity(handler, url, monkeypatch)
    client = S3Client(REGION, endpoint=seaweed.endpoint, s3client_config=S3ClientConfig())
    for i in range(4):
        client.put(BUCKET, f"{prefix}data/{i}", b"x" * (i + 1))
    assert len(handler.seen) == 1
    uri = f"s3://{BUCKET}/{prefix}data/"
    ds = S3MapDataset.from_prefix(uri, region=REGION, endpoint=seaweed.endpoint, transform=_size_read)
    len(ds)  # listed here, before the workers are forked
    for _ in range(2):  # two epochs: the workers are forked again
        _settled()
        loader = DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork")
        assert sorted(loader) == [1, 2, 3, 4]
        client.put(BUCKET, prefix + "after-epoch", b"saved")  # the parent, after the fork
    assert len(handler.seen) == 1, handler.seen


def test_credentials_outlive_their_provider_leaving_the_cache(
    seaweed: Any, prefix: str, chain: Path, monkeypatch: pytest.MonkeyPatch, container_endpoint: Any
) -> None:
    """A process keeps providers for 8 settings at once; the credentials of one that leaves
    are handed to the next provider of its settings instead of being fetched again."""
    url, handler = container_endpoint
    _pod_identity(handler, url, monkeypatch)
    for generation in range(9):  # 9 environments: the first one's provider leaves the cache
        monkeypatch.setenv("AWS_S3TORCH_TEST_GENERATION", str(generation))
        _new_head(seaweed, prefix + "x", missing_ok=True)
    assert len(handler.seen) == 9, handler.seen
    monkeypatch.setenv("AWS_S3TORCH_TEST_GENERATION", "0")
    _new_head(seaweed, prefix + "x", missing_ok=True)
    assert len(handler.seen) == 9, handler.seen


@pytest.mark.parametrize("why", ["expiring within 5 minutes", "refused"])
def test_credentials_not_carried_across_a_fork(
    seaweed: Any, prefix: str, chain: Path, monkeypatch: pytest.MonkeyPatch, container_endpoint: Any, why: str
) -> None:
    """Credentials the CRT's cache would no longer hand out, and credentials S3 refused, are
    fetched again by a forked child."""
    url, handler = container_endpoint
    _pod_identity(handler, url, monkeypatch)
    key = prefix + "carried"
    if why == "refused":
        handler.secret = "not-the-secret"
        with pytest.raises(S3PermissionError):
            _new_head(seaweed, key)
        handler.secret = SECRET_KEY
    else:
        soon = time.gmtime(time.time() + 4 * 60)
        monkeypatch.setattr(handler, "expiration", time.strftime("%Y-%m-%dT%H:%M:%SZ", soon), raising=False)
        _new_head(seaweed, key, missing_ok=True)
    asked = len(handler.seen)
    status, text = fork_and_wait(lambda: _new_head(seaweed, key, missing_ok=True), 30)
    assert status == 0, text
    assert len(handler.seen) == asked + 1, handler.seen


STS_HOST = "sts.us-east-1.amazonaws.com"


def _a_role(role: str, chain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Tuple[Path, Path, Path]:
    """An environment whose credentials come from a role assumed at STS (no proxy set yet, no
    instance metadata): EKS IRSA's web identity (``role="web identity"``), or a profile's
    role_arn with a source profile's keys. Returns the authority (ca.pem, server.pem,
    server.key) STS's host is to be served with; $AWS_CA_BUNDLE trusts it."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    ca = make_ca(tmp_path / "ca", names=(STS_HOST,))
    if role == "web identity":
        token = tmp_path / "token"
        token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0cmFpbmVyIn0.c2ln")
        monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
        monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/trainer")
        monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "s3torch-test")
    else:
        chain.write_text(
            "[profile trainer]\nrole_arn = arn:aws:iam::123456789012:role/trainer\nsource_profile = base\n"
            "[profile base]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n"
        )
        monkeypatch.setenv("AWS_PROFILE", "trainer")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca[0]))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return ca


@pytest.mark.parametrize("role", ["web identity", "profile role_arn"])
def test_roles_are_assumed_through_the_proxy(
    moto: Any, prefix: str, chain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    """A role assumed where the only way out is the proxy the environment names: EKS IRSA (a web
    identity token and a role), or a profile's role_arn with a source profile's keys. It is
    assumed at STS through the proxy, as boto3 assumes it. Before, the CRT's chain fetched
    credentials directly, never through a proxy, and found none.

    Offline: the CONNECT proxy tunnels STS's host to TLS (a certificate for it from a throwaway
    authority, trusted through $AWS_CA_BUNDLE) in front of moto's STS; S3 is moto too, behind a
    recording proxy, which shows each request signed with the role's temporary keys."""
    ca = _a_role(role, chain, tmp_path, monkeypatch)
    with FaultProxy.in_front_of(moto.endpoint) as s3, TlsFront(moto.endpoint, ca[1], ca[2]) as tls:
        with ConnectProxy(("127.0.0.1", tls.port)) as tunnel:
            monkeypatch.setenv("HTTPS_PROXY", tunnel.endpoint)
            client = S3Client("us-east-1", endpoint=s3.endpoint, s3client_config=S3ClientConfig(force_path_style=True))
            _round_trip(client, prefix + "irsa")
    assert tunnel.asked == [f"{STS_HOST}:443"]  # STS, through the proxy; S3 (loopback) directly
    heads = s3.headers()
    assert heads
    for _, _, h in heads:
        key_id = h["authorization"].split("Credential=", 1)[1].split("/", 1)[0]
        assert key_id.startswith("ASIA") and h.get("x-amz-security-token"), h  # the role's temporary keys


class _ThrottlingSts(http.server.BaseHTTPRequestHandler):
    """STS refusing its first ``throttled`` calls as it refuses past the account's rate (400,
    ``Throttling``), then handing out a role's temporary keys for AssumeRoleWithWebIdentity
    (IRSA) or AssumeRole (a profile's role_arn). Records each call's action in ``seen``."""

    throttled = 0
    seen: List[str] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        action = dict(p.split("=", 1) for p in body.split("&") if "=" in p).get("Action", "")
        type(self).seen.append(action)
        if len(self.seen) <= self.throttled:
            error = "<Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
            self._send(400, f"<ErrorResponse>{error}<RequestId>t</RequestId></ErrorResponse>")
            return
        keys = (
            "<Credentials><AccessKeyId>ASIATHROTTLEDROLE001</AccessKeyId><SecretAccessKey>"
            + "s" * 40
            + "</SecretAccessKey>"
            "<SessionToken>role-session</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>"
        )
        self._send(200, f"<{action}Response><{action}Result>{keys}</{action}Result></{action}Response>")

    def _send(self, status: int, text: str) -> None:
        reply(self, status, text.encode(), "text/xml")

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("role", ["web identity", "profile role_arn"])
def test_a_throttling_sts_is_asked_again(
    moto: Any, prefix: str, chain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    """STS refuses calls past the account's rate (400, Throttling): a job's ranks and their
    DataLoader workers starting together under EKS IRSA meet it. boto3 asks again after a
    backoff; the CRT's web identity provider did not (it retries two other codes), nor its
    AssumeRole one (a 400 is not retried), so the first request failed for want of
    credentials. Both are now asked again, with backoff, a bounded number of times."""
    ca = _a_role(role, chain, tmp_path, monkeypatch)
    handler = type("Sts", (_ThrottlingSts,), {"seen": [], "throttled": 2})
    with serving(handler) as sts, TlsFront(sts, ca[1], ca[2]) as tls:
        with ConnectProxy(("127.0.0.1", tls.port)) as tunnel, FaultProxy.in_front_of(moto.endpoint) as s3:
            monkeypatch.setenv("HTTPS_PROXY", tunnel.endpoint)
            client = S3Client("us-east-1", endpoint=s3.endpoint, s3client_config=S3ClientConfig(force_path_style=True))
            _round_trip(client, prefix + "throttled")
    action = "AssumeRoleWithWebIdentity" if role == "web identity" else "AssumeRole"
    assert handler.seen == [action] * 3, handler.seen
    assert s3.headers() and all("Credential=ASIATHROTTLEDROLE001/" in h["authorization"] for _, _, h in s3.headers())


def test_a_role_sts_keeps_refusing_fails_after_five_attempts(
    moto: Any, prefix: str, chain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking again is bounded: a role STS refuses every time (here, throttled without end) is
    asked 5 times by one fetch (about 7.5 s of backoff), then the request fails for want of
    credentials, saying where they were looked for."""
    ca = _a_role("web identity", chain, tmp_path, monkeypatch)
    handler = type("Sts", (_ThrottlingSts,), {"seen": [], "throttled": 1_000})
    with serving(handler) as sts, TlsFront(sts, ca[1], ca[2]) as tls, ConnectProxy(("127.0.0.1", tls.port)) as tunnel:
        monkeypatch.setenv("HTTPS_PROXY", tunnel.endpoint)
        client = S3Client("us-east-1", endpoint=moto.endpoint, s3client_config=S3ClientConfig(force_path_style=True))
        with pytest.raises(
            S3PermissionError,
            match=r"AWS_AUTH_SIGNING_NO_CREDENTIALS.*role/trainer \(\$AWS_ROLE_ARN.*could not be assumed at STS in 5",
        ):
            client.head_object(BUCKET, prefix + "never")
    assert handler.seen == ["AssumeRoleWithWebIdentity"] * 5, handler.seen


SSO_HOST = "portal.sso.us-east-1.amazonaws.com"
SSO_PROFILES = """
[profile dev]
sso_session = corp
sso_account_id = 111122223333
sso_role_name = ML

[profile legacy]
sso_start_url = https://corp.awsapps.com/start
sso_region = us-east-1
sso_account_id = 111122223333
sso_role_name = ML

[sso-session corp]
sso_start_url = https://corp.awsapps.com/start
sso_region = us-east-1
"""


class _Portal(_JsonEndpoint):
    """The SSO portal's GetRoleCredentials: the role's temporary keys for the bearer token
    `aws sso login` cached, else 401."""

    token = "cached-access-token"
    refusal = 401

    def brought(self) -> str:
        return self.headers.get("x-amz-sso_bearer_token", "")

    def body(self) -> Any:
        creds = {"accessKeyId": "ASIASSOROLEKEY000001", "secretAccessKey": "s" * 40, "sessionToken": "role-session"}
        return {"roleCredentials": {**creds, "expiration": 4102444800000}}  # 2100, in ms


@pytest.mark.parametrize("how", ["sso-session, AWS_PROFILE", "sso-session, profile=", "legacy, AWS_PROFILE"])
def test_an_sso_profile_signed_in_with_aws_sso_login(
    moto: Any, prefix: str, chain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A profile that signs in through AWS IAM Identity Center (`aws sso login`), the way AWS
    recommends people sign in: the token the CLI cached (~/.aws/sso/cache/<sha1>.json) is
    exchanged at the SSO portal for the role's temporary keys, as boto3 does, and every request
    is signed with them. Before, the CRT's chain had no SSO provider: no credentials, and an
    error saying to export them by hand.

    Offline: the portal's host is reached through $HTTPS_PROXY (a CONNECT proxy tunnelling it to
    TLS with a certificate for it, trusted through $AWS_CA_BUNDLE) in front of a stub portal. S3
    is moto (SeaweedFS refuses session tokens) behind a recording proxy."""
    import hashlib

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    chain.write_text(SSO_PROFILES)
    profile = "legacy" if how.startswith("legacy") else "dev"
    cache_key = "https://corp.awsapps.com/start" if profile == "legacy" else "corp"
    cache = tmp_path / "home" / ".aws" / "sso" / "cache"
    cache.mkdir(parents=True)
    token = {"accessToken": "cached-access-token", "expiresAt": "2099-01-01T00:00:00Z", "region": "us-east-1"}
    (cache / (hashlib.sha1(cache_key.encode()).hexdigest() + ".json")).write_text(json.dumps(token))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    ca = make_ca(tmp_path / "ca", names=(SSO_HOST,))
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca[0]))
    config = S3ClientConfig(profile=profile) if how.endswith("profile=") else S3ClientConfig()
    if how.endswith("AWS_PROFILE"):
        monkeypatch.setenv("AWS_PROFILE", profile)
    handler = type("Portal", (_Portal,), {"seen": []})
    with serving(handler) as portal, TlsFront(portal, ca[1], ca[2]) as tls:
        with ConnectProxy(("127.0.0.1", tls.port)) as tunnel, FaultProxy.in_front_of(moto.endpoint) as s3:
            monkeypatch.setenv("HTTPS_PROXY", tunnel.endpoint)
            _round_trip(S3Client(REGION, endpoint=s3.endpoint, s3client_config=config), prefix + "sso")
    assert tunnel.asked and set(tunnel.asked) == {f"{SSO_HOST}:443"}
    assert s3.headers() and all(
        "Credential=ASIASSOROLEKEY000001/" in h["authorization"] and h["x-amz-security-token"] == "role-session"
        for _, _, h in s3.headers()
    )
    assert handler.seen and all(
        s == ("/federation/credentials?account_id=111122223333&role_name=ML", "cached-access-token")
        for s in handler.seen
    ), handler.seen


OIDC_HOST = "oidc.us-east-1.amazonaws.com"


class _SsoServices(http.server.BaseHTTPRequestHandler):
    """The SSO portal (GET: the role's keys for an access token the OIDC stub issued) and the
    SSO OIDC service (POST /token: CreateToken with the current refresh token gives a new access
    token, ``fresh-N``, and rotates the refresh token, ``rt-N``; any other gets invalid_grant)."""

    expires_in = 8 * 3600
    refresh_token = "rt-0"
    issued: List[str] = []
    oidc_seen: List[Any] = []
    portal_seen: List[str] = []

    def _answer(self, status: int, doc: Any) -> None:
        reply(self, status, json.dumps(doc).encode(), "application/json")

    def do_GET(self) -> None:
        token = self.headers.get("x-amz-sso_bearer_token", "")
        type(self).portal_seen.append(token)
        if token not in self.issued:
            self._answer(401, {"message": "Session token not found or invalid"})
            return
        creds = {"accessKeyId": "ASIASSOROLEKEY000001", "secretAccessKey": "s" * 40, "sessionToken": "role-session"}
        self._answer(200, {"roleCredentials": {**creds, "expiration": 4102444800000}})

    def do_POST(self) -> None:
        cls = type(self)
        doc = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        cls.oidc_seen.append((self.path, doc))
        if self.path != "/token" or doc.get("refreshToken") != cls.refresh_token:
            self._answer(400, {"error": "invalid_grant"})
            return
        n = len(cls.issued) + 1
        cls.issued.append(f"fresh-{n}")
        cls.refresh_token = f"rt-{n}"
        self._answer(200, {"accessToken": f"fresh-{n}", "expiresIn": cls.expires_in, "refreshToken": f"rt-{n}"})

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _sso_services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chain: Path, token: dict) -> Iterator[Any]:
    """The `aws sso login` state of profile dev (its token cached as ``token``), and the SSO
    portal and OIDC service reached through a CONNECT proxy; yields (services, cache file)."""
    import hashlib

    from s3torch import _sso_refresh

    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    chain.write_text(SSO_PROFILES)
    cache = tmp_path / "home" / ".aws" / "sso" / "cache"
    cache.mkdir(parents=True)
    path = cache / (hashlib.sha1(b"corp").hexdigest() + ".json")
    path.write_text(json.dumps(token))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_PROFILE", "dev")
    ca = make_ca(tmp_path / "ca", names=(SSO_HOST, OIDC_HOST))
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca[0]))
    services = type("Sso", (_SsoServices,), {"issued": [], "oidc_seen": [], "portal_seen": []})
    with serving(services) as url, TlsFront(url, ca[1], ca[2]) as tls, ConnectProxy(("127.0.0.1", tls.port)) as tunnel:
        monkeypatch.setenv("HTTPS_PROXY", tunnel.endpoint)
        try:
            yield services, path
        finally:
            _sso_refresh.stop_all()
    assert set(tunnel.asked) <= {f"{SSO_HOST}:443", f"{OIDC_HOST}:443"}


SIGNED_IN = {
    "startUrl": "https://corp.awsapps.com/start",
    "region": "us-east-1",
    "accessToken": "expired-token",
    "expiresAt": "2020-01-01T00:00:00Z",
    "clientId": "client-id",
    "clientSecret": "client-secret",
    "refreshToken": "rt-0",
    "registrationExpiresAt": "2099-01-01T00:00:00Z",
}


def test_an_expired_sso_sign_in_is_refreshed_as_boto3_refreshes_it(
    moto: Any, prefix: str, chain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cached access token has expired; its refresh token has not. The client refreshes it
    at the OIDC service (CreateToken), writes it back where the CRT (and the AWS CLI) read it,
    and every request is signed with the role keys the new token gets. Before, the CRT read the
    expired token and the client had no credentials."""
    import stat
    import time

    with _sso_services(tmp_path, monkeypatch, chain, SIGNED_IN) as (sso, path):
        with FaultProxy.in_front_of(moto.endpoint) as s3:
            _round_trip(S3Client(REGION, endpoint=s3.endpoint), prefix + "sso-refreshed")
    body = {
        "grantType": "refresh_token",
        "clientId": "client-id",
        "clientSecret": "client-secret",
        "refreshToken": "rt-0",
    }
    assert sso.oidc_seen == [("/token", body)]
    assert sso.portal_seen and set(sso.portal_seen) == {"fresh-1"}
    cached = json.loads(path.read_text())
    assert {k: v for k, v in cached.items() if k not in ("accessToken", "refreshToken", "expiresAt")} == {
        k: v for k, v in SIGNED_IN.items() if k not in ("accessToken", "refreshToken", "expiresAt")
    }
    assert cached["accessToken"] == "fresh-1" and cached["refreshToken"] == "rt-1"
    expires = time.mktime(time.strptime(cached["expiresAt"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert abs(expires - (time.time() + 8 * 3600)) < 120
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_sign_in_is_refreshed_again_before_it_expires(
    chain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long job: the keeper thread refreshes the token again before each expiry (here a
    window of 2 s and tokens of 4 s), each time with the refresh token the last one rotated."""
    import time

    from s3torch import _sso_refresh

    monkeypatch.setattr(_sso_refresh, "REFRESH_WINDOW_S", 2)
    with _sso_services(tmp_path, monkeypatch, chain, SIGNED_IN) as (sso, path):
        sso.expires_in = 4
        S3Client(REGION)
        deadline = time.monotonic() + 20
        while len(sso.issued) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(sso.issued) >= 3, sso.oidc_seen
        assert [doc["refreshToken"] for _, doc in sso.oidc_seen[:3]] == ["rt-0", "rt-1", "rt-2"]
        assert json.loads(path.read_text())["accessToken"] in sso.issued


def test_a_refresh_the_service_refuses_is_logged_and_changes_nothing(
    chain: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    revoked = {**SIGNED_IN, "refreshToken": "revoked"}
    with _sso_services(tmp_path, monkeypatch, chain, revoked) as (sso, path):
        with caplog.at_level("WARNING", logger="s3torch"):
            S3Client(REGION)  # made all the same: requests fail once they need the expired token
        assert json.loads(path.read_text()) == revoked
    assert [doc["refreshToken"] for _, doc in sso.oidc_seen][:1] == ["revoked"]
    assert any(
        "could not refresh the IAM Identity Center sign-in of sso-session 'corp'" in r.message for r in caplog.records
    )
    assert not any("client-secret" in r.message or "revoked" in r.message for r in caplog.records)  # no secret logged


@pytest.mark.parametrize("profile_from", ["default", "AWS_PROFILE", "AWS_DEFAULT_PROFILE"])
def test_no_credentials_says_where_they_were_looked_for(
    chain: Path, monkeypatch: pytest.MonkeyPatch, profile_from: str
) -> None:
    """Before, "check the credentials (keys, profile, AWS_* environment)": which profile, in
    which files, went unsaid (with it, the profile-name bug above would have shown at once)."""
    (chain.parent / "credentials").write_text("[other]\naws_access_key_id = a\naws_secret_access_key = b\n")
    name = {"default": "default", "AWS_PROFILE": "ghost", "AWS_DEFAULT_PROFILE": "ghost"}[profile_from]
    if profile_from != "default":
        monkeypatch.setenv(profile_from, name)
    chain.write_text(
        f"[profile {name}]\nregion = us-east-1\n" if name != "default" else "[default]\nregion = eu-west-1\n"
    )
    cfg = S3ClientConfig(max_attempts=1)
    with pytest.raises(S3PermissionError) as ei:
        S3Client(REGION, endpoint="http://127.0.0.1:1", s3client_config=cfg).head_object(BUCKET, "k")
    which = "" if profile_from == "default" else f" (from ${profile_from})"
    assert f"profile '{name}'{which} in {chain.parent / 'credentials'} and {chain}" in str(ei.value)
    assert "the default chain found none" in str(ei.value)
