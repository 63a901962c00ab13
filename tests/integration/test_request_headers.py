"""What a client's configuration adds to its requests (csrc/s3torch/request_headers.h):
server-side encryption, Requester Pays, the expected bucket owner. Which request carries which
header, that the servers store what was asked (SeaweedFS enforces SSE-C and stores SSE-S3; moto
stores SSE-KMS and its key id), DCP saves and loads through them, and what a refused request
is told."""

from __future__ import annotations

import base64
import hashlib
import os
import re
from typing import Any, Dict, List, Tuple

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3torch import S3Client, S3ClientConfig, S3Exception, S3InvalidArgumentError, S3PermissionError
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch.dcp import S3StorageReader, S3StorageWriter
from tests.conftest import BUCKET, make_client
from tests.faults.proxy import Fault, FaultProxy

MiB = 1 << 20
SSE_C = "x-amz-server-side-encryption-customer-"
OWNER = "111122223333"


def new_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def boto3_head(server: Any, key: str, **kw: Any) -> Dict[str, Any]:
    return server.boto3_client().head_object(Bucket=BUCKET, Key=key, **kw)  # type: ignore[no-any-return]


def every_operation(client: S3Client, prefix: str) -> None:
    """One of each request s3torch makes, an upload of 3 parts included."""
    client.put(BUCKET, f"{prefix}small", b"hello")
    w = client.put_object(BUCKET, f"{prefix}big")
    w.write(os.urandom(12 * MiB))
    w.close()
    assert client.get_object(BUCKET, f"{prefix}small").read() == b"hello"
    r = client.get_object(BUCKET, f"{prefix}big")
    r.seek(6 * MiB)
    assert len(r.read(1000)) == 1000
    assert client.head_object(BUCKET, f"{prefix}big").size == 12 * MiB
    assert len(list(client.list_objects(BUCKET, prefix))) >= 1
    up = client.upload(BUCKET, f"{prefix}left")
    up.write(os.urandom(5 * MiB + 1))
    ((key, upload_id, _),) = client.list_multipart_uploads(BUCKET, f"{prefix}left")
    assert client.abort_multipart_upload(BUCKET, key, upload_id) is True
    del up
    client.delete_object(BUCKET, f"{prefix}small")


def kind(method: str, target: str, headers: Dict[str, str]) -> str:
    """The S3 operation of a request, from its method, target and headers."""
    query = target.partition("?")[2]
    if method == "PUT" and "x-amz-copy-source" in headers:
        return "UploadPartCopy" if "partNumber=" in query else "CopyObject"
    if method == "POST":
        return "CreateMultipartUpload" if "uploads" in query else "CompleteMultipartUpload"
    if method == "PUT":
        return "UploadPart" if "partNumber=" in query else "PutObject"
    if method == "DELETE":
        return "AbortMultipartUpload" if "uploadId=" in query else "DeleteObject"
    if method == "HEAD":
        return "HeadObject"
    if "list-type=2" in query:
        return "ListObjectsV2"
    if "uploads" in query:
        return "ListMultipartUploads"
    return "GetObject"


def headers_by_kind(proxy: FaultProxy) -> Dict[str, List[Dict[str, str]]]:
    out: Dict[str, List[Dict[str, str]]] = {}
    for method, target, headers in proxy.headers():
        out.setdefault(kind(method, target, headers), []).append(headers)
    return out


def test_each_request_carries_the_headers_s3_takes_there(seaweed, moto, prefix) -> None:  # type: ignore[no-untyped-def]
    """SSE-C and requester-pays against SeaweedFS, SSE-KMS against moto, each through a proxy
    that records every request's headers."""
    key = new_key()
    with FaultProxy.in_front_of(seaweed.endpoint) as proxy:
        client = make_client(
            proxy, part_size=5 * MiB, sse_customer_key=key, requester_pays=True, expected_bucket_owner=OWNER
        )
        every_operation(client, prefix)
        seen = headers_by_kind(proxy)
    md5 = base64.b64encode(hashlib.md5(base64.b64decode(key)).digest()).decode()
    object_ops = {"GetObject", "HeadObject", "PutObject", "CreateMultipartUpload", "UploadPart"}
    no_key_ops = {"ListObjectsV2", "ListMultipartUploads", "AbortMultipartUpload", "DeleteObject"}
    assert object_ops | no_key_ops | {"CompleteMultipartUpload"} == set(seen), sorted(seen)
    for op, requests in seen.items():
        for h in requests:
            assert h.get("x-amz-request-payer") == "requester", (op, h)
            assert h.get("x-amz-expected-bucket-owner") == OWNER, (op, h)
            assert "x-amz-source-expected-bucket-owner" not in h, (op, h)
            assert "x-amz-server-side-encryption" not in h, (op, h)
            if op in object_ops:
                assert h[SSE_C + "algorithm"] == "AES256" and h[SSE_C + "key"] == key, (op, h)
                assert h[SSE_C + "key-md5"] == md5, (op, h)
            if op in no_key_ops:
                assert not any(name.startswith(SSE_C) for name in h), (op, h)

    kms = "arn:aws:kms:us-east-1:123456789012:key/0b4f-example"
    with FaultProxy.in_front_of(moto.endpoint) as proxy:
        client = make_client(proxy, part_size=5 * MiB, sse="aws:kms", sse_kms_key_id=kms)
        every_operation(client, prefix)
        client.copy_object(BUCKET, f"{prefix}big", BUCKET, f"{prefix}copy")
        seen = headers_by_kind(proxy)
    for op, requests in seen.items():
        for h in requests:
            assert "x-amz-request-payer" not in h and not any(n.startswith(SSE_C) for n in h), (op, h)
            assert not any("expected-bucket-owner" in n for n in h), (op, h)
            if op in ("PutObject", "CreateMultipartUpload", "CopyObject"):  # where S3 takes them, only there
                assert h["x-amz-server-side-encryption"] == "aws:kms", (op, h)
                assert h["x-amz-server-side-encryption-aws-kms-key-id"] == kms, (op, h)
            else:
                assert not any(n.startswith("x-amz-server-side-encryption") for n in h), (op, h)
    assert "CopyObject" in seen
    for name in ("big", "copy"):
        head = boto3_head(moto, f"{prefix}{name}")
        assert (head["ServerSideEncryption"], head["SSEKMSKeyId"]) == ("aws:kms", kms), name


@pytest.mark.parametrize("size", [5, 12 * MiB], ids=["single-put", "multipart"])
def test_sse_c_objects_are_stored_encrypted_and_need_their_key(seaweed, prefix, size: int) -> None:  # type: ignore[no-untyped-def]
    key = new_key()
    client = make_client(seaweed, part_size=5 * MiB, sse_customer_key=key)
    data = os.urandom(size)
    w = client.put_object(BUCKET, f"{prefix}obj")
    w.write(data)
    w.close()
    assert client.get_object(BUCKET, f"{prefix}obj").read() == data
    buf = bytearray(size - 3)
    client.get_into(BUCKET, f"{prefix}obj", buf, offset=3)
    assert bytes(buf) == data[3:]
    # boto3, given the key, finds the object encrypted with it ...
    head = boto3_head(seaweed, f"{prefix}obj", SSECustomerAlgorithm="AES256", SSECustomerKey=base64.b64decode(key))
    assert head["SSECustomerAlgorithm"] == "AES256" and head["ContentLength"] == size
    # ... and without it, the server refuses: a read, a HEAD, another key.
    plain = make_client(seaweed)
    with pytest.raises(S3Exception) as info:
        plain.get_object(BUCKET, f"{prefix}obj").read()
    assert info.value.http_status == 400 and "set S3ClientConfig(sse_customer_key=...)" in str(info.value)
    with pytest.raises(S3Exception) as info:
        plain.head_object(BUCKET, f"{prefix}obj")
    assert "sse_customer_key" in str(info.value), str(info.value)
    with pytest.raises(S3PermissionError) as perm:
        make_client(seaweed, sse_customer_key=new_key()).get_object(BUCKET, f"{prefix}obj").read()
    assert "other than this client's sse_customer_key" in str(perm.value), str(perm.value)
    assert key not in str(perm.value)


def test_sse_c_copy_is_refused_before_any_request(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed, sse_customer_key=new_key())
    client.put(BUCKET, f"{prefix}src", b"x")
    with pytest.raises(S3InvalidArgumentError, match="cannot copy objects encrypted with sse_customer_key"):
        client.copy_object(BUCKET, f"{prefix}src", BUCKET, f"{prefix}dst")


def test_a_customer_key_for_an_object_written_without_one_is_named(proxy: FaultProxy) -> None:
    """AWS refuses SSE-C headers on an object written without them (SeaweedFS lets them by)."""
    client = make_client(proxy, sse_customer_key=new_key())
    client.put(BUCKET, "plain/x", b"x")
    proxy.add(
        Fault(
            "error",
            method="GET",
            status=400,
            code="InvalidRequest",
            path="plain/x",
        )
    )
    with pytest.raises(S3Exception) as info:
        client.get_object(BUCKET, "plain/x").read()
    assert "read it with a client without one" in str(info.value), str(info.value)


def test_dcp_save_and_load_through_sse_c_and_sse_s3(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    sd = {"w": torch.randn(256, 256), "b": torch.arange(1000), "s": torch.tensor(3.5)}
    for name, extra in (("c", {"sse_customer_key": new_key()}), ("s3", {"sse": "AES256"})):
        cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, **extra)
        path = f"s3://{BUCKET}/{prefix}{name}"
        dcp.save(sd, storage_writer=S3StorageWriter(REGION, path, s3client_config=cfg, endpoint=seaweed.endpoint))
        out = {k: torch.zeros_like(v) for k, v in sd.items()}
        dcp.load(out, storage_reader=S3StorageReader(REGION, path, s3client_config=cfg, endpoint=seaweed.endpoint))
        assert all(torch.equal(out[k], sd[k]) for k in sd)
        keys = [
            o.key for page in make_client(seaweed).list_objects(BUCKET, f"{prefix}{name}/") for o in page.object_info
        ]
        assert any(k.endswith(".metadata") for k in keys) and any(k.endswith(".distcp") for k in keys)
        for k in keys:
            if name == "s3":
                assert boto3_head(seaweed, k)["ServerSideEncryption"] == "AES256", k
            else:
                with pytest.raises(S3Exception):
                    make_client(seaweed).head_object(BUCKET, k)


def test_configuration_is_checked_and_the_customer_key_never_shown() -> None:
    key = new_key()
    cfg = S3ClientConfig(sse_customer_key=key)
    assert key not in repr(cfg) and "sse_customer_key=***" in repr(cfg)
    bad: List[Tuple[Dict[str, Any], str]] = [
        ({"sse": "aes256"}, "sse must be one of 'AES256', 'aws:kms', 'aws:kms:dsse'"),
        ({"sse_kms_key_id": "alias/k"}, "sse_kms_key_id needs sse='aws:kms' or sse='aws:kms:dsse', and sse is not"),
        ({"sse": "AES256", "sse_kms_key_id": "alias/k"}, "got sse='AES256'"),
        ({"sse": "aws:kms", "sse_kms_key_id": "alias/k\r\nx-evil: 1"}, "printable ASCII without spaces"),
        ({"sse_customer_key": "c2hvcnQ="}, "256-bit key in base64"),
        ({"sse_customer_key": base64.b64encode(os.urandom(31)).decode() + "A"}, "256-bit key in base64"),
        ({"sse_customer_key": key[:-2] + "!="}, "256-bit key in base64"),
        ({"sse": "AES256", "sse_customer_key": key}, "cannot both be set"),
    ]
    for kw, says in bad:
        with pytest.raises(S3InvalidArgumentError) as info:
            S3ClientConfig(**kw)
        assert says in str(info.value), (kw, str(info.value))
        assert key not in str(info.value)
    for sse in ("AES256", "aws:kms", "aws:kms:dsse"):
        S3ClientConfig(sse=sse)
    S3ClientConfig(sse="aws:kms:dsse", sse_kms_key_id="arn:aws:kms:us-east-1:123456789012:alias/ckpt")
    assert re.fullmatch(r"[A-Za-z0-9+/]{43}=", key)


def test_cli_writes_and_reads_with_encryption(seaweed_env, tmp_path, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    from torch.distributed.checkpoint import FileSystemWriter

    from s3torch.cli import main

    seaweed = seaweed_env
    local = tmp_path / "fs"
    dcp.save({"w": torch.randn(64, 64), "n": torch.arange(7)}, storage_writer=FileSystemWriter(str(local)))
    raw = os.urandom(32)
    (tmp_path / "raw.key").write_bytes(raw)
    (tmp_path / "b64.key").write_text(base64.b64encode(raw).decode() + "\n")  # as `openssl rand -base64 32` writes it

    uri = f"s3://{BUCKET}/{prefix}ckpt"
    assert main(["cp", "--sse-c-key-file", str(tmp_path / "raw.key"), str(local), uri]) == 0, capsys.readouterr()
    # The same key from its base64 file reads it back; nothing reads it without the key.
    assert main(["verify", "--sse-c-key-file", str(tmp_path / "b64.key"), uri]) == 0, capsys.readouterr()
    assert main(["cp", "--sse-c-key-file", str(tmp_path / "b64.key"), uri, str(tmp_path / "down")]) == 0
    assert (tmp_path / "down" / "__0_0.distcp").read_bytes() == (local / "__0_0.distcp").read_bytes()
    capsys.readouterr()
    assert main(["info", uri]) == 4
    assert "sse_customer_key" in capsys.readouterr().err

    assert main(["cp", "--sse", "AES256", str(local), f"{uri}-s3"]) == 0, capsys.readouterr()
    assert boto3_head(seaweed, f"{prefix}ckpt-s3/.metadata")["ServerSideEncryption"] == "AES256"
    assert main(["ls", "--request-payer", "requester", "--expected-bucket-owner", OWNER, f"{uri}-s3/"]) == 0

    (tmp_path / "short.key").write_bytes(os.urandom(16))
    for argv, says in (
        (["--sse-c-key-file", str(tmp_path / "short.key")], "not a 256-bit key"),
        (["--sse-c-key-file", str(tmp_path / "missing.key")], "cannot read"),
        (["--sse-kms-key-id", "alias/k"], "sse_kms_key_id needs sse="),
        (["--expected-bucket-owner", "1234"], "12-digit AWS account id"),
    ):
        capsys.readouterr()
        assert main(["ls", *argv, f"{uri}/"]) == 2, argv
        err = capsys.readouterr().err
        assert says in err and base64.b64encode(raw).decode() not in err, err


def test_a_bucket_of_another_account_is_named(proxy: FaultProxy) -> None:
    """S3 answers 403 AccessDenied when the bucket's owner is not x-amz-expected-bucket-owner."""
    client = make_client(proxy, expected_bucket_owner=OWNER)
    client.put(BUCKET, "owned/x", b"x")  # SeaweedFS takes the header and lets it by
    proxy.add(Fault("error", method="GET", status=403, code="AccessDenied", path="owned/x"))
    with pytest.raises(S3PermissionError) as info:
        client.get_object(BUCKET, "owned/x").read()
    assert f"or bucket '{BUCKET}' is not owned by account {OWNER} (expected_bucket_owner)" in str(info.value)
    for bad in ("11112222333", "1111222233334", "11112222333a", "arn:aws:iam::111122223333:root"):
        with pytest.raises(S3InvalidArgumentError, match="expected_bucket_owner must be a 12-digit AWS account id"):
            S3ClientConfig(expected_bucket_owner=bad)


def _upload_checksum_headers(proxy: FaultProxy, client: S3Client, key: str) -> List[str]:
    """The x-amz-checksum-* and x-amz-sdk-checksum-algorithm headers ("name=value,...") a small
    put and a 2-part upload of ``client`` sent, one entry per request that carried any."""
    before = len(proxy.headers())
    client.put(BUCKET, key, b"x" * 1000)
    w = client.put_object(BUCKET, key + "-big")
    w.write(os.urandom(6 * MiB))
    w.close()
    sent = []
    for method, _, headers in proxy.headers()[before:]:
        names = sorted(n for n in headers if n.startswith("x-amz-checksum-") or n == "x-amz-sdk-checksum-algorithm")
        if method in ("PUT", "POST") and names:
            sent.append(",".join(f"{n}={headers[n]}" for n in names).lower())
    return sent


def test_upload_checksums_follow_boto3s_request_checksum_calculation(proxy, aws_home, monkeypatch, prefix) -> None:  # type: ignore[no-untyped-def]
    """boto3 1.36 began sending CRC checksums that some S3-compatible servers refuse; the fix
    everyone is told is $AWS_REQUEST_CHECKSUM_CALCULATION=when_required (or the profile's
    request_checksum_calculation). A server set up for boto3 that way takes s3torch's uploads
    too. botocore says what each setting means."""
    import boto3

    def botocore_says() -> str:
        return str(
            boto3.session.Session()
            .client("s3", region_name=REGION, aws_access_key_id="a", aws_secret_access_key="b")
            .meta.config.request_checksum_calculation
        )

    client = lambda **kw: make_client(proxy, part_size=5 * MiB, **kw)  # noqa: E731
    assert botocore_says() == "when_supported"
    sent = _upload_checksum_headers(proxy, client(), prefix + "a")
    assert len(sent) == 5 and all("crc32c" in s for s in sent), sent  # put, create, 2 parts, complete
    for value in ("when_required", "WHEN_REQUIRED"):
        monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", value)
        assert botocore_says() == "when_required"
        assert _upload_checksum_headers(proxy, client(), prefix + "b") == []
        # Given in the config, checksums wins, as an argument wins over boto3's variables.
        sent = _upload_checksum_headers(proxy, client(checksums="crc32"), prefix + "c")
        assert len(sent) == 5 and all("crc32" in s and "crc32c" not in s for s in sent), sent
    monkeypatch.delenv("AWS_REQUEST_CHECKSUM_CALCULATION")
    (aws_home / "config").write_text("[default]\nrequest_checksum_calculation = when_required\n")
    assert botocore_says() == "when_required"
    assert _upload_checksum_headers(proxy, client(), prefix + "d") == []
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_supported")  # the variable wins
    assert botocore_says() == "when_supported"
    assert len(_upload_checksum_headers(proxy, client(), prefix + "e")) == 5
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "sometimes")
    with pytest.raises(S3InvalidArgumentError) as info:
        client()
    assert "got 'sometimes' (from $AWS_REQUEST_CHECKSUM_CALCULATION)" in str(info.value)
