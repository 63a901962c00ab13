"""Incomplete multipart uploads (list, abort, a DCP save removing those an earlier save left)
and upload checksums the server stores and verifies, on every backend."""

from __future__ import annotations

import base64
import os

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3torch import S3Client, S3ClientConfig, S3Exception, S3InvalidArgumentError
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch.dcp import S3StorageReader, S3StorageWriter
from tests.conftest import BUCKET, make_client
from tests.crc_oracle import crc32c

MiB = 1 << 20


def _started_upload(client, key: str):  # type: ignore[no-untyped-def]
    """An upload with one part sent and never completed (a writer killed mid-save)."""
    up = client.upload(BUCKET, key)
    up.write(os.urandom(client.s3client_config.part_size + 1))
    return up


def _uploads(client, prefix: str) -> list:  # type: ignore[no-untyped-def]
    return sorted((k, u) for k, u, _ in client.list_multipart_uploads(BUCKET, prefix))


def test_list_and_abort_multipart_uploads(server, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(server)
    ups = [_started_upload(client, f"{prefix}{name}") for name in ("a", "b/c")]
    other = _started_upload(client, f"{prefix[:-1]}-other/x")  # beside the prefix, not under it
    try:
        found = client.list_multipart_uploads(BUCKET, prefix)
        assert sorted(k for k, _, _ in found) == [f"{prefix}a", f"{prefix}b/c"]
        assert all(u and initiated for _, u, initiated in found)
        for key, upload_id, _ in found:
            assert client.abort_multipart_upload(BUCKET, key, upload_id) is True
        assert _uploads(client, prefix) == []
        # Aborting again is not an error: the upload is gone either way.
        assert client.abort_multipart_upload(BUCKET, found[0][0], found[0][1]) is True
        assert len(_uploads(client, f"{prefix[:-1]}-other/")) == 1
        assert client.pending_aborts() == []
    finally:
        other.abort()
        del ups


def test_dcp_save_removes_uploads_an_earlier_failed_save_left(server, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(server)
    path = f"s3://{BUCKET}/{prefix}ckpt"
    stale = _started_upload(client, f"{prefix}ckpt/__0_0.distcp")  # the same name the save writes
    beside = _started_upload(client, f"{prefix}ckpt2/__0_0.distcp")  # another checkpoint's
    try:
        assert len(_uploads(client, f"{prefix}ckpt/")) == 1
        sd = {"w": torch.randn(64, 64), "b": torch.arange(10)}
        cfg = client.s3client_config
        dcp.save(sd, storage_writer=S3StorageWriter(REGION, path, s3client_config=cfg, endpoint=server.endpoint))
        assert _uploads(client, f"{prefix}ckpt/") == []
        assert len(_uploads(client, f"{prefix}ckpt2/")) == 1  # not under this checkpoint: left alone
        out = {"w": torch.zeros(64, 64), "b": torch.zeros(10, dtype=torch.long)}
        dcp.load(out, storage_reader=S3StorageReader(REGION, path, s3client_config=cfg, endpoint=server.endpoint))
        assert torch.equal(out["w"], sd["w"]) and torch.equal(out["b"], sd["b"])
    finally:
        beside.abort()
        del stale


@pytest.mark.parametrize(
    "size, kind",
    [(1000, "full_object"), (17 * MiB + 3, "full_object"), (17 * MiB + 3, "composite")],
    ids=["single", "multipart", "multipart-composite"],
)
def test_uploads_carry_a_crc32c_the_server_stores(seaweed, prefix, size, kind) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed, checksum_type=kind)
    data = os.urandom(size)
    client.put(BUCKET, f"{prefix}k", data)
    head = seaweed.boto3_client().head_object(Bucket=BUCKET, Key=f"{prefix}k", ChecksumMode="ENABLED")
    stored = head.get("ChecksumCRC32C")
    assert stored, head
    if size <= client.s3client_config.part_size or kind == "full_object":
        # One CRC32C of the whole object: a single PUT's, or the multipart upload's (the CRT's
        # part CRCs combined, sent with CompleteMultipartUpload, checked by the server).
        assert base64.b64decode(stored) == crc32c(data).to_bytes(4, "big")
        if size > client.s3client_config.part_size:
            assert head.get("ChecksumType") == "FULL_OBJECT"
    else:  # composite: the CRC32C of the parts' CRC32Cs, and the part count
        part = client.s3client_config.part_size
        parts = [data[i : i + part] for i in range(0, size, part)]
        combined = b"".join(crc32c(p).to_bytes(4, "big") for p in parts)
        assert stored == base64.b64encode(crc32c(combined).to_bytes(4, "big")).decode() + f"-{len(parts)}"
        assert head.get("ChecksumType") == "COMPOSITE"
    out = bytearray(size)
    client.get_into(BUCKET, f"{prefix}k", out)
    assert out == data


def test_checksums_off_sends_none(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed, checksums="off")
    client.put(BUCKET, f"{prefix}k", b"abc")
    head = seaweed.boto3_client().head_object(Bucket=BUCKET, Key=f"{prefix}k", ChecksumMode="ENABLED")
    assert not any(k.startswith("Checksum") and k != "ChecksumType" for k in head), head


def test_seaweedfs_rejects_a_wrong_checksum(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    # What the checksum buys: SeaweedFS verifies it (moto 5 does not, see below).
    s3 = seaweed.boto3_client()
    with pytest.raises(Exception, match="BadDigest"):
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}k", Body=b"abc", ChecksumCRC32C="AAAAAA==")
    right = base64.b64encode(crc32c(b"abc").to_bytes(4, "big")).decode()
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}k", Body=b"abc", ChecksumCRC32C=right)


def test_moto_accepts_a_wrong_checksum(moto, prefix) -> None:  # type: ignore[no-untyped-def]
    # How the README's "moto does not verify" was established (moto 5): if this starts
    # failing, moto verifies, and the README should say so.
    s3 = moto.boto3_client()
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}k", Body=b"abc", ChecksumCRC32C="AAAAAA==")
    assert s3.get_object(Bucket=BUCKET, Key=f"{prefix}k")["Body"].read() == b"abc"


@pytest.mark.parametrize(
    "field,value",
    [("checksums", "md5"), ("checksums", "crc64"), ("retry_timeout_s", -1), ("retry_timeout_s", 86401)],
)
def test_retry_and_checksum_settings_are_checked(field, value) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((S3InvalidArgumentError, TypeError, OverflowError), match=field):
        S3ClientConfig(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY, **{field: value})


@pytest.mark.parametrize("size", [1000, 17 * MiB + 3], ids=["single", "multipart"])
def test_a_body_corrupted_on_the_wire_is_refused_not_stored(seaweed, prefix, size) -> None:  # type: ignore[no-untyped-def]
    from tests.faults.proxy import Fault, FaultProxy

    with FaultProxy.in_front_of(seaweed.endpoint) as proxy:
        client = S3Client(REGION, endpoint=proxy.endpoint, s3client_config=make_client(seaweed).s3client_config)
        fault = proxy.add(Fault("corrupt", method="PUT", path=f"{prefix}k", times=1))
        with pytest.raises(S3Exception) as info:
            client.put(BUCKET, f"{prefix}k", os.urandom(size))
        assert fault.injected == 1
        assert info.value.code == "BadDigest" and info.value.http_status == 400, info.value
    # Nothing was stored, and nothing of a multipart upload is left.
    assert not list(make_client(seaweed).list_objects(BUCKET, prefix))[0].object_info
    assert make_client(seaweed).list_multipart_uploads(BUCKET, prefix) == []


@pytest.mark.parametrize("kind", ["full_object", "composite"])
def test_a_whole_object_get_is_checked_against_a_full_object_checksum(seaweed, prefix, kind) -> None:  # type: ignore[no-untyped-def]
    """aws-c-s3 checks a whole-object download, made of ranged part GETs, against the object's
    checksum when it covers the object: what s3torch's multipart uploads now store. A byte
    changed in one part's response is then caught; with a composite checksum it is not."""
    from tests.faults.proxy import Fault, FaultProxy

    client = make_client(seaweed, checksum_type=kind)
    data = os.urandom(17 * MiB + 3)
    client.put(BUCKET, f"{prefix}k", data)
    with FaultProxy.in_front_of(seaweed.endpoint) as proxy:
        via = make_client(proxy, checksum_type=kind)
        fault = proxy.add(Fault("corrupt_response", method="GET", range=r"^bytes=[1-9]", times=1))
        out = bytearray(len(data))
        if kind == "full_object":
            with pytest.raises(S3Exception, match="CHECKSUM_MISMATCH"):
                via.get_into(BUCKET, f"{prefix}k", out)
        else:
            via.get_into(BUCKET, f"{prefix}k", out)
            assert out != data  # nothing to check the whole download against
        assert fault.injected == 1
        via.get_into(BUCKET, f"{prefix}k", out)  # the fault is spent
        assert out == data
