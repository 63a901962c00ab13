"""Create-only writes (``exclusive=True``: If-None-Match: *) against SeaweedFS and moto, which
both honour the header: what is sent on which request, what a taken key gets, a write whose
answer was lost (its retry meets its own object), and a DCP save that loses a race for its
path. Writers racing for one key are not tested here: that the first to complete wins is the
server's to keep (S3 does); SeaweedFS 4.48 and moto check the header but not atomically with
the write of a multipart upload (seen: 2 and 3 of 4 racing writers completed)."""

from __future__ import annotations

import os
from typing import List

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3torch import S3Exception, S3ObjectExistsError
from s3torch._servers import REGION
from s3torch.dcp import S3StorageReader, S3StorageWriter
from tests.conftest import BUCKET, make_client
from tests.faults.proxy import Fault, FaultProxy

MiB = 1 << 20
PART = 5 * MiB
BIG = 12 * MiB  # a multipart upload of 3 parts


def _uploads_left(client, prefix: str) -> List[tuple]:  # type: ignore[no-untyped-def]
    return list(client._get_native().list_multipart_uploads(BUCKET, prefix))


@pytest.mark.parametrize("size", [100, BIG], ids=["single", "multipart"])
def test_exclusive_write_creates_or_refuses_leaving_the_object(server, prefix, size) -> None:  # type: ignore[no-untyped-def]
    client = make_client(server, part_size=PART)
    key = f"{prefix}obj"
    first, second = os.urandom(size), os.urandom(size)
    assert client.put(BUCKET, key, first, exclusive=True)  # a new key: written, an ETag back
    with pytest.raises(S3ObjectExistsError) as e:
        client.put(BUCKET, key, second, exclusive=True)
    assert isinstance(e.value, FileExistsError) and e.value.http_status == 412
    assert e.value.code == "PreconditionFailed" and e.value.key == key
    assert "create-only (exclusive): nothing was written" in str(e.value)
    writer = client.put_object(BUCKET, key, exclusive=True)  # the streaming writer: refused at close
    writer.write(second)
    with pytest.raises(S3ObjectExistsError):
        writer.close()
    assert client.get_object(BUCKET, key).read() == first
    assert _uploads_left(client, key) == []  # a refused multipart upload leaves no parts
    client.put(BUCKET, key, second)  # without exclusive: overwritten, as before
    assert client.get_object(BUCKET, key).read() == second


def test_if_none_match_goes_only_on_the_request_that_commits(seaweed, proxy, prefix) -> None:  # type: ignore[no-untyped-def]
    """S3 takes If-None-Match on PutObject and CompleteMultipartUpload; the create, the parts
    and a plain write carry none."""
    client = make_client(proxy, part_size=PART)
    client.put(BUCKET, f"{prefix}single", b"x", exclusive=True)
    client.put(BUCKET, f"{prefix}multi", os.urandom(BIG), exclusive=True)
    client.put(BUCKET, f"{prefix}plain", os.urandom(BIG))
    sent = {}
    for method, target, headers in proxy.headers():
        if method in ("PUT", "POST"):
            kind = (
                "create"
                if "?uploads" in target
                else "part"
                if "partNumber=" in target
                else "complete"
                if "uploadId=" in target
                else "put"
            )
            sent.setdefault((target.split("?")[0].rsplit("/", 1)[1], kind), set()).add(headers.get("if-none-match"))
    assert sent == {
        ("single", "put"): {"*"},
        ("multi", "create"): {None},
        ("multi", "part"): {None},
        ("multi", "complete"): {"*"},
        ("plain", "create"): {None},
        ("plain", "part"): {None},
        ("plain", "complete"): {None},
    }


@pytest.mark.parametrize("size", [100, BIG], ids=["single", "multipart"])
def test_a_write_whose_answer_was_lost_finds_its_own_object(seaweed, proxy, prefix, size) -> None:  # type: ignore[no-untyped-def]
    """The server stored the object, its answer never came, the retry met a 412: the write is
    this one's own (same size and full-object CRC32C), so it succeeded. Another writer's object
    behind a lost answer stays a refusal."""
    client = make_client(proxy, part_size=PART)
    key = f"{prefix}lost"
    body = os.urandom(size)
    method, path = ("PUT", r"/lost$") if size < PART else ("POST", r"/lost\?uploadId=")
    lost = proxy.add(Fault("lost_answer", method=method, path=path, times=1))
    etag = client.put(BUCKET, key, body, exclusive=True)
    assert lost.injected == 1
    direct = make_client(seaweed)
    assert direct.get_object(BUCKET, key).read() == body
    assert etag == direct.head_object(BUCKET, key).etag
    assert _uploads_left(direct, key) == []
    proxy.add(Fault("lost_answer", method=method, path=path, times=1))
    with pytest.raises(S3ObjectExistsError) as e:  # the object there is the first write's
        client.put(BUCKET, key, os.urandom(size), exclusive=True)
    assert "may be" not in str(e.value)
    assert direct.get_object(BUCKET, key).read() == body


def test_a_lost_answer_that_cannot_be_told_apart_says_so(moto, prefix) -> None:  # type: ignore[no-untyped-def]
    """moto keeps no checksum of a PUT: the refusal says the object there may be this write's
    own, and why it could not tell."""
    with FaultProxy.in_front_of(moto.endpoint) as proxy:
        client = make_client(proxy, part_size=PART)
        proxy.add(Fault("lost_answer", method="PUT", path=r"/moto-single$", times=1))
        with pytest.raises(S3ObjectExistsError) as e:
            client.put(BUCKET, f"{prefix}moto-single", b"mine", exclusive=True)
        assert "may be this write's own, and the server keeps no checksum of it to tell" in str(e.value)


def test_a_lost_answer_to_a_composite_checksum_upload_says_so(proxy, prefix) -> None:  # type: ignore[no-untyped-def]
    """A multipart upload's composite checksum is not the whole object's, which the retried
    CompleteMultipartUpload's refusal would need to tell the object for this write's own."""
    client = make_client(proxy, part_size=PART, checksum_type="composite")
    proxy.add(Fault("lost_answer", method="POST", path=r"/composite\?uploadId=", times=1))
    with pytest.raises(S3ObjectExistsError) as e:
        client.put(BUCKET, f"{prefix}composite", os.urandom(BIG), exclusive=True)
    assert "this write kept no full-object checksum to tell" in str(e.value)


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(256, 256, generator=g), "step": torch.tensor(seed)}


@pytest.mark.filterwarnings("ignore:Detected an existing checkpoint")
def test_dcp_save_with_overwrite_false_does_not_commit_over_a_racing_save(seaweed_env, proxy, prefix) -> None:  # type: ignore[no-untyped-def]
    """Two saves to one path, each finding none there when it planned: the second to finish
    fails at its .metadata, and the path holds the first's checkpoint, whole."""
    uri = f"s3://{BUCKET}/{prefix}ckpt"
    mine, theirs = _state(1), _state(2)

    def other_save() -> None:  # committed while our .metadata PUT is held
        dcp.save(theirs, storage_writer=S3StorageWriter(REGION, uri, endpoint=seaweed_env.endpoint))

    race = proxy.add(Fault("call", method="PUT", path=r"ckpt/\.metadata$", times=1, call=other_save))
    writer = S3StorageWriter(REGION, uri, endpoint=proxy.endpoint, overwrite=False)
    with pytest.raises(CheckpointException) as info:  # DCP wraps each rank's error
        dcp.save(mine, storage_writer=writer)
    assert race.injected == 1
    ((err, _tb),) = info.value.failures.values()
    assert isinstance(err, S3ObjectExistsError) and err.key == f"{prefix}ckpt/.metadata"
    assert any(n.startswith(f"s3torch: another save committed a checkpoint at {uri} ") for n in err.__notes__)
    loaded = {"w": torch.zeros(256, 256), "step": torch.tensor(0)}
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, uri, endpoint=seaweed_env.endpoint))
    assert torch.equal(loaded["w"], theirs["w"]) and int(loaded["step"]) == 2
    # overwrite=True (torch's default) replaces it, as before.
    dcp.save(mine, storage_writer=S3StorageWriter(REGION, uri, endpoint=seaweed_env.endpoint, overwrite=True))
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, uri, endpoint=seaweed_env.endpoint))
    assert torch.equal(loaded["w"], mine["w"])


@pytest.mark.filterwarnings("ignore:Detected an existing checkpoint")
def test_a_server_without_conditional_writes_still_gets_the_checkpoint(seaweed_env, proxy, prefix, caplog) -> None:  # type: ignore[no-untyped-def]
    """A server that answers 501 NotImplemented to If-None-Match: a save with overwrite=False
    writes its .metadata again without it, saying so; the checkpoint loads."""
    uri = f"s3://{BUCKET}/{prefix}ckpt"
    refused = proxy.add(
        Fault("error", method="PUT", path=r"ckpt/\.metadata$", times=1, status=501, code="NotImplemented")
    )
    caplog.set_level("WARNING", logger="s3torch")
    dcp.save(_state(4), storage_writer=S3StorageWriter(REGION, uri, endpoint=proxy.endpoint, overwrite=False))
    assert refused.injected == 1
    assert "does not implement conditional writes (NotImplemented)" in caplog.text
    assert f"{uri}/.metadata written without If-None-Match" in caplog.text
    loaded = {"w": torch.zeros(256, 256), "step": torch.tensor(0)}
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, uri, endpoint=seaweed_env.endpoint))
    assert int(loaded["step"]) == 4
    # Asked for by the caller, exclusive=True raises it instead.
    proxy.add(Fault("error", method="PUT", path=r"/asked$", times=1, status=501, code="NotImplemented"))
    with pytest.raises(S3Exception) as e:
        make_client(proxy).put(BUCKET, f"{prefix}asked", b"x", exclusive=True)
    assert e.value.http_status == 501
