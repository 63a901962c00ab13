"""What an S3 error answer tells the user: its class, its code, and what to do about it, for
the refusals whose code says more than the class (a skewed clock, an expired token, a wrong
secret, an unknown key). The answers come from the fault proxy, as a server would send them."""

from __future__ import annotations

import time

import pytest

from s3torch import S3Client, S3ClientConfig, S3Exception, S3NotFoundError, S3PermissionError
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from tests.conftest import BUCKET
from tests.faults.proxy import Fault, FaultProxy


@pytest.mark.parametrize(
    "status, code, says",
    [
        (403, "RequestTimeTooSkewed", "clock differs from the server's"),
        (400, "ExpiredToken", "session token has expired"),
        (403, "SignatureDoesNotMatch", "secret key does not match the access key id"),
        (403, "InvalidAccessKeyId", "does not know this access key id"),
        (403, "AccessDenied", "check the credentials"),
    ],
)
def test_refusals_say_what_to_do(proxy: FaultProxy, status: int, code: str, says: str) -> None:
    cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=cfg)
    with pytest.raises(S3NotFoundError):  # the endpoint answers: from now on, faults are retried
        client.head_object(BUCKET, "any/key")  # for retry_timeout_s (120 s), unless not worth it
    fault = proxy.add(Fault("error", method="GET", status=status, code=code))
    t0 = time.monotonic()
    with pytest.raises(S3PermissionError) as info:
        client.get_into(BUCKET, "any/key", bytearray(16))
    assert time.monotonic() - t0 < 30
    err = info.value
    assert err.code == code and err.http_status == status, (err.code, err.http_status)
    assert says in str(err), str(err)
    assert f"s3://{BUCKET}/any/key" in str(err)
    # A refusal is not retried. aws-c-s3 does retry a skewed clock; s3torch cancels the request
    # at that answer, and the retry the CRT scheduled meanwhile may have gone out.
    assert fault.injected <= (2 if code == "RequestTimeTooSkewed" else 1), fault.injected


@pytest.mark.parametrize(
    "method, status, code, headers, details",
    [
        # What AWS answers a request signed for and sent to another region than the bucket's:
        # 301 with the bucket's region in a header (to a HEAD: only the header) ...
        ("HEAD", 301, "PermanentRedirect", {"x-amz-bucket-region": "eu-west-1"}, ""),
        ("GET", 301, "PermanentRedirect", {"x-amz-bucket-region": "eu-west-1"}, ""),
        # ... or, at the bucket's regional endpoint, 400 with the region expected in the body.
        ("GET", 400, "AuthorizationHeaderMalformed", {}, "<Region>eu-west-1</Region>"),
    ],
)
def test_a_bucket_in_another_region_is_named(
    proxy: FaultProxy, method: str, status: int, code: str, headers: dict, details: str
) -> None:
    """The most common first mistake with S3: the wrong region. boto3 follows the redirect;
    s3torch signs for one region, and before said only "PermanentRedirect (HTTP 301)" (to a
    HEAD, "HTTP 301"), naming neither region."""
    cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=cfg)
    fault = proxy.add(Fault("error", method=method, status=status, code=code, headers=headers, details=details))
    with pytest.raises(S3Exception) as info:
        if method == "HEAD":
            client.head_object(BUCKET, "any/key")
        else:
            client.get_into(BUCKET, "any/key", bytearray(16))
    assert f"bucket '{BUCKET}' is in region eu-west-1, not {REGION}: make the client with region='eu-west-1'" in str(
        info.value
    ), str(info.value)
    assert fault.injected == 1  # not retried
    # A region that is the client's own, or not a region at all, adds nothing.
    proxy.clear()
    for region in (REGION, "eu-west-1 <b>"):
        proxy.add(
            Fault("error", method="HEAD", status=301, code="PermanentRedirect", headers={"x-amz-bucket-region": region})
        )
        with pytest.raises(S3Exception) as info:
            client.head_object(BUCKET, "any/key")
        assert "make the client with region" not in str(info.value)
        proxy.clear()
