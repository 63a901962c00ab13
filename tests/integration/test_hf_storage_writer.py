"""S3HuggingFaceStorageWriter: dcp.save as a Hugging Face checkpoint on S3, against torch's
HuggingFaceStorageWriter writing the same state dict to a local folder: the same file names,
tensors, sharding info and index; distributed saves on two gloo ranks (DTensors sharded by rows
and by columns), with the pieces consolidated into full tensors on S3; what it refuses."""

from __future__ import annotations

import json
import os
from typing import Dict, List

import pytest
import safetensors.torch as sts
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.api import CheckpointException

from s3torch._progress import Progress
from s3torch.dcp import S3HuggingFaceStorageReader, S3HuggingFaceStorageWriter
from s3torch.safetensors import MissingShardError
from tests.conftest import BUCKET, REGION, make_client
from tests.gloo_ranks import run_ranks

INDEX = "model.safetensors.index.json"
MAPPING = {
    "embed.weight": 1,
    "layers.0.attn.weight": 2,
    "layers.0.norm.weight": 2,
    "layers.0.count": 2,
    "lm_head.weight": 1,
}


def _model(seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(64, 24, generator=g).to(torch.bfloat16),
        "layers.0.attn.weight": torch.randn(24, 24, generator=g),
        "layers.0.norm.weight": torch.randn(24, generator=g),
        "lm_head.weight": torch.randn(64, 24, generator=g).to(torch.float16),
        "layers.0.count": torch.arange(24, dtype=torch.int64) * (seed + 1),  # torch's consolidation fails ints
    }


def _listing(client, prefix: str) -> List[str]:  # type: ignore[no-untyped-def]
    return sorted(o.key[len(prefix) :] for page in client.list_objects(BUCKET, prefix) for o in page.objects)


def _kw(env) -> dict:  # type: ignore[no-untyped-def]
    return {"s3client_config": make_client(env).s3client_config, "endpoint": env.endpoint}


def test_a_rank0_save_is_torchs_folder(seaweed_env, prefix, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed_env)
    sd = _model(1)
    dcp.save(sd, storage_writer=HuggingFaceStorageWriter(str(tmp_path), fqn_to_index_mapping=MAPPING))
    base = f"s3://{BUCKET}/{prefix}hf"
    dcp.save(
        sd, storage_writer=S3HuggingFaceStorageWriter(REGION, base, fqn_to_index_mapping=MAPPING, **_kw(seaweed_env))
    )
    theirs = sorted(os.listdir(tmp_path))
    assert (
        _listing(client, f"{prefix}hf/")
        == theirs
        == [
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json",
        ]
    )
    for name in theirs[:2]:
        ours_bytes = client.get_object(BUCKET, f"{prefix}hf/{name}").read()
        ours, ref = sts.load(ours_bytes), sts.load((tmp_path / name).read_bytes())
        assert sorted(ours) == sorted(ref) and all(torch.equal(ours[k], ref[k]) for k in ref)
        local = tmp_path / "ours" / name
        local.parent.mkdir(exist_ok=True)
        local.write_bytes(ours_bytes)
        from safetensors import safe_open

        with safe_open(str(local), "pt") as a, safe_open(str(tmp_path / name), "pt") as b:
            ma, mb = a.metadata(), b.metadata()
        assert {k: json.loads(v) if k == "DCP_SHARDING_INFO" else v for k, v in ma.items()} == {
            k: json.loads(v) if k == "DCP_SHARDING_INFO" else v for k, v in mb.items()
        }
    index = json.loads(client.get_object(BUCKET, f"{prefix}hf/model.safetensors.index.json").read())
    assert index == json.loads((tmp_path / "model.safetensors.index.json").read_text())
    # Both readers load it: s3torch's from S3, torch's from a local copy.
    (tmp_path / "ours" / "model.safetensors.index.json").write_text(json.dumps(index))
    for reader in (
        S3HuggingFaceStorageReader(REGION, base, **_kw(seaweed_env)),
        HuggingFaceStorageReader(str(tmp_path / "ours")),
    ):
        got = {k: torch.zeros_like(v) for k, v in sd.items()}
        dcp.load(got, storage_reader=reader)
        assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_what_it_refuses(seaweed_env, prefix) -> None:  # type: ignore[no-untyped-def]
    base = f"s3://{BUCKET}/{prefix}hf"
    kw = _kw(seaweed_env)
    with pytest.raises(ValueError, match="needs save_distributed"):
        S3HuggingFaceStorageWriter(REGION, base, enable_consolidation=True, **kw)
    with pytest.raises(ValueError, match="names a file"):
        S3HuggingFaceStorageWriter(REGION, base + "/model.safetensors", **kw)
    with pytest.raises(ValueError, match="thread_count_consolidation must be a positive int"):
        S3HuggingFaceStorageWriter(REGION, base, thread_count_consolidation=0, **kw)
    with pytest.raises(ValueError, match="file numbers"):
        S3HuggingFaceStorageWriter(REGION, base, fqn_to_index_mapping={"a": 0}, **kw)
    with pytest.raises(CheckpointException, match="holds tensors only"):
        dcp.save(
            {"w": torch.ones(2), "meta": {"epoch": 3}}, storage_writer=S3HuggingFaceStorageWriter(REGION, base, **kw)
        )
    with pytest.raises(CheckpointException, match="has no file in fqn_to_index_mapping"):
        w = S3HuggingFaceStorageWriter(REGION, base, fqn_to_index_mapping={"w": 1}, **kw)
        dcp.save({"w": torch.ones(2), "v": torch.ones(2)}, storage_writer=w)
    assert _listing(make_client(seaweed_env), prefix) == []  # nothing written


def _save_pieces(rank: int, base: str, kw: dict, consolidate: bool) -> dict:
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (2,))
    whole = _model(3)
    # FSDP-like rows, tensor-parallel columns for the attention weight, the rest replicated.
    shards = {"embed.weight": Shard(0), "lm_head.weight": Shard(0), "layers.0.attn.weight": Shard(1)}
    sd = {k: distribute_tensor(v, mesh, [shards[k]]) if k in shards else v for k, v in whole.items()}
    writer = S3HuggingFaceStorageWriter(
        REGION,
        base,
        fqn_to_index_mapping=MAPPING,
        save_distributed=True,
        enable_consolidation=consolidate,
        thread_count_consolidation=2,
        progress=True,
        **kw,
    )
    counted: List[int] = []
    add = Progress.add
    Progress.add = lambda self, n: (counted.append(n), add(self, n))[1]  # type: ignore[method-assign]
    dcp.save(sd, storage_writer=writer)
    return {"ok": True, "counted": sum(counted)}


@pytest.mark.parametrize("consolidate", [True, False])
def test_two_ranks_save_their_pieces_and_consolidate_them(seaweed_env, prefix, tmp_path, consolidate) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed_env)
    base = f"s3://{BUCKET}/{prefix}hf"
    pieces = f"{prefix}hf/sharded/" if consolidate else f"{prefix}hf/"
    stale = f"{pieces}shard-00003-model-00001-of-00002.safetensors"  # an earlier 3-rank save's
    client.put(BUCKET, stale, sts.save({"embed.weight": torch.zeros(1, 24, dtype=torch.bfloat16)}))
    # An earlier consolidated checkpoint in 3 files: deleted once the new index is written.
    earlier = [f"{prefix}hf/model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)] + [f"{prefix}hf/{INDEX}"]
    for key in earlier if consolidate else []:
        client.put(BUCKET, key, b"{}" if key.endswith(".json") else sts.save({"x": torch.zeros(1)}))
    ranks = run_ranks(_save_pieces, (base, _kw(seaweed_env), consolidate), tmp_path)
    assert all(r.get("ok") for r in ranks), ranks
    pieces_bytes = sum(o.size for page in client.list_objects(BUCKET, pieces + "shard-") for o in page.objects)
    full_bytes = sum(v.numel() * v.element_size() for v in _model(3).values())
    # Each rank counts the files it wrote; the coordinator, the consolidated tensors too.
    assert sum(r["counted"] for r in ranks) == pieces_bytes + (full_bytes if consolidate else 0)
    whole = _model(3)
    names = _listing(client, f"{prefix}hf/")
    shard_files = [n for n in names if "shard-" in n]
    assert stale[len(prefix) + 3 :] not in names and len(shard_files) == 4  # 2 ranks x 2 files
    # Loaded back whole by the reader, from the pieces or from the consolidated files.
    got = {k: torch.zeros_like(v) for k, v in whole.items()}
    dcp.load(
        got, storage_reader=S3HuggingFaceStorageReader(REGION, base if consolidate else base + "/", **_kw(seaweed_env))
    )
    assert all(torch.equal(got[k], whole[k]) for k in whole)
    if not consolidate:
        assert "model.safetensors.index.json" not in names
        _consolidating_fails_cleanly(seaweed_env, prefix, whole)
        # One rank's file gone (a rank whose save failed, a file not copied): the load names
        # the rows no file holds instead of leaving them as they were.
        client.delete_object(BUCKET, f"{prefix}hf/shard-00001-model-00001-of-00002.safetensors")
        reader = S3HuggingFaceStorageReader(REGION, base + "/", **_kw(seaweed_env))
        with pytest.raises(CheckpointException) as info:
            dcp.load({k: torch.zeros_like(v) for k, v in whole.items()}, storage_reader=reader)
        ((err, _tb),) = info.value.failures.values()
        assert isinstance(err, MissingShardError), err
        assert "tensor 'embed.weight' (64x24, in 1 piece): rows 0..32 of 64 are in none of its files" in str(err)
        return
    assert [n for n in names if "shard-" not in n] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    out: Dict[str, torch.Tensor] = {}
    for name in names[:2]:
        out.update(sts.load(client.get_object(BUCKET, f"{prefix}hf/{name}").read()))
    assert sorted(out) == sorted(whole) and all(torch.equal(out[k], whole[k]) for k in whole)
    index = json.loads(client.get_object(BUCKET, f"{prefix}hf/model.safetensors.index.json").read())
    assert index["weight_map"] == {k: f"model-0000{i}-of-00002.safetensors" for k, i in MAPPING.items()}
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in whole.values())


def _save_uneven(rank: int, base: str, kw: dict) -> dict:
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    mesh = init_device_mesh("cpu", (4,))
    whole = {"w": torch.arange(10.0).reshape(2, 5), "big": torch.arange(27.0).reshape(9, 3)}
    writer = S3HuggingFaceStorageWriter(REGION, base, save_distributed=True, enable_consolidation=True, **kw)
    dcp.save({k: distribute_tensor(v, mesh, [Shard(0)]) for k, v in whole.items()}, storage_writer=writer)
    exact = {}
    for where in (base, base + "/sharded/"):  # the consolidated files, and the ranks' pieces
        dest = {k: distribute_tensor(torch.zeros_like(v), mesh, [Shard(0)]) for k, v in whole.items()}
        dcp.load(dest, storage_reader=S3HuggingFaceStorageReader(REGION, where, **kw))
        exact[where] = all(torch.equal(dest[k].full_tensor(), whole[k]) for k in whole)
    return exact


def test_uneven_shards_save_and_load_on_four_ranks(seaweed_env, prefix, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Uneven shards end to end: 2 rows of "w" and 9 of "big" over four ranks (torch's
    DTensor shards 1, 1, 0, 0 and 3, 3, 3, 0 rows). The pieces of no rows are written (once:
    torch's planner keeps one of identical chunks) and left out on load; each rank loads
    the consolidated files and the pieces exactly."""
    base = f"s3://{BUCKET}/{prefix}uneven"
    ranks = run_ranks(_save_uneven, (base, _kw(seaweed_env)), tmp_path, world=4)
    assert ranks == [{base: True, base + "/sharded/": True}] * 4, ranks


def _consolidating_fails_cleanly(env, prefix: str, whole: Dict[str, torch.Tensor]) -> None:  # type: ignore[no-untyped-def]
    """The pieces at the top of hf/ consolidated into hf/out/ two files at once: a failure on
    the second file deletes the first and writes no index; the next run writes the whole."""
    from unittest import mock

    from s3torch.dcp import _hf_consolidate

    client = make_client(env)
    saved = S3HuggingFaceStorageReader(REGION, f"s3://{BUCKET}/{prefix}hf/", **_kw(env))._read_metadata()
    args = (REGION, client.s3client_config, env.endpoint, BUCKET, f"{prefix}hf/", f"{prefix}hf/out/", saved, MAPPING)
    real = _hf_consolidate._write_file

    def failing(reader, saved, native, bucket, key, *a):  # type: ignore[no-untyped-def]
        if key.endswith("model-00002-of-00002.safetensors"):
            raise OSError("injected: the second file failed")
        return real(reader, saved, native, bucket, key, *a)

    with mock.patch.object(_hf_consolidate, "_write_file", failing), pytest.raises(OSError, match="injected"):
        _hf_consolidate.consolidate(*args, Progress("consolidate", "x", False), threads=2)
    assert _listing(client, f"{prefix}hf/out/") == []
    _hf_consolidate.consolidate(*args, Progress("consolidate", "x", False), threads=2)
    assert _listing(client, f"{prefix}hf/out/") == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        INDEX,
    ]
    from s3torch.safetensors import load_file

    got = load_file(f"s3://{BUCKET}/{prefix}hf/out/", client=client)
    assert sorted(got) == sorted(whole) and all(torch.equal(got[k], whole[k]) for k in whole)


def test_progress_counts_the_files_written(seaweed_env, prefix, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.test_safetensors_model import _counted

    client = make_client(seaweed_env)
    seen = _counted(monkeypatch)
    base = f"s3://{BUCKET}/{prefix}hf"
    w = S3HuggingFaceStorageWriter(REGION, base, fqn_to_index_mapping=MAPPING, progress=True, **_kw(seaweed_env))
    dcp.save(_model(5), storage_writer=w)
    files = sum(o.size for page in client.list_objects(BUCKET, f"{prefix}hf/model-") for o in page.objects)
    assert seen == [("HF save to", base, files)]
    assert f"s3torch: HF save to {base}: " in capsys.readouterr().out


def test_overwrite_false_refuses_a_folder_holding_a_checkpoint(seaweed_env, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed_env)
    base = f"s3://{BUCKET}/{prefix}hf"
    kw = dict(fqn_to_index_mapping=MAPPING, overwrite=False, **_kw(seaweed_env))
    dcp.save(_model(6), storage_writer=S3HuggingFaceStorageWriter(REGION, base, **kw))  # an empty folder: written
    before = {n: client.get_object(BUCKET, f"{prefix}hf/{n}").read() for n in _listing(client, f"{prefix}hf/")}
    with pytest.raises(CheckpointException, match="holds a Hugging Face checkpoint already"):
        dcp.save(_model(7), storage_writer=S3HuggingFaceStorageWriter(REGION, base, **kw))
    assert {n: client.get_object(BUCKET, f"{prefix}hf/{n}").read() for n in _listing(client, f"{prefix}hf/")} == before


def _folder_model(client, prefix: str) -> Dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    from s3torch.safetensors import load_file

    return load_file(f"s3://{BUCKET}/{prefix}", client=client)


def test_a_save_replaces_the_earlier_checkpoint_never_a_mix(seaweed_env, prefix, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Over a checkpoint in 2 files: a save in 3 files leaves the earlier one loadable until
    its index is written, then deletes the 2 earlier files. A save in 3 files again (the same
    names) deletes the earlier files first; one that fails on its second file deletes the file
    it wrote and begins no other: the folder holds neither save, never the earlier index over
    a mix of two saves. The next save writes the folder whole."""
    from s3torch.safetensors import _save

    client = make_client(seaweed_env)
    base = f"s3://{BUCKET}/{prefix}hf"
    three = {**MAPPING, "lm_head.weight": 3}

    def save(seed: int, mapping: Dict[str, int]) -> None:
        w = S3HuggingFaceStorageWriter(REGION, base, fqn_to_index_mapping=mapping, **_kw(seaweed_env))
        dcp.save(_model(seed), storage_writer=w)

    def same(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor]) -> bool:
        return sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)

    save(1, MAPPING)
    seen: List[List[str]] = []
    real = _save.write

    def watching(s3, bucket, key, *a, **k):  # type: ignore[no-untyped-def]
        seen.append(_listing(client, f"{prefix}hf/"))
        assert same(_folder_model(client, f"{prefix}hf/"), _model(1))  # still the earlier one
        return real(s3, bucket, key, *a, **k)

    monkeypatch.setattr(_save, "write", watching)
    save(2, three)
    assert len(seen) == 3 and "model-00001-of-00002.safetensors" in seen[0]
    names = [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)] + ["model.safetensors.index.json"]
    assert _listing(client, f"{prefix}hf/") == names and same(_folder_model(client, f"{prefix}hf/"), _model(2))

    calls: List[str] = []

    def failing(s3, bucket, key, *a, **k):  # type: ignore[no-untyped-def]
        calls.append(key)
        if len(calls) == 2:
            raise OSError("injected: the second file's upload failed")
        return real(s3, bucket, key, *a, **k)

    monkeypatch.setattr(_save, "write", real)
    save(3, three)  # the same names: the earlier files go first
    monkeypatch.setattr(_save, "write", failing)
    with pytest.raises(CheckpointException, match="injected"):
        save(4, three)
    assert _listing(client, f"{prefix}hf/") == []  # nothing of either, never an index over a mix
    assert calls == [f"{prefix}hf/model-0000{i}-of-00003.safetensors" for i in (1, 2)]  # the third not begun
    monkeypatch.setattr(_save, "write", real)
    save(5, MAPPING)
    assert _listing(client, f"{prefix}hf/") == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    assert same(_folder_model(client, f"{prefix}hf/"), _model(5))
