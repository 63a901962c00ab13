"""S3 takes at most 10,000 parts in a multipart upload: 78.1 GiB at the default 8 MiB parts.
An upload whose size is known ahead (``size_hint``; every writer of s3torch that knows it
passes it) gets parts large enough; one that is not, and would need part 10,001, is refused at
that write with nothing more sent, and aborted, where S3 would refuse the part after every
earlier byte was uploaded for nothing. The 80 GiB written here is a sparse file's map: the
refusal comes before any of it is read."""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
from typing import Any, Dict, Iterator, List

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3torch import S3Client, S3Exception, S3InvalidArgumentError, S3NotFoundError
from s3torch._servers import REGION
from s3torch.dcp import S3StorageWriter
from tests.conftest import BUCKET, make_client

MiB = 1 << 20


@pytest.fixture
def huge(tmp_path) -> Iterator[memoryview]:  # type: ignore[no-untyped-def]
    """80 GiB of zeros, as a map of a sparse file: nothing is read until a byte is."""
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.truncate(80 << 30)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        view = memoryview(m)
        try:
            yield view
        finally:
            view.release()


@contextlib.contextmanager
def refused_at_once() -> Iterator[None]:
    """Fail (interrupting the write's wait) if the write has not been refused within 10 s: an
    upload of the 80 GiB started instead, which would fill the server's disk."""

    def started(signum: int, frame: Any) -> None:
        raise AssertionError("the write was not refused: it started uploading 80 GiB")

    old = signal.signal(signal.SIGALRM, started)
    signal.alarm(10)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _uploads(client: S3Client, prefix: str) -> List[str]:
    return [k for k, _, _ in client.list_multipart_uploads(BUCKET, prefix)]


def test_a_write_past_10000_parts_is_refused_before_it_is_sent_and_the_upload_aborted(server, prefix, huge) -> None:  # type: ignore[no-untyped-def]
    client = make_client(server)
    up = client.upload(BUCKET, prefix + "a")
    up.write(os.urandom(9 * MiB))  # a multipart upload by now, its first part sent
    with (
        refused_at_once(),
        pytest.raises(S3InvalidArgumentError, match=r"past 78\.1 GiB, the most S3's 10,000 parts of 8 MiB hold") as e,
    ):
        up.write(huge)
    assert "size_hint" in str(e.value) and "part_size" in str(e.value)
    with pytest.raises(S3NotFoundError):
        client.head_object(BUCKET, prefix + "a")
    assert _uploads(client, prefix) == []
    with pytest.raises(S3InvalidArgumentError):
        up.complete()  # the upload is over: nothing completes it

    # The file-like writer: the same, and its close() leaves the key as it was (here: none)
    client.put(BUCKET, prefix + "b", b"before")
    with refused_at_once(), pytest.raises(S3InvalidArgumentError, match="10,000 parts"):
        with client.put_object(BUCKET, prefix + "b") as w:
            w.write(huge)
    assert client.get_object(BUCKET, prefix + "b").read() == b"before"
    assert _uploads(client, prefix) == []


def test_a_size_hint_past_the_limit_gets_parts_that_hold_it(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    data = os.urandom(25 * MiB)

    def parts(key: str) -> int:  # a multipart upload's ETag ends in "-<parts>"
        return int(client.head_object(BUCKET, prefix + key).etag.strip('"').rsplit("-", 1)[1])

    for key, hint in (("plain", None), ("small", 25 * MiB), ("large", 100 * 10**9)):
        with client.put_object(BUCKET, prefix + key, size_hint=hint) as w:
            w.write(data)
        assert client.get_object(BUCKET, prefix + key).read() == data
    # 8 MiB parts unless the hint is past 78.1 GiB: 100 GB gets 10 MiB (the smallest whole MiB
    # whose 10,000 parts hold it)
    assert (parts("plain"), parts("small"), parts("large")) == (4, 4, 3)
    client.put(BUCKET, prefix + "put", data)  # a put's length is its hint: 8 MiB parts here
    assert parts("put") == 4
    from s3torch import S3Checkpoint

    checkpoint = S3Checkpoint(REGION, endpoint=seaweed.endpoint, s3client_config=client.s3client_config)
    with checkpoint.writer(f"s3://{BUCKET}/{prefix}ckpt.pt", size_hint=100 * 10**9) as w:
        w.write(data)
    assert parts("ckpt.pt") == 3


@pytest.mark.parametrize("hint", [-1, 1.5, True, "10"])
def test_a_size_hint_is_a_byte_count(seaweed, prefix, hint: Any) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(S3InvalidArgumentError, match="size_hint must be a byte count"):
        make_client(seaweed).put_object(BUCKET, prefix + "x", size_hint=hint)


def test_writers_that_know_the_size_pass_it(seaweed_env, prefix, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A DCP save and a Lightning checkpoint (about each file's size, never less), a
    safetensors save and a file copied up by ``s3torch cp`` (exactly) hint each object's size."""
    hints: Dict[str, Any] = {}
    put_object, upload = S3Client.put_object, S3Client.upload

    def put_object_hinted(self, bucket, key, *args, size_hint=None, **kw):  # type: ignore[no-untyped-def]
        hints[key] = size_hint
        return put_object(self, bucket, key, *args, size_hint=size_hint, **kw)

    def upload_hinted(self, bucket, key, *args, size_hint=None, **kw):  # type: ignore[no-untyped-def]
        hints[key] = size_hint
        return upload(self, bucket, key, *args, size_hint=size_hint, **kw)

    monkeypatch.setattr(S3Client, "put_object", put_object_hinted)
    monkeypatch.setattr(S3Client, "upload", upload_hinted)
    client = make_client(seaweed_env)

    def size(key: str) -> int:
        return client.head_object(BUCKET, key).size

    sd = {"w": torch.randn(256, 256), "b": torch.arange(1000), "step": 3}
    dcp.save(sd, storage_writer=S3StorageWriter(REGION, f"s3://{BUCKET}/{prefix}ckpt", endpoint=seaweed_env.endpoint))
    files = [k for k in hints if k.endswith(".distcp")]
    assert files
    for k in files:
        assert size(k) <= hints[k] <= size(k) + 4 * (64 << 10), k

    from s3torch.safetensors import save_file

    save_file({"a": torch.randn(100, 7), "e": torch.zeros(0)}, f"s3://{BUCKET}/{prefix}m.safetensors", client=client)
    assert hints[f"{prefix}m.safetensors"] == size(f"{prefix}m.safetensors")

    from s3torch.lightning import S3LightningCheckpoint

    lightning_ckpt = {"state_dict": sd, "epoch": 2}
    S3LightningCheckpoint(REGION, endpoint=seaweed_env.endpoint).save_checkpoint(
        lightning_ckpt, f"s3://{BUCKET}/{prefix}last.ckpt"
    )
    assert size(f"{prefix}last.ckpt") <= hints[f"{prefix}last.ckpt"]

    from s3torch.cli import main

    local = tmp_path / "ckpt"
    dcp.save(sd, checkpoint_id=str(local))
    code = main(
        ["cp", str(local), f"s3://{BUCKET}/{prefix}copy", "--endpoint", seaweed_env.endpoint, "--region", REGION]
    )
    assert code == 0
    copied = [k for k in hints if k.startswith(f"{prefix}copy/") and k.endswith(".distcp")]
    assert copied and all(hints[k] == size(k) for k in copied)


def test_fsspec_open_takes_block_size_as_the_least_part_size(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.test_fsspec import make_fs

    fs = make_fs(seaweed)
    client = make_client(seaweed)
    data = os.urandom(40 * MiB)
    for name, block in (("default", None), ("small", 1 * MiB), ("large", 16 * MiB), ("odd", 15 * MiB + 1)):
        with fs.open(f"{BUCKET}/{prefix}{name}", "wb", block_size=block) as f:
            f.write(data)
    etags = {n: client.head_object(BUCKET, prefix + n).etag.strip('"') for n in ("default", "small", "large", "odd")}
    # 8 MiB parts (5), at least 8 MiB (5), 16 MiB (3), 15 MiB + 1 rounded up to 16 MiB (3)
    assert {n: int(e.rsplit("-", 1)[1]) for n, e in etags.items()} == {"default": 5, "small": 5, "large": 3, "odd": 3}
    with pytest.raises(ValueError, match="block_size must be a byte count"):
        fs.open(f"{BUCKET}/{prefix}bad", "wb", block_size="64MB")


def test_parts_larger_than_the_memory_limit_allows_say_which_setting_to_raise(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    """aws-c-s3 takes parts of up to half its memory limit, which a throughput target under
    5 Gbps lowers to 256 MiB: a 2 TB hint's 191 MiB parts do not fit. It fails at once, before
    anything is sent, naming the setting; with that setting raised, the same upload goes."""
    data = os.urandom(9 * MiB)  # more than a part: the multipart upload starts
    low = make_client(seaweed, throughput_target_gbps=2)
    with pytest.raises(S3Exception, match=r"its parts were sized 191 MiB .* raise S3ClientConfig.memory_limit_bytes"):
        with low.put_object(BUCKET, prefix + "big", size_hint=2 * 10**12) as w:
            w.write(data)
    assert _uploads(low, prefix) == []
    raised = make_client(seaweed, throughput_target_gbps=2, memory_limit_bytes=1 << 30)
    with raised.put_object(BUCKET, prefix + "big", size_hint=2 * 10**12) as w:
        w.write(data)
    assert raised.get_object(BUCKET, prefix + "big").read() == data
