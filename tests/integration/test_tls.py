"""A private TLS endpoint: a certificate authority of its own (``ca_file``, or
``$AWS_CA_BUNDLE`` as boto3 reads it), and reached through an HTTPS proxy (a CONNECT tunnel).

The endpoint is :class:`tests.faults.tls.TlsFront`, TLS with a throwaway authority's
certificate in front of SeaweedFS."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator, Tuple

import pytest

from s3torch import S3Client, S3ClientConfig
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from tests.conftest import BUCKET
from tests.faults.tls import PROXY_VARIABLES, ConnectProxy, TlsFront, make_ca

PROXIED_NAME = "s3.proxied.invalid"  # never resolves: only a tunnel reaches it


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path, Path]:
    return make_ca(tmp_path_factory.mktemp("ca"), names=(PROXIED_NAME,))


@pytest.fixture
def tls(seaweed: Any, ca: Tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[TlsFront]:
    for name in ("AWS_CA_BUNDLE", *PROXY_VARIABLES):
        monkeypatch.delenv(name, raising=False)
    with TlsFront(seaweed.endpoint, ca[1], ca[2]) as front:
        yield front


def _client(endpoint: str, **kw: Any) -> S3Client:
    cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, **kw)
    return S3Client(REGION, endpoint=endpoint, s3client_config=cfg)


def _round_trip(client: S3Client, key: str) -> None:
    data = b"over TLS " * 100_000  # 900 KB
    client.put(BUCKET, key, data)
    buf = bytearray(len(data))
    assert client.get_into(BUCKET, key, buf) == len(data) and bytes(buf) == data


def test_ca_file_trusts_a_private_authority(tls: TlsFront, ca: Tuple[Path, Path, Path], prefix: str) -> None:
    _round_trip(_client(tls.endpoint, ca_file=str(ca[0])), prefix + "ca-file")


def test_a_ca_file_is_read_again_once_it_changes(
    tls: TlsFront, ca: Tuple[Path, Path, Path], prefix: str, tmp_path: Path
) -> None:
    """Clients of a process share the TLS context of their CA file (parsing it took 10-15 ms of
    every new client's first request), keyed by the file's bytes: a file replaced at the same
    path is read again, never trusted as it was."""
    pem = tmp_path / "ca.pem"
    pem.write_bytes(ca[0].read_bytes())
    for n in range(2):
        _round_trip(_client(tls.endpoint, ca_file=str(pem)), prefix + f"shared-{n}")
    pem.write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match="cannot use CA file"):
        _client(tls.endpoint, ca_file=str(pem)).head_object(BUCKET, prefix + "shared-0")


def test_an_untrusted_certificate_fails_once_and_says_why(seaweed: Any, ca: Tuple[Path, Path, Path]) -> None:
    """Without the authority, the system's trust store does not know the certificate. s2n
    reports a failed handshake only after a random 10-30 s delay (its blinding), so:

    - a first request (the endpoint never answered: the 8 s watchdog ends it) said "it takes
      connections but never responds", which sent users looking at the server;
    - a request to an endpoint known to be right (``known_endpoint``, or one that had answered
      before its certificate changed) retried the handshake for ``retry_timeout_s`` (120 s),
      each try waiting out the delay again.

    Both now fail after one handshake, naming TLS and what to set. The two run side by side
    (two endpoints: what the process knows is kept per endpoint)."""
    import threading

    from s3torch import S3ConnectionError

    results = {}

    def head(name: str, client: S3Client) -> None:
        began = time.monotonic()
        try:
            client.head_object(BUCKET, "any")
        except Exception as e:  # noqa: BLE001 - checked below
            results[name] = (e, time.monotonic() - began)

    with TlsFront(seaweed.endpoint, ca[1], ca[2]) as first, TlsFront(seaweed.endpoint, ca[1], ca[2]) as known:
        threads = [
            threading.Thread(target=head, args=("first", _client(first.endpoint))),
            threading.Thread(target=head, args=("known", _client(known.endpoint, known_endpoint=True))),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(200)
    for name in ("first", "known"):
        error, took = results[name]
        assert isinstance(error, S3ConnectionError), (name, error)
        assert "TLS handshake with the endpoint failed" in str(error) and "AWS_CA_BUNDLE" in str(error), (name, error)
        assert took < 60, (name, took)  # one handshake and s2n's delay; retrying took retry_timeout_s


def test_aws_ca_bundle_is_read_as_boto3_reads_it(
    tls: TlsFront, ca: Tuple[Path, Path, Path], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(ca[0]))
    _round_trip(_client(tls.endpoint), prefix + "bundle")


def test_the_profiles_ca_bundle_is_read_as_boto3_reads_it(
    tls: TlsFront, ca: Tuple[Path, Path, Path], prefix: str, aws_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ca_bundle`` in the profile, after $AWS_CA_BUNDLE, as botocore's config chain has it."""
    import boto3

    (aws_home / "config").write_text(f"[profile private]\nca_bundle = {ca[0]}\n")
    monkeypatch.setenv("AWS_PROFILE", "private")
    assert boto3.session.Session()._session.get_config_variable("ca_bundle") == str(ca[0])
    _round_trip(_client(tls.endpoint), prefix + "profile-bundle")
    monkeypatch.setenv("AWS_CA_BUNDLE", str(aws_home / "nowhere.pem"))  # the variable wins, as in botocore
    assert boto3.session.Session()._session.get_config_variable("ca_bundle") == str(aws_home / "nowhere.pem")
    with pytest.raises(ValueError, match="nowhere.pem"):
        _client(tls.endpoint).head_object(BUCKET, "x")


def test_a_missing_aws_ca_bundle_is_named(tls: TlsFront, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_CA_BUNDLE", str(tmp_path / "nowhere.pem"))
    with pytest.raises(ValueError, match="AWS_CA_BUNDLE"):
        _client(tls.endpoint).head_object(BUCKET, "x")


def test_https_goes_through_the_proxy_in_a_connect_tunnel(
    tls: TlsFront, ca: Tuple[Path, Path, Path], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``$HTTPS_PROXY`` for an https endpoint: a CONNECT to the endpoint's host and port, then
    TLS with the endpoint itself inside the tunnel (the certificate checked against its name)."""
    with ConnectProxy(("127.0.0.1", tls.port)) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.endpoint)
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # not for https endpoints
        _round_trip(_client(f"https://{PROXIED_NAME}:{tls.port}", ca_file=str(ca[0])), prefix + "tunnel")
    assert proxy.asked and set(proxy.asked) == {f"{PROXIED_NAME}:{tls.port}"}
