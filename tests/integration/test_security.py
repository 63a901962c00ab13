"""Safe with what you don't control (SECURITY.md), against real servers on loopback:

- a crafted ``.metadata`` runs nothing through ``s3torch info``, ``s3torch verify``,
  ``dcp.load`` with S3StorageReader (global and rank-local metadata, both load paths) or the
  MSC reader: a CheckpointUnsafeError naming the global, and the marker file it would have
  made does not exist; a crafted tensor record or byte item runs nothing either;
- ``s3torch cp`` down refuses keys that would leave the destination (moto stores
  ``ckpt/../../x`` verbatim): exit 2 naming the key, nothing written;
- the CRT's trace log holds neither the secret key nor the session token.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import (
    BytesStorageMetadata,
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    TensorProperties,
    TensorStorageMetadata,
)

from s3torch import S3ReaderConstructor
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch.cli import main
from s3torch.dcp import CheckpointCorruptError, CheckpointUnsafeError, S3StorageReader, S3StorageWriter
from tests.conftest import BUCKET, make_client

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


class RunsShell:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def crafted_metadata(marker: Path) -> bytes:
    return pickle.dumps(Metadata(state_dict_metadata={"w": RunsShell(marker)}, storage_data={}))  # type: ignore[dict-item]


@pytest.fixture
def env(seaweed: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    return seaweed


def load_error(reader: Any, sd: Any = None) -> BaseException:
    with pytest.raises(CheckpointException) as info:
        dcp.load(sd if sd is not None else {"w": torch.zeros(4)}, storage_reader=reader)
    (err, _tb), *_ = info.value.failures.values()
    return err


def test_crafted_metadata_runs_nothing(env: Any, prefix: str, tmp_path: Path, capsys: Any) -> None:
    marker = tmp_path / "marker"
    client = make_client(env)
    client.put(BUCKET, f"{prefix}ckpt/.metadata", crafted_metadata(marker))
    client.put(BUCKET, f"{prefix}ckpt/__0_0.distcp", b"x" * 16)
    uri = f"s3://{BUCKET}/{prefix}ckpt"
    local = tmp_path / "local"
    local.mkdir()
    (local / ".metadata").write_bytes(crafted_metadata(marker))

    for argv in (["info", uri], ["info", str(local)], ["verify", uri], ["info", "--json", uri]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 4, (argv, err)
        assert f"refused to unpickle {os.system.__module__}.system" in err and "--trust-checkpoint" in err, err
        assert not marker.exists(), argv

    for reader in (
        S3StorageReader(REGION, uri, endpoint=env.endpoint),
        S3StorageReader(REGION, uri, endpoint=env.endpoint, reader_constructor=S3ReaderConstructor.sequential()),
    ):
        err = load_error(reader)
        assert isinstance(err, CheckpointUnsafeError) and err.refused == f"{os.system.__module__}.system", err
        assert f"{uri}/.metadata" in str(err) and "trust_checkpoint=True" in str(err)
        assert not marker.exists()

    # The opt-out is what trusting means: plain pickle, and the code runs.
    main(["info", "--trust-checkpoint", str(local)])
    capsys.readouterr()
    assert marker.exists()


def test_crafted_rank_local_metadata_runs_nothing(env: Any, prefix: str, tmp_path: Path) -> None:
    # No global .metadata, a rank-local one: torch's fallback reads it through read_metadata(rank=0).
    marker = tmp_path / "marker"
    make_client(env).put(BUCKET, f"{prefix}ckpt/__0.metadata", crafted_metadata(marker))
    reader = S3StorageReader(REGION, f"s3://{BUCKET}/{prefix}ckpt", endpoint=env.endpoint)
    metadata = reader.read_metadata(rank=0)  # deferred: torch 2.11's fallback swallows what it raises
    with pytest.raises(CheckpointUnsafeError):
        reader.set_up_storage_reader(metadata, True)
    with pytest.raises(BaseException) as info:
        dcp.load({"w": torch.zeros(4)}, storage_reader=reader)
    # The refusal, not torch 2.11's bare "metadata is None".
    assert "refused to unpickle" in str(info.value), info.value
    assert not marker.exists()


def test_crafted_metadata_through_the_msc_reader(env: Any, prefix: str, tmp_path: Path, monkeypatch: Any) -> None:
    import json

    from s3torch.msc import MultiStorageFileSystemReader

    marker = tmp_path / "marker"
    make_client(env).put(BUCKET, f"{prefix}base/ckpt/.metadata", crafted_metadata(marker))
    cfg = tmp_path / "msc.json"
    profile = {
        "storage_provider": {
            "type": "s3",
            "options": {"base_path": f"{BUCKET}/{prefix}base", "endpoint_url": env.endpoint, "region_name": REGION},
        },
        "credentials_provider": {
            "type": "S3Credentials",
            "options": {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY},
        },
    }
    cfg.write_text(json.dumps({"profiles": {"sec": profile}}))
    monkeypatch.setenv("MSC_CONFIG", str(cfg))
    err = load_error(MultiStorageFileSystemReader("msc://sec/ckpt"))
    assert isinstance(err, CheckpointUnsafeError) and "system" in err.refused
    assert not marker.exists()


def _evil_record(marker: Path) -> bytes:
    buf = io.BytesIO()
    torch.save({"x": RunsShell(marker)}, buf)
    return buf.getvalue()


@pytest.mark.parametrize("path", ["parallel", "sequential"])
def test_crafted_tensor_record_and_byte_item_run_nothing(env: Any, prefix: str, tmp_path: Path, path: str) -> None:
    """Metadata made only of allowed classes, pointing at records that would run code when
    unpickled: as a tensor (locator, then torch.load weights_only) and as a byte item (torch's
    planner unpickles those with weights_only=False; the reader checks them first)."""
    marker = tmp_path / "marker"
    rec = _evil_record(marker)
    client = make_client(env)
    uri = f"s3://{BUCKET}/{prefix}ckpt"
    rc = S3ReaderConstructor.sequential() if path == "sequential" else None

    def put_checkpoint(state_md: Any, index: MetadataIndex) -> None:
        md = Metadata(state_dict_metadata={index.fqn: state_md}, storage_data={index: _StorageInfo("d", 0, len(rec))})
        client.put(BUCKET, f"{prefix}ckpt/d", rec)
        client.put(BUCKET, f"{prefix}ckpt/.metadata", pickle.dumps(md))

    size = torch.Size([4])
    tensor_md = TensorStorageMetadata(
        TensorProperties(dtype=torch.float32), size, [ChunkStorageMetadata(torch.Size([0]), size)]
    )
    put_checkpoint(tensor_md, MetadataIndex("w", torch.Size([0])))
    err = load_error(S3StorageReader(REGION, uri, endpoint=env.endpoint, reader_constructor=rc))
    assert "UnpicklingError" in repr(err) or isinstance(err, (CheckpointCorruptError, pickle.UnpicklingError)), err
    assert not marker.exists()

    put_checkpoint(BytesStorageMetadata(), MetadataIndex("extra"))
    err = load_error(S3StorageReader(REGION, uri, endpoint=env.endpoint, reader_constructor=rc), {"extra": {}})
    assert isinstance(err, CheckpointUnsafeError) and "system" in err.refused, err
    assert "'extra'" in str(err)
    assert not marker.exists()


def test_checkpoints_with_byte_items_still_load(env: Any, prefix: str) -> None:
    sd = {"w": torch.arange(10.0), "extra": {"step": 3, "lrs": [0.1, 0.2], "name": "run"}}
    uri = f"s3://{BUCKET}/{prefix}ok"
    dcp.save(sd, storage_writer=S3StorageWriter(REGION, uri, endpoint=env.endpoint))
    for rc in (None, S3ReaderConstructor.sequential()):
        out = {"w": torch.zeros(10), "extra": {"step": 0, "lrs": [0.0, 0.0], "name": ""}}
        dcp.load(out, storage_reader=S3StorageReader(REGION, uri, endpoint=env.endpoint, reader_constructor=rc))
        assert torch.equal(out["w"], sd["w"]) and out["extra"] == sd["extra"]


# --- cp down: keys that leave the destination ---------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["../../escaped", "a/../../escaped", "/abs/escaped", "a//b", "./a", "a/./b", "a\\..\\b", "a\x00b", "a\x07b", "a/"],
)
def test_cp_down_refuses_keys_outside_the_destination(
    moto: Any, monkeypatch: Any, tmp_path: Path, capsys: Any, bad: str
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    s3 = moto.boto3_client()
    pre = f"t{abs(hash(bad)) % 10**8}/ckpt/"
    for key, body in ((".metadata", b"m"), ("__0_0.distcp", b"data"), (bad, b"pwned")):
        s3.put_object(Bucket=BUCKET, Key=pre + key, Body=body)
    assert pre + bad in [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=pre)["Contents"]]  # verbatim
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    dst = work / "dst"
    code = main(["cp", f"s3://{BUCKET}/{pre}", str(dst)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert repr(pre + bad) in err and "nothing was written" in err, err
    assert not dst.exists()
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_local_path_rule() -> None:
    from s3torch._paths import UnsafeKeyError, local_path, unsafe_reason

    assert local_path("/d", "a/b.distcp") == "/d/a/b.distcp"
    assert local_path("/d", ".metadata") == "/d/.metadata"
    assert local_path("/d", "a..b/..c") == "/d/a..b/..c"
    for bad in ("", "/x", "..", "a/..", "a//b", ".", "a\\b", "a\x00", "a\x1fb", "a\x7fb", "a\x85b", "a/"):
        assert unsafe_reason(bad) is not None, bad
        with pytest.raises(UnsafeKeyError) as info:
            local_path("/d", bad, "p/" + bad)
        assert info.value.key == "p/" + bad and isinstance(info.value, ValueError)


# --- the CRT's own log -------------------------------------------------------------------


SSE_C_KEY = "U1NFLUMtS0VZLWZvci10aGUtdHJhY2UtbG9nLXRlc3Q="  # 32 bytes, base64


def test_crt_trace_log_holds_no_secret(moto: Any, tmp_path: Path) -> None:
    """Neither the session token nor an SSE-C key: aws-c-auth logs every header it signs."""
    log = tmp_path / "crt.log"
    script = textwrap.dedent(
        f"""
        from s3torch import S3Client, S3ClientConfig
        cfg = S3ClientConfig(force_path_style=True, access_key_id={ACCESS_KEY!r},
                             secret_access_key="SECRETKEY-4f9a1c", session_token="SESSIONTOKEN-77e2b0", max_attempts=1,
                             sse_customer_key={SSE_C_KEY!r})
        c = S3Client({REGION!r}, endpoint={moto.endpoint!r}, s3client_config=cfg)
        c.put({BUCKET!r}, "trace/k", b"hello")
        list(c.list_objects({BUCKET!r}, "trace/"))
        assert c.get_object({BUCKET!r}, "trace/k").read() == b"hello"
        try:
            c.head_object({BUCKET!r}, "trace/missing")
        except Exception as e:
            print(e)
        """
    )
    env = {**os.environ, "S3TORCH_CRT_LOG": "trace", "S3TORCH_CRT_LOG_FILE": str(log)}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    text = log.read_text(errors="replace")
    # The headers were logged ...
    assert "x-amz-security-token" in text.lower() and "x-amz-server-side-encryption-customer-key:" in text.lower()
    assert "x-amz-server-side-encryption-customer-key-md5:" in text.lower()  # not a secret: kept
    for secret in ("SESSIONTOKEN-77e2b0", "SECRETKEY-4f9a1c", SSE_C_KEY):  # ... their values were not
        assert secret not in text and secret not in r.stdout + r.stderr, secret
