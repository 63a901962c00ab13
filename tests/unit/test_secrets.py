"""No secret in any text s3torch produces: repr and str of configs, clients, datasets,
checkpoints, DCP readers and writers, MSC targets, and MSC config errors show the secret key
and session token (and an SSE-C key) as ``***`` or not at all; pickling still carries them."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from s3torch import S3Client, S3ClientConfig
from s3torch._config import SECRET_FIELDS

SECRET, TOKEN = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYSECRET", "FwoGZXIvYXdzEXAMPLESESSIONTOKEN"
CUSTOMER_KEY = "Y3VzdG9tZXIta2V5LW9mLXRoZS1zZWNyZXRzLXRlc3Q="  # SSE-C: 32 bytes, base64


def config(**kw: Any) -> S3ClientConfig:
    return S3ClientConfig(
        access_key_id="AKIDEXAMPLE", secret_access_key=SECRET, session_token=TOKEN, sse_customer_key=CUSTOMER_KEY, **kw
    )


def assert_clean(text: str) -> None:
    assert SECRET not in text and TOKEN not in text and CUSTOMER_KEY not in text, text


def test_config_repr_and_str_mask_secrets_and_pickle_carries_them() -> None:
    c = config(part_size=16 << 20)
    for text in (repr(c), str(c), f"{c}", f"{c!r}", repr([c]), repr({"cfg": c})):
        assert_clean(text)
    assert "secret_access_key=***" in repr(c) and "session_token=***" in repr(c)
    assert "access_key_id='AKIDEXAMPLE'" in repr(c) and "part_size=16777216" in repr(c)
    assert "sse_customer_key=***" in repr(c)
    assert set(SECRET_FIELDS) == {"secret_access_key", "session_token", "sse_customer_key"}
    back = pickle.loads(pickle.dumps(c))
    assert back == c and back.secret_access_key == SECRET and back.session_token == TOKEN
    assert back.sse_customer_key == CUSTOMER_KEY
    assert c.as_dict()["secret_access_key"] == SECRET  # data, not text
    assert "secret_access_key=None" in repr(S3ClientConfig())  # nothing to hide


def test_client_repr_and_pickle() -> None:
    client = S3Client("us-east-1", endpoint="http://127.0.0.1:9", s3client_config=config())
    assert_clean(repr(client))
    assert_clean(str(client))
    assert "S3Client(region='us-east-1'" in repr(client)
    back = pickle.loads(pickle.dumps(client))
    assert back.s3client_config.secret_access_key == SECRET and back.s3client_config.session_token == TOKEN


def test_datasets_checkpoints_readers_writers() -> None:
    from s3torch import S3Checkpoint, S3IterableDataset, S3MapDataset
    from s3torch.dcp import S3StorageReader, S3StorageWriter

    cfg, ep = config(), "http://127.0.0.1:9"
    objs = [
        S3MapDataset.from_objects(["s3://b/k"], region="us-east-1", endpoint=ep, s3client_config=cfg),
        S3IterableDataset.from_objects(["s3://b/k"], region="us-east-1", endpoint=ep, s3client_config=cfg),
        S3Checkpoint("us-east-1", endpoint=ep, s3client_config=cfg),
        S3StorageReader("us-east-1", "s3://b/ckpt", s3client_config=cfg, endpoint=ep),
        S3StorageWriter("us-east-1", "s3://b/ckpt", s3client_config=cfg, endpoint=ep),
    ]
    for o in objs:
        assert_clean(repr(o))
        assert_clean(str(o))
        fs = getattr(o, "fs", None)
        if fs is not None:
            assert_clean(repr(fs.client))


def test_msc_targets_and_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from s3torch.msc import MSCConfigError, MultiStorageFileSystemReader
    from s3torch.msc._config import MSCConfig

    profile = {
        "storage_provider": {"type": "s3", "options": {"base_path": "b/base", "endpoint_url": "http://127.0.0.1:9"}},
        "credentials_provider": {
            "type": "S3Credentials",
            "options": {"access_key": "AK", "secret_key": SECRET, "session_token": TOKEN},
        },
    }
    f = tmp_path / "msc.json"
    f.write_text(json.dumps({"profiles": {"p": profile}}))
    monkeypatch.setenv("MSC_CONFIG", str(f))
    resolved = MSCConfig.load().resolve("msc://p/x")
    assert resolved.target.config.secret_access_key == SECRET
    assert_clean(repr(resolved))
    assert_clean(repr(resolved.target))
    r = MultiStorageFileSystemReader("msc://p/x")
    assert_clean(repr(r))
    assert_clean(repr(r.fs.client))
    # A YAML syntax error on the secret's line: PyYAML quotes the line; the error must not.
    y = tmp_path / "msc.yaml"
    y.write_text(f"profiles:\n  p:\n    credentials_provider:\n      options:\n        secret_key: {SECRET}: x\n")
    monkeypatch.setenv("MSC_CONFIG", str(y))
    with pytest.raises(MSCConfigError) as info:
        MSCConfig.load()
    assert_clean(str(info.value))
    assert "line 5" in str(info.value)
    # A wrong value type beside the secret: the message names the field, not the values.
    profile["credentials_provider"]["options"]["session_token"] = 5  # type: ignore[index]
    f.write_text(json.dumps({"profiles": {"p": profile}}))
    monkeypatch.setenv("MSC_CONFIG", str(f))
    try:
        MSCConfig.load().resolve("msc://p/x")
    except MSCConfigError as e:
        assert_clean(str(e))


def test_config_errors_name_fields_not_values() -> None:
    for bad in (dict(session_token=5), dict(part_size=0), dict(checksums="bogus"), dict(max_attempts="x")):
        with pytest.raises((TypeError, ValueError)) as info:
            S3ClientConfig(access_key_id="AK", secret_access_key=SECRET, **bad)  # type: ignore[arg-type]
        assert_clean(str(info.value))
        assert_clean(repr(info.value))
