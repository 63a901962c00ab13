"""Presigned URLs (``S3Client.presign``, fsspec's ``sign``, ``s3torch presign``): fetched with
no credentials from a real server, and signed exactly as botocore signs them (the oracle: its
``generate_presigned_url`` at the same instant gives the same URL, signature included)."""

from __future__ import annotations

import datetime
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Tuple
from unittest import mock

import fsspec
import pytest

from s3torch import S3Client, S3ClientConfig, S3InvalidArgumentError, S3PermissionError
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch.cli import main
from tests.conftest import BUCKET, make_client

KEYS = ["plain.bin", "a b/ü+%#?=&;x.bin", "dir/~tilde!*'()"]
DOTS = "deep/./../dots"  # signed as it is, not normalized (SeaweedFS refuses to store it)
AT = 1_765_000_000  # a fixed signing time for the oracle


def fetch(url: str, put: Optional[bytes] = None) -> Tuple[int, bytes]:
    request = urllib.request.Request(url, data=put, method="PUT" if put is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def query(url: str) -> Dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(url).query))


def botocore_url(
    endpoint: str, region: str, bucket: str, key: str, expires: int, method: str = "get_object", **creds: Any
) -> str:
    import botocore.config
    import botocore.session

    style = "path" if "127.0.0.1" in endpoint else "virtual"
    client = botocore.session.get_session().create_client(
        "s3",
        region_name=region,
        endpoint_url=endpoint or None,
        config=botocore.config.Config(signature_version="s3v4", s3={"addressing_style": style}),
        **creds,
    )
    now = datetime.datetime.fromtimestamp(AT, datetime.timezone.utc).replace(tzinfo=None)
    with mock.patch("botocore.auth.get_current_datetime", return_value=now):
        return str(client.generate_presigned_url(method, Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires))


def test_a_url_reads_the_object_with_no_credentials(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    for key in KEYS:
        data = key.encode() * 100
        client.put(BUCKET, prefix + key, data)
        url = client.presign(BUCKET, prefix + key, 60)
        assert query(url)["X-Amz-Expires"] == "60" and query(url)["X-Amz-SignedHeaders"] == "host"
        assert fetch(url) == (200, data), key


def test_the_signature_is_botocores(seaweed) -> None:  # type: ignore[no-untyped-def]
    """Same instant, same credentials: the same URL as botocore's, byte for byte in every
    parameter (path encoding, credential scope, session token, signature)."""
    for key, method in [(k, "GET") for k in KEYS + [DOTS]] + [(KEYS[1], "PUT")]:
        ours = make_client(seaweed)._get_native().presign(BUCKET, key, 300, AT, method)
        ref = botocore_url(
            seaweed.endpoint,
            REGION,
            BUCKET,
            key,
            300,
            method.lower() + "_object",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        a, b = urllib.parse.urlsplit(ours), urllib.parse.urlsplit(ref)
        assert (a.scheme, a.netloc, a.path) == (b.scheme, b.netloc, b.path), key
        assert query(ours) == query(ref), key
    # AWS's own endpoint (virtual-hosted), with a session token: nothing is sent.
    creds = dict(access_key_id="AKIDEXAMPLE", secret_access_key="SECRET/EXAMPLE+KEY", session_token="TOKEN/==")
    ours = (
        S3Client("us-west-2", s3client_config=S3ClientConfig(**creds))
        ._get_native()
        .presign(  # type: ignore[arg-type]
            "my-bucket", "a b/c.bin", 604800, AT
        )
    )
    ref = botocore_url(
        "https://s3.us-west-2.amazonaws.com",
        "us-west-2",
        "my-bucket",
        "a b/c.bin",
        604800,
        aws_access_key_id=creds["access_key_id"],
        aws_secret_access_key=creds["secret_access_key"],
        aws_session_token=creds["session_token"],
    )
    assert ours.startswith("https://my-bucket.s3.us-west-2.amazonaws.com/a%20b/c.bin?")
    assert ref.split("?")[0] == ours.split("?")[0] and query(ours) == query(ref)
    assert query(ours)["X-Amz-Security-Token"] == "TOKEN/=="


def test_a_put_url_uploads_the_object(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    url = client.presign(BUCKET, prefix + "up.bin", 60, method="PUT")
    assert fetch(url, put=b"uploaded with no credentials")[0] == 200
    assert client.get_object(BUCKET, prefix + "up.bin").read() == b"uploaded with no credentials"
    assert fetch(client.presign(BUCKET, prefix + "up.bin", 60), put=b"x")[0] == 403  # a GET URL
    assert fetch(url)[0] == 403  # a PUT URL
    assert client.get_object(BUCKET, prefix + "up.bin").read() == b"uploaded with no credentials"


@pytest.mark.parametrize(
    "bucket",
    [
        "arn:aws:s3:us-west-2:123456789012:accesspoint/myap",
        "arn:aws:s3:us-east-1:123456789012:accesspoint/other-region",
        "arn:aws:s3-object-lambda:us-west-2:123456789012:accesspoint/myol",
    ],
)
def test_access_points_are_signed_as_botocore_signs_them(bucket: str) -> None:
    """An access point's URL (its own host, region and service), offline."""
    client = S3Client("us-west-2", s3client_config=S3ClientConfig(access_key_id="AK", secret_access_key="SK"))
    ours = client._get_native().presign(bucket, "a b", 60, AT)
    ref = botocore_url("", "us-west-2", bucket, "a b", 60, aws_access_key_id="AK", aws_secret_access_key="SK")
    assert ours.split("?")[0] == ref.split("?")[0] and query(ours) == query(ref)


def test_multi_region_access_points_get_sigv4a_and_s3_express_is_refused() -> None:
    client = S3Client("us-east-1", s3client_config=S3ClientConfig(access_key_id="AK", secret_access_key="SK"))
    url = client.presign("arn:aws:s3::123456789012:accesspoint/mfzwi23gnjvgw.mrap", "k", 60)
    assert url.startswith("https://mfzwi23gnjvgw.mrap.accesspoint.s3-global.amazonaws.com/k?")
    assert query(url)["X-Amz-Algorithm"] == "AWS4-ECDSA-P256-SHA256" and query(url)["X-Amz-Region-Set"] == "*"
    with pytest.raises(S3InvalidArgumentError, match="S3 Express One Zone"):
        client.presign("my-bucket--usw2-az1--x-s3", "k", 60)


def test_what_the_server_refuses(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    client.put(BUCKET, prefix + "k", b"secret")
    client.put(BUCKET, prefix + "other", b"other")
    native = client._get_native()
    url = client.presign(BUCKET, prefix + "k", 60)
    assert fetch(url.replace("/k?", "/other?"))[0] == 403  # signed for another key
    signature = query(url)["X-Amz-Signature"]
    assert fetch(url.replace(signature, signature[::-1]))[0] == 403
    assert fetch(url.replace("X-Amz-Expires=60", "X-Amz-Expires=600"))[0] == 403
    expired = native.presign(BUCKET, prefix + "k", 5, int(time.time()) - 60)
    assert fetch(expired)[0] == 403
    wrong = make_client(seaweed, secret_access_key="not-the-secret").presign(BUCKET, prefix + "k", 60)
    assert fetch(wrong)[0] == 403


def test_requester_pays_is_in_the_signed_query(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """S3 takes x-amz-request-payer as a query parameter of a signed URL: the URL's user need
    send no header (botocore signs it as a header the user must send)."""
    client = make_client(seaweed, requester_pays=True)
    client.put(BUCKET, prefix + "k", b"paid")
    url = client.presign(BUCKET, prefix + "k", 60)
    assert query(url)["x-amz-request-payer"] == "requester" and query(url)["X-Amz-SignedHeaders"] == "host"
    assert fetch(url) == (200, b"paid")


def test_an_unsigned_client_gives_the_objects_plain_url(seaweed) -> None:  # type: ignore[no-untyped-def]
    url = make_client(seaweed, unsigned=True, access_key_id=None, secret_access_key=None).presign(BUCKET, "a b", 60)
    assert url == f"{seaweed.endpoint}/{BUCKET}/a%20b"


@pytest.mark.parametrize(
    "overrides, key, expires, error, words",
    [
        ({}, "k", 0, S3InvalidArgumentError, "1 to 604800 seconds (7 days) after it is made, not 0"),
        ({}, "k", 604801, S3InvalidArgumentError, "not 604801"),
        ({}, "k", -5, S3InvalidArgumentError, "not -5"),
        ({}, "k", 60.0, TypeError, "whole seconds"),
        ({}, "k", True, TypeError, "whole seconds"),
        ({}, "", 60, S3InvalidArgumentError, "key is empty"),
        ({"sse_customer_key": "A" * 43 + "="}, "k", 60, S3InvalidArgumentError, "SSE-C key"),
        ({}, "k", ("PUT", "POST"), S3InvalidArgumentError, "for GET or PUT, not 'POST'"),
        (
            {"sse": "AES256"},
            "k",
            ("PUT", "PUT"),
            S3InvalidArgumentError,
            "PresignPutObject .*cannot carry the client's sse",
        ),
    ],
)
def test_bad_arguments(seaweed, overrides: Dict[str, Any], key: str, expires: Any, error: type, words: str) -> None:  # type: ignore[no-untyped-def]
    expires, method = (60, expires[1]) if isinstance(expires, tuple) else (expires, "GET")
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        make_client(seaweed, **overrides).presign(BUCKET, key, expires, method)
    if "sse" in overrides:  # a GET by the same client: its objects read as any other
        assert "X-Amz-Signature=" in make_client(seaweed, **overrides).presign(BUCKET, key, 60)


def test_no_credentials_is_a_permission_error(aws_home, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(
        S3PermissionError, match="PresignGetObject s3://b/k: .*without credentials.*check the credentials"
    ):
        S3Client("us-east-1").presign("b", "k", 60)


def test_fsspec_sign(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    fs = fsspec.filesystem(
        "s3torch",
        endpoint_url=seaweed.endpoint,
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        client_kwargs={"region_name": REGION},
        s3client_config=S3ClientConfig(force_path_style=True),
    )
    fs.pipe_file(f"{BUCKET}/{prefix}f", b"via fsspec")
    url = fs.sign(f"s3torch://{BUCKET}/{prefix}f")
    assert query(url)["X-Amz-Expires"] == "100"  # s3fs's default
    assert fetch(url) == (200, b"via fsspec")
    assert query(fs.sign(f"{BUCKET}/{prefix}f", expiration=7))["X-Amz-Expires"] == "7"
    with pytest.raises(TypeError, match="ResponseContentType"):
        fs.sign(f"{BUCKET}/{prefix}f", ResponseContentType="text/plain")
    assert query(fs.url(f"{BUCKET}/{prefix}f"))["X-Amz-Expires"] == "3600"  # s3fs's url
    put = fs.url(f"{BUCKET}/{prefix}g", expires=60, client_method="put_object")
    assert fetch(put, put=b"put by url")[0] == 200 and fs.cat_file(f"{BUCKET}/{prefix}g") == b"put by url"
    with pytest.raises(ValueError, match="get_object or put_object, not 'delete_object'"):
        fs.url(f"{BUCKET}/{prefix}f", client_method="delete_object")
    with pytest.raises(ValueError, match="bucket/key"):
        fs.sign(BUCKET)


def test_cli(seaweed_env, prefix: str, capsys: pytest.CaptureFixture) -> None:  # type: ignore[no-untyped-def]
    make_client(seaweed_env).put(BUCKET, prefix + "k", b"from the command line")

    def cli(*argv: str) -> Tuple[int, List[str], str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out.splitlines(), out.err

    code, out, _ = cli("presign", f"s3://{BUCKET}/{prefix}k", "--expires-in", "120")
    assert code == 0 and len(out) == 1 and query(out[0])["X-Amz-Expires"] == "120"
    assert fetch(out[0]) == (200, b"from the command line")
    code, out, _ = cli("presign", f"s3://{BUCKET}/{prefix}k")
    assert code == 0 and query(out[0])["X-Amz-Expires"] == "3600"
    code, out, _ = cli("presign", "--method", "PUT", f"s3://{BUCKET}/{prefix}new")
    assert code == 0 and fetch(out[0], put=b"curl -T")[0] == 200
    assert make_client(seaweed_env).get_object(BUCKET, prefix + "new").read() == b"curl -T"
    code, out, err = cli("presign", f"s3://{BUCKET}/{prefix}k", "--expires-in", "999999")
    assert code == 2 and out == [] and "not 999999" in err
    code, out, err = cli("presign", f"s3://{BUCKET}")
    assert code == 2 and "needs an object" in err
