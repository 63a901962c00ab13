"""AWS's endpoints, by AWS's own S3 endpoint rules (csrc/s3torch/aws_endpoint.h): each bucket's
URL and how it is signed, access point ARNs included, as boto3 resolves them.

boto3 is the oracle: it evaluates the same rules (its own copy) and reads the same settings from
the environment and ~/.aws/config. Its requests are stopped before they are signed, so nothing
leaves the machine. Then one access point end to end, offline: AWS's host is reached through a
CONNECT proxy that tunnels every host to a local TLS server (a certificate for the access point's
host from a throwaway authority) in front of SeaweedFS."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest

from s3torch import S3Checkpoint, S3Client, S3ClientConfig, S3InvalidArgumentError
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch._uri import parse_s3_uri
from tests.conftest import BUCKET
from tests.faults.proxy import FaultProxy
from tests.faults.tls import PROXY_VARIABLES, ConnectProxy, TlsFront, make_ca

ACCOUNT = "123456789012"
AP = f"arn:aws:s3:us-west-2:{ACCOUNT}:accesspoint/myap"
AP_HOST = f"myap-{ACCOUNT}.s3-accesspoint.us-west-2.amazonaws.com"


class _Stop(Exception):
    pass


def _boto3(region: str, bucket: str, key: str) -> Dict[str, str]:
    """Where boto3 sends GetObject and how it signs it, or {"error": ...}."""
    import boto3
    from botocore.config import Config

    session = boto3.session.Session()  # a fresh one: the default session read ~/.aws/config once
    client = session.client(
        "s3", region_name=region, aws_access_key_id="AK", aws_secret_access_key="SK", config=Config()
    )
    got: Dict[str, str] = {}

    def before_sign(request: Any, signature_version: str, **_: Any) -> None:
        signing = request.context.get("signing", {})
        algorithm = {"s3v4": "sigv4", "v4-s3express": "sigv4-s3express", "v4a": "sigv4a"}[signature_version]
        got.update(
            url=request.url, signing=algorithm, signing_name=signing["signing_name"], signing_region=signing["region"]
        )
        raise _Stop

    client.meta.events.register_first("before-sign.s3", before_sign)
    try:
        client.get_object(Bucket=bucket, Key=key)
    except _Stop:
        return got
    except Exception as e:  # what boto3 refuses, s3torch must refuse too
        return {"error": f"{type(e).__name__}: {e}"}
    raise AssertionError("boto3 sent the request")


def _s3torch(region: str, bucket: str, key: str) -> Dict[str, str]:
    client = S3Client(region, s3client_config=S3ClientConfig(access_key_id="AK", secret_access_key="SK"))
    try:
        return client._get_native().address(bucket, key)
    except S3InvalidArgumentError as e:
        return {"error": str(e)}


@pytest.fixture
def aws(aws_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No endpoint, proxy or AWS setting in the environment; boto3 in us-east-1 on its regional
    endpoint, as s3torch always is (boto3's "legacy" default is the global s3.amazonaws.com)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_S3_US_EAST_1_REGIONAL_ENDPOINT", "regional")
    return aws_home


CASES = [
    # (region, bucket, environment)
    ("us-east-1", "mybucket", {}),
    ("us-west-2", "my.dotted.bucket", {}),  # dots cannot be a host under TLS: the path
    ("us-west-2", "UPPER_case", {}),  # not a DNS name: the path
    ("cn-north-1", "mybucket", {}),
    ("us-gov-west-1", "mybucket", {"AWS_USE_FIPS_ENDPOINT": "true"}),
    ("eu-west-1", "mybucket", {"AWS_USE_DUALSTACK_ENDPOINT": "true"}),
    ("us-east-2", "mybucket", {"AWS_USE_FIPS_ENDPOINT": "true", "AWS_USE_DUALSTACK_ENDPOINT": "true"}),
    ("us-iso-east-1", "mybucket", {}),
    ("eusc-de-east-1", "mybucket", {}),
    ("us-west-2", "mybucket--usw2-az1--x-s3", {}),  # a directory bucket: S3 Express
    ("us-east-1", AP, {}),  # the ARN's region, signed for it
    ("us-west-2", AP, {}),
    ("us-west-2", f"arn:aws:s3:us-west-2:{ACCOUNT}:accesspoint:myap", {}),  # ':' for '/'
    ("us-east-1", AP, {"AWS_USE_FIPS_ENDPOINT": "true", "AWS_USE_DUALSTACK_ENDPOINT": "true"}),
    ("us-east-1", f"arn:aws:s3-object-lambda:us-west-2:{ACCOUNT}:accesspoint/myol", {}),
    ("cn-north-1", f"arn:aws-cn:s3:cn-north-1:{ACCOUNT}:accesspoint/myap", {}),
    # refused by both
    ("us-east-1", AP, {"AWS_S3_USE_ARN_REGION": "false"}),  # another region than the client's
    ("us-east-1", f"arn:aws-cn:s3:cn-north-1:{ACCOUNT}:accesspoint/myap", {}),  # another partition
    ("us-east-1", f"arn:aws:sqs:us-west-2:{ACCOUNT}:queue", {}),  # not S3
    ("us-east-1", f"arn:aws:s3:us-west-2:{ACCOUNT}:bucket_name:mybucket", {}),
]


@pytest.mark.parametrize("region, bucket, env", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_each_bucket_resolves_as_boto3_resolves_it(
    aws: Path, monkeypatch: pytest.MonkeyPatch, region: str, bucket: str, env: Dict[str, str]
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    key = "dir/a b+c~d.pt"
    want, got = _boto3(region, bucket, key), _s3torch(region, bucket, key)
    if "error" in want:
        assert "error" in got, (want, got)
        assert "AWS's endpoint rules" in got["error"], got
    else:
        assert got == want


def test_transfer_acceleration_from_the_profile(aws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (aws / "config").write_text("[default]\ns3 =\n  use_accelerate_endpoint = true\n")
    want = _boto3("eu-west-1", "mybucket", "k")
    assert want["url"] == "https://mybucket.s3-accelerate.amazonaws.com/k"
    assert _s3torch("eu-west-1", "mybucket", "k") == want
    # Acceleration has no FIPS endpoint: both refuse the pair.
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    assert "error" in _boto3("eu-west-1", "mybucket", "k")
    with pytest.raises(S3InvalidArgumentError, match="Accelerate cannot be used with FIPS"):
        S3Client("eu-west-1", s3client_config=S3ClientConfig(unsigned=True))._get_native().address("mybucket", "k")


def test_use_arn_region_false_from_the_profile(aws: Path) -> None:
    (aws / "config").write_text("[default]\ns3_use_arn_region = false\n")
    assert "error" in _boto3("us-east-1", AP, "k")
    with pytest.raises(S3InvalidArgumentError, match="does not match client region"):
        _s3torch_raising("us-east-1", AP)


def _s3torch_raising(region: str, bucket: str) -> Dict[str, str]:
    return S3Client(region, s3client_config=S3ClientConfig(unsigned=True))._get_native().address(bucket, "k")


def test_multi_region_and_outposts_access_points(aws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Signed with SigV4A, which boto3 signs only with the CRT installed (not here): the rules'
    answers, as AWS documents them. With the CRT, boto3 too takes the first scheme, SigV4A."""
    mrap = f"arn:aws:s3::{ACCOUNT}:accesspoint/mfzwi23gnjvgw.mrap"
    assert _s3torch("us-east-1", mrap, "k") == {
        "url": "https://mfzwi23gnjvgw.mrap.accesspoint.s3-global.amazonaws.com/k",
        "signing": "sigv4a",
        "signing_name": "s3",
        "signing_region": "*",
    }
    outposts = f"arn:aws:s3-outposts:us-west-2:{ACCOUNT}:outpost/op-01234567890123456/accesspoint/reports"
    got, want = _s3torch("us-east-1", outposts, "k"), _boto3("us-east-1", outposts, "k")
    assert got["url"] == want["url"] and got["signing_name"] == want["signing_name"] == "s3-outposts"
    assert got["signing"] == "sigv4a"
    monkeypatch.setenv("AWS_S3_DISABLE_MULTIREGION_ACCESS_POINTS", "true")
    with pytest.raises(S3InvalidArgumentError, match="Multi-Region Access Point ARNs are disabled"):
        _s3torch_raising("us-east-1", mrap)


def test_access_point_uris_split_as_the_aws_cli_splits_them() -> None:
    assert parse_s3_uri(f"s3://{AP}/ckpt/step-1/__0_0.distcp") == (AP, "ckpt/step-1/__0_0.distcp")
    assert parse_s3_uri(f"s3://{AP}") == (AP, "")
    assert parse_s3_uri(f"s3://{AP}/") == (AP, "")
    colon = f"arn:aws:s3:us-west-2:{ACCOUNT}:accesspoint:myap"
    assert parse_s3_uri(f"s3://{colon}/k") == (colon, "k")
    outposts = f"arn:aws:s3-outposts:us-west-2:{ACCOUNT}:outpost/op-01234567890123456/accesspoint/reports"
    assert parse_s3_uri(f"s3://{outposts}/a/b") == (outposts, "a/b")
    assert parse_s3_uri("s3://bucket/arn:aws:s3:x") == ("bucket", "arn:aws:s3:x")


def test_a_custom_endpoint_keeps_its_own_addressing(aws: Path) -> None:
    """A plain bucket on an endpoint the user names is addressed as before (path-style on
    loopback); an ARN there gets the rules' answer, the access point under that endpoint."""
    client = S3Client(
        "us-east-1",
        endpoint="http://127.0.0.1:9000",
        s3client_config=S3ClientConfig(access_key_id="AK", secret_access_key="SK"),
    )
    assert client._get_native().address("mybucket", "k")["url"] == "http://127.0.0.1:9000/mybucket/k"
    client = S3Client(
        "us-east-1",
        endpoint="https://s3.example.com",
        s3client_config=S3ClientConfig(access_key_id="AK", secret_access_key="SK"),
    )
    assert client._get_native().address(AP, "k") == {
        "url": f"https://myap-{ACCOUNT}.s3.example.com/k",
        "signing": "sigv4",
        "signing_name": "s3",
        "signing_region": "us-west-2",
    }


@pytest.fixture(scope="module")
def ap_ca(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path, Path]:
    return make_ca(tmp_path_factory.mktemp("ca"), names=(AP_HOST,))


@pytest.fixture
def access_point(
    seaweed: Any, aws: Path, ap_ca: Tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Tuple[FaultProxy, ConnectProxy]]:
    """AWS's access point host, offline: $HTTPS_PROXY tunnels it to TLS (a certificate for that
    host) in front of a recording proxy in front of SeaweedFS. SeaweedFS, which knows no access
    points, reads the path as path-style: the access point's key "<bucket>/<key>" is that
    bucket's key."""
    with FaultProxy.in_front_of(seaweed.endpoint) as recorder:
        with TlsFront(recorder.endpoint, ap_ca[1], ap_ca[2]) as tls:
            with ConnectProxy(("127.0.0.1", tls.port)) as tunnel:
                monkeypatch.setenv("HTTPS_PROXY", tunnel.endpoint)
                monkeypatch.setenv("AWS_CA_BUNDLE", str(ap_ca[0]))
                yield recorder, tunnel


def test_an_access_point_arn_end_to_end(
    access_point: Tuple[FaultProxy, ConnectProxy], seaweed: Any, prefix: str
) -> None:
    """Client in us-east-1, access point in us-west-2: the request goes to the access point's own
    host (the tunnel asked for, the certificate checked against it), signed for us-west-2; and
    s3:// URIs naming the access point work where any s3:// URI does."""
    recorder, tunnel = access_point
    client = S3Client(
        "us-east-1", s3client_config=S3ClientConfig(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    )
    data = os.urandom(300_000)
    client.put(AP, f"{BUCKET}/{prefix}obj", data)  # through the access point
    assert seaweed.boto3_client().get_object(Bucket=BUCKET, Key=prefix + "obj")["Body"].read() == data
    buf = bytearray(len(data))
    assert client.get_into(AP, f"{BUCKET}/{prefix}obj", buf) == len(data) and bytes(buf) == data
    with S3Checkpoint(
        "us-east-1", s3client_config=S3ClientConfig(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    ).reader(f"s3://{AP}/{BUCKET}/{prefix}obj") as r:
        assert r.read() == data

    assert tunnel.asked and set(tunnel.asked) == {f"{AP_HOST}:443"}
    assert len(recorder.headers()) >= 3
    for method, target, headers in recorder.headers():
        assert headers["host"] == AP_HOST, (method, target)
        assert target.startswith(f"/{BUCKET}/{prefix}obj"), (method, target)
        assert "/us-west-2/s3/aws4_request" in headers["authorization"], headers["authorization"]
    assert REGION != "us-west-2"  # the client's own region is not the one signed for


def test_config_shows_where_a_buckets_requests_go(
    access_point: Tuple[FaultProxy, ConnectProxy], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from s3torch.cli import main

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    main(["config", f"s3://{AP}/{BUCKET}/", "--region", "us-east-1"])  # the check's answer: SeaweedFS's, moot
    rows = dict(line.split("  ", 1) for line in capsys.readouterr().out.splitlines() if "  " in line)
    assert rows["bucket url"].strip() == f"https://{AP_HOST}/  (sigv4, signed for s3 in us-west-2)"
    assert rows["endpoint"].strip() == "https://s3.us-east-1.amazonaws.com  (AWS's for the region)"


def test_dcp_through_an_access_point(access_point: Tuple[FaultProxy, ConnectProxy], prefix: str) -> None:
    import torch
    import torch.distributed.checkpoint as dcp

    from s3torch.dcp import S3StorageReader, S3StorageWriter

    cfg = S3ClientConfig(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    path = f"s3://{AP}/{BUCKET}/{prefix}ckpt"
    state = {"w": torch.arange(100_000, dtype=torch.float32), "b": torch.ones(3)}
    dcp.save(state, storage_writer=S3StorageWriter("us-east-1", path, s3client_config=cfg))
    out = {"w": torch.zeros(100_000), "b": torch.zeros(3)}
    dcp.load(out, storage_reader=S3StorageReader("us-east-1", path, s3client_config=cfg))
    assert torch.equal(out["w"], state["w"]) and torch.equal(out["b"], state["b"])
    assert set(access_point[1].asked) == {f"{AP_HOST}:443"}  # every request through the access point
