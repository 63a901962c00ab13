"""``s3torch cp`` of a model folder (safetensors shards, their index, config and tokenizer
files, a sub-model in a folder of its own) against SeaweedFS: byte-exact both ways, the index
last, an existing model refused or replaced whole, and a failed download leaving no file that
holds less than its object."""

from __future__ import annotations

import errno
import filecmp
import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
import safetensors.torch as sts
import torch

from s3torch import _local_files
from s3torch.cli import cp as cp_verb
from s3torch.safetensors import load_file
from tests.conftest import BUCKET, make_client
from tests.faults.proxy import Fault
from tests.integration.test_cli import cli


@pytest.fixture
def env(seaweed_env):  # type: ignore[no-untyped-def]
    return seaweed_env


def _model_folder(root: Path, seed: int, shards: int) -> Dict[str, torch.Tensor]:
    """A Hugging Face model's folder: ``shards`` weight files and their index, config and
    tokenizer files, and a sub-model (``text_encoder/``) in one file; its tensors."""
    g = torch.Generator().manual_seed(seed)
    tensors = {f"layers.{i}.w": torch.randn(64, 48, generator=g).to(torch.bfloat16) for i in range(2 * shards)}
    root.mkdir(parents=True)
    weight_map = {}
    for s in range(shards):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in list(tensors)[2 * s : 2 * s + 2]}
        sts.save_file(part, str(root / name), {"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())}, "weight_map": weight_map}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    (root / "config.json").write_text(json.dumps({"model_type": "tiny", "seed": seed}))
    (root / "tokenizer.json").write_text(json.dumps({"vocab": {"a": 0, "b": 1}}))
    (root / "text_encoder").mkdir()
    sts.save_file({"emb": torch.full((8, 4), float(seed))}, str(root / "text_encoder" / "model.safetensors"))
    return tensors


def _files(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _keys(client: Any, prefix: str) -> List[str]:
    return sorted(o.key[len(prefix) :] for page in client.list_objects(BUCKET, prefix) for o in page.object_info)


def test_a_model_folder_up_and_down_is_byte_exact_with_its_index_last(
    env, tmp_path, prefix, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    client = make_client(env)
    local = tmp_path / "model"
    tensors = _model_folder(local, 1, 3)
    uri = f"s3://{BUCKET}/{prefix}model"
    order: List[str] = []
    real_put = cp_verb.put_file
    monkeypatch.setattr(cp_verb, "put_file", lambda c, b, key, *a: order.append(key) or real_put(c, b, key, *a))
    code, out, err = cli(capsys, "cp", str(local), uri)
    assert code == 0, err
    assert "copied 7 files" in out
    assert order[-1] == f"{prefix}model/model.safetensors.index.json" and len(order) == 7
    assert _keys(client, f"{prefix}model/") == _files(local)
    got = load_file(uri + "/", client=client)
    assert sorted(got) == sorted(tensors) and all(torch.equal(got[k], tensors[k]) for k in tensors)

    code, _, err = cli(capsys, "cp", str(local), uri)
    assert code == 2 and "already holds a safetensors model" in err and "--overwrite" in err

    down = tmp_path / "down"
    code, out, err = cli(capsys, "cp", uri, str(down))
    assert code == 0, err
    assert "checked 7 of 7 files against the checksum S3 stores for them (CRC32C)" in out
    names = _files(local)
    assert _files(down) == names
    match, mismatch, errors = filecmp.cmpfiles(local, down, names, shallow=False)
    assert match == names and not mismatch and not errors
    code, _, err = cli(capsys, "cp", uri, str(down))
    assert code == 2 and "already holds a safetensors model" in err

    code, _, err = cli(capsys, "cp", str(tmp_path / "nothing"), uri + "-x")
    assert code == 3 and "no DCP checkpoint or safetensors model" in err
    client.put(BUCKET, f"{prefix}loose/config.json", b"{}")
    code, _, err = cli(capsys, "cp", f"s3://{BUCKET}/{prefix}loose", str(tmp_path / "y"))
    assert code == 3 and "holds no .metadata and no *.safetensors file" in err


def test_overwrite_replaces_the_earlier_model_whole(env, tmp_path, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    """A model in 2 shards over one in 3, both ways: the earlier index and every earlier
    weight file go first (the third shard too, which the new index does not name); other
    files the destination holds stay."""
    client = make_client(env)
    _model_folder(tmp_path / "three", 1, 3)
    two = _model_folder(tmp_path / "two", 2, 2)
    uri = f"s3://{BUCKET}/{prefix}model"
    assert cli(capsys, "cp", str(tmp_path / "three"), uri)[0] == 0
    client.put(BUCKET, f"{prefix}model/README.md", b"notes")
    code, _, err = cli(capsys, "cp", str(tmp_path / "two"), uri, "--overwrite")
    assert code == 0, err
    assert _keys(client, f"{prefix}model/") == sorted(_files(tmp_path / "two") + ["README.md"])
    got = load_file(uri + "/", client=client)
    assert sorted(got) == sorted(two) and all(torch.equal(got[k], two[k]) for k in two)

    down = tmp_path / "down"
    _model_folder(down, 3, 3)
    _model_folder(down / "other", 4, 1)  # a model in a folder the copy does not write into: kept
    code, _, err = cli(capsys, "cp", uri, str(down), "--overwrite")
    assert code == 0, err
    theirs = ["other/" + n for n in _files(down / "other")]
    assert _files(down) == sorted(_files(tmp_path / "two") + ["README.md"] + theirs) and len(theirs) == 5


@pytest.mark.parametrize("path", ["direct", "mapped"])
@pytest.mark.parametrize("fail_at", [1, 5, 7])
def test_a_failed_download_leaves_no_partial_file(env, tmp_path, prefix, capsys, monkeypatch, fail_at, path) -> None:  # type: ignore[no-untyped-def]
    """A piece fails: the first or the fifth of the 6 data files' (no file of the copy at DST,
    under its name or a partial one, and nothing of the earlier model --overwrite replaced),
    or the index's (every data file whole at DST, no index); written straight to disk, or
    (where there is no O_DIRECT) through memory maps."""
    from s3torch import _direct_writes

    _model_folder(tmp_path / "model", 1, 3)
    uri = f"s3://{BUCKET}/{prefix}model"
    assert cli(capsys, "cp", str(tmp_path / "model"), uri)[0] == 0
    down = tmp_path / "down"
    _model_folder(down, 2, 2)
    (down / "notes.txt").write_text("mine")
    calls: List[int] = []
    if path == "mapped":
        monkeypatch.setattr(_direct_writes, "supported", lambda: False)
        real = _local_files._finish

        def failing(entry: Any, progress: Any, landed: Any) -> None:
            real(entry, progress, landed)
            del entry  # the piece's handle holds a slice of the file's map: not kept by this frame
            calls.append(1)
            if len(calls) == fail_at:  # with the other files' GETs in flight, cancelled
                raise OSError("injected: the GET failed")

        monkeypatch.setattr(_local_files, "_finish", failing)
    else:
        real_write = _direct_writes._write

        def failing_write(*args: Any) -> None:
            calls.append(1)
            if len(calls) == fail_at:  # with the other files' GETs in flight, cancelled
                raise OSError(errno.EIO, "injected: the piece failed")
            real_write(*args)

        monkeypatch.setattr(_direct_writes, "_write", failing_write)
    code, _, err = cli(capsys, "cp", uri, str(down), "--overwrite")
    assert code == 4 and "injected" in err
    left = _files(down)
    assert not [n for n in left if "partial" in n or n.endswith(".index.json")], left
    assert "notes.txt" in left
    weights = [n for n in left if n.endswith(".safetensors")]
    if fail_at < 7:
        assert weights == [], left
    else:
        data = [n for n in _files(tmp_path / "model") if not n.endswith(".index.json")]
        assert [n for n in left if n != "notes.txt"] == data
        match, mismatch, errors = filecmp.cmpfiles(tmp_path / "model", down, data, shallow=False)
        assert match == data


def test_a_get_failing_with_others_in_flight_reports_its_error(env, tmp_path, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    """One object of several is deleted after the listing: its GET fails (404) while the
    other files' GETs are in flight. The copy reports that error (it was a BufferError: a
    cancelled GET's handle, left in a loop variable, kept a file's map from closing)."""
    from s3torch.cli import _common

    client = make_client(env)
    _model_folder(tmp_path / "model", 1, 3)
    uri = f"s3://{BUCKET}/{prefix}model"
    assert cli(capsys, "cp", str(tmp_path / "model"), uri)[0] == 0
    real = _common.list_all

    def listed_then_deleted(c: Any, bucket: str, pfx: str, *a: Any, **k: Any) -> Any:
        out = list(real(c, bucket, pfx, *a, **k))
        client.delete_object(BUCKET, f"{prefix}model/model-00002-of-00003.safetensors")
        return out

    with pytest.MonkeyPatch.context() as m:
        m.setattr(cp_verb, "list_all", listed_then_deleted)
        code, _, err = cli(capsys, "cp", uri, str(tmp_path / "down"))
    assert code in (3, 4) and "BufferError" not in err and "model-00002-of-00003.safetensors" in err, err
    down = tmp_path / "down"
    assert not down.exists() or _files(down) == []  # every file was under a partial name


def test_a_file_that_fails_its_stored_checksum_fails_the_copy(
    env, proxy, tmp_path, prefix, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """One byte of a shard flipped on its way down (the proxy's corrupt_response): exit 1
    naming the file and both CRCs, no file of the copy left, the index never written. Without
    a stored checksum (an object a client that sends none wrote), the file is copied and
    reported as not checked; --no-verify sends no HEADs."""
    _model_folder(tmp_path / "model", 1, 3)
    uri = f"s3://{BUCKET}/{prefix}model"
    assert cli(capsys, "cp", str(tmp_path / "model"), uri)[0] == 0
    flip = proxy.add(Fault("corrupt_response", method="GET", path=r"model-00002-of-00003\.safetensors", times=1))
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    down = tmp_path / "down"
    code, out, err = cli(capsys, "cp", uri, str(down))
    assert flip.injected == 1
    assert code == 1, (out, err)
    assert f"s3://{BUCKET}/{prefix}model/model-00002-of-00003.safetensors: the bytes read do not match" in err
    assert "stored CRC32C" in err
    assert not down.exists() or _files(down) == []

    make_client(env, checksums="off").put(BUCKET, f"{prefix}model/notes.bin", b"no checksum sent")
    code, out, err = cli(capsys, "cp", uri, str(tmp_path / "again"))
    assert code == 0, err
    assert "checked 7 of 8 files against the checksum S3 stores for them (CRC32C); 1 have none" in out
    heads = proxy.requests_to(prefix, method="HEAD")
    assert heads >= 8  # the copy above: one per object
    code, out, err = cli(capsys, "cp", uri, str(tmp_path / "third"), "--no-verify")
    assert code == 0, err
    assert "checked" not in out and proxy.requests_to(prefix, method="HEAD") == heads
