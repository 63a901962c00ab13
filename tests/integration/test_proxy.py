"""A proxy named by the environment ($HTTP_PROXY / $HTTPS_PROXY, $NO_PROXY), as boto3 follows
it: requests go through it, except to hosts $NO_PROXY names and to loopback endpoints, and
not at all with ``proxy_from_env=False``.

The proxy here is the test suite's FaultProxy in front of SeaweedFS: a forwarding proxy gets
each request with its absolute URL (``GET http://host:port/bucket/key``) and relays it to
SeaweedFS, whatever the host. The endpoint's host does not resolve, so only a request that
went through the proxy can succeed."""

from __future__ import annotations

from typing import Any

import pytest

from s3torch import S3Client, S3ClientConfig, S3ConnectionError, S3Exception
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from tests.conftest import BUCKET
from tests.faults.proxy import FaultProxy
from tests.faults.tls import PROXY_VARIABLES

UNRESOLVABLE = "http://s3.proxied.invalid:8333"  # .invalid never resolves (RFC 2606)


def _client(endpoint: str, **kw: Any) -> S3Client:
    cfg = S3ClientConfig(
        force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, max_attempts=1, **kw
    )
    return S3Client(REGION, endpoint=endpoint, s3client_config=cfg)


@pytest.fixture
def proxy(seaweed: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with FaultProxy.in_front_of(seaweed.endpoint) as p:
        monkeypatch.setenv("HTTP_PROXY", p.endpoint)
        yield p


def test_requests_go_through_the_proxy_in_the_environment(proxy: Any, prefix: str) -> None:
    client = _client(UNRESOLVABLE)
    data = b"through the proxy " * 4096
    client.put(BUCKET, prefix + "obj", data)
    buf = bytearray(len(data))
    assert client.get_into(BUCKET, prefix + "obj", buf) == len(data) and bytes(buf) == data
    # A forwarding proxy is sent the absolute URL; every request went through it.
    assert proxy.targets() and all(t.startswith(f"{UNRESOLVABLE}/{BUCKET}/") for t in proxy.targets())


def test_lowercase_http_proxy_is_read_too(proxy: Any, prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.setenv("http_proxy", proxy.endpoint)
    _client(UNRESOLVABLE).put(BUCKET, prefix + "obj", b"x")
    assert proxy.requests == 1


@pytest.mark.parametrize("no_proxy", ["s3.proxied.invalid", ".proxied.invalid", "*"])
def test_no_proxy_hosts_are_reached_directly(
    proxy: Any, prefix: str, monkeypatch: pytest.MonkeyPatch, no_proxy: str
) -> None:
    monkeypatch.setenv("NO_PROXY", no_proxy)
    with pytest.raises(S3ConnectionError, match="DNS"):  # tried directly: the host does not resolve
        _client(UNRESOLVABLE).head_object(BUCKET, prefix + "obj")
    assert proxy.requests == 0


def test_proxy_from_env_false_ignores_it(proxy: Any, prefix: str) -> None:
    with pytest.raises(S3ConnectionError, match="DNS"):
        _client(UNRESOLVABLE, proxy_from_env=False).head_object(BUCKET, prefix + "obj")
    assert proxy.requests == 0


def test_loopback_endpoints_never_go_through_a_proxy(proxy: Any, seaweed: Any, prefix: str) -> None:
    """The proxy's own loopback is not this machine's: a local server (a test fixture,
    ``s3torch serve``, the demo) is reached directly even with a proxy set for everything."""
    port = seaweed.endpoint.rsplit(":", 1)[1]
    for endpoint in (seaweed.endpoint, f"http://localhost:{port}"):
        client = _client(endpoint)
        client.put(BUCKET, prefix + "local", b"direct")
        assert client.head_object(BUCKET, prefix + "local").size == 6
    assert proxy.requests == 0


@pytest.mark.parametrize("style", ["path", "auto"])
def test_a_profiles_endpoint_and_addressing_style(
    proxy: Any, prefix: str, aws_home: Any, monkeypatch: pytest.MonkeyPatch, style: str
) -> None:
    """The shared config file as AWS CLI users of MinIO and the like have it: the profile names
    the endpoint and path-style addressing. Requests go to that endpoint (through the proxy: its
    host does not resolve) with the bucket in the path; SeaweedFS, which knows no bucket
    subdomains, answers only those. Before, both settings were ignored: requests went to AWS."""
    (aws_home / "config").write_text(
        f"[profile minio]\nendpoint_url = {UNRESOLVABLE}\ns3 =\n  addressing_style = {style}\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "minio")
    cfg = S3ClientConfig(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, max_attempts=1)
    client = S3Client(REGION, s3client_config=cfg)
    if style == "path":
        client.put(BUCKET, prefix + "obj", b"profile")
        assert client.head_object(BUCKET, prefix + "obj").size == 7
        assert proxy.targets() and all(t.startswith(f"{UNRESOLVABLE}/{BUCKET}/") for t in proxy.targets())
    else:  # the bucket in the host name, which the server behind does not serve
        with pytest.raises(S3Exception):
            client.put(BUCKET, prefix + "obj", b"profile")
        assert proxy.targets() == [f"http://{BUCKET}.{UNRESOLVABLE[7:]}/{prefix}obj"]


def test_a_local_server_starts_and_answers_with_a_proxy_that_cannot_reach_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy set for everything (a corporate shell) that cannot reach this machine's loopback:
    port 9 of loopback, where nothing listens. The demo (README command 1) and ``s3torch serve``
    start such a server; before, its readiness check went through the proxy and timed out
    after 60 s, and s3torch's own requests to it went through the proxy too."""
    from s3torch._servers import SeaweedFS

    dead = "http://127.0.0.1:9"
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", dead)
    monkeypatch.setenv("HTTPS_PROXY", dead)
    with SeaweedFS(buckets=("proxied",), startup_timeout=30) as srv:
        client = _client(srv.endpoint)
        client.put("proxied", "k", b"direct")
        assert client.head_object("proxied", "k").size == 6
        assert srv.boto3_client().head_object(Bucket="proxied", Key="k")["ContentLength"] == 6


@pytest.mark.parametrize(
    "region, env, host",
    [
        ("us-east-1", {}, "s3.us-east-1.amazonaws.com"),
        ("cn-north-1", {}, "s3.cn-north-1.amazonaws.com.cn"),
        ("us-gov-west-1", {"AWS_USE_FIPS_ENDPOINT": "true"}, "s3-fips.us-gov-west-1.amazonaws.com"),
        ("eu-west-1", {"AWS_USE_DUALSTACK_ENDPOINT": "TRUE"}, "s3.dualstack.eu-west-1.amazonaws.com"),
        (
            "us-east-2",
            {"AWS_USE_FIPS_ENDPOINT": "true", "AWS_USE_DUALSTACK_ENDPOINT": "true"},
            "s3-fips.dualstack.us-east-2.amazonaws.com",
        ),
        ("us-west-2", {"AWS_USE_FIPS_ENDPOINT": "false"}, "s3.us-west-2.amazonaws.com"),
    ],
)
def test_aws_endpoint_of_each_region_as_boto3_names_it(
    region: str, env: dict, host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no endpoint configured, the host AWS serves the region from, observed offline as
    the target of the CONNECT an https proxy is asked for (the proxy then fails the tunnel).
    Before, every region was s3.<region>.amazonaws.com: the China regions (.amazonaws.com.cn)
    were unreachable, and $AWS_USE_FIPS_ENDPOINT / $AWS_USE_DUALSTACK_ENDPOINT were ignored."""
    from tests.faults.tls import ConnectProxy

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with ConnectProxy(("127.0.0.1", 9)) as proxy:  # port 9: the tunnel is refused (502)
        monkeypatch.setenv("HTTPS_PROXY", proxy.endpoint)
        client = S3Client(region, s3client_config=S3ClientConfig(unsigned=True, max_attempts=1))
        with pytest.raises(S3ConnectionError, match="PROXY_CONNECT_FAILED.*HTTPS_PROXY"):
            client.head_object("s3torch-endpoint-test", "key")
    assert proxy.asked and set(proxy.asked) == {f"s3torch-endpoint-test.{host}:443"}, proxy.asked
