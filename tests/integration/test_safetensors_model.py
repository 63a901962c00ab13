"""A model's weights between S3 and the model: save_model/load_model (the safetensors package's),
save_torch_state_dict/save_torch_model/load_torch_model (huggingface_hub's). The same files as
huggingface_hub writes for the same state dict; tied weights; loads straight into the model's
parameters, checked before anything is read; a save replacing an earlier one, and a save that
fails on the way."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import pytest
import safetensors.torch as sts
import torch
from torch import nn

from s3torch.safetensors import (
    IncompatibleKeys,
    _load,
    load_file,
    load_model,
    load_torch_model,
    safe_open,
    save_file,
    save_model,
    save_torch_model,
    save_torch_state_dict,
)
from tests.conftest import BUCKET, make_client
from tests.faults.proxy import Fault


class Tiny(nn.Module):
    """A language model's shape: tied embedding and head, norms, a buffer, several dtypes."""

    def __init__(self, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(64, 32, dtype=dtype)
        self.layers = nn.ModuleList(nn.Linear(32, 32, dtype=dtype) for _ in range(4))
        self.norm = nn.LayerNorm(32, dtype=dtype)
        self.head = nn.Linear(32, 64, bias=False, dtype=dtype)
        self.head.weight = self.embed.weight  # tied
        self.register_buffer("steps", torch.tensor([seed], dtype=torch.int64))


def _listing(client, prefix: str) -> List[str]:  # type: ignore[no-untyped-def]
    return sorted(o.key[len(prefix) :] for page in client.list_objects(BUCKET, prefix) for o in page.objects)


def _same_model(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_sharded_save_writes_the_files_huggingface_hub_writes(seaweed, prefix, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub  # here: tests/gpu imports this module's Tiny without it

    client = make_client(seaweed)
    model = Tiny(1)
    state = dict(model.state_dict())
    state["transposed"] = torch.arange(12.0).reshape(3, 4).t()  # not contiguous: saved as its copy
    kw: Dict[str, Any] = dict(max_shard_size="10KB", metadata={"source": "test"})
    huggingface_hub.save_torch_state_dict(dict(state), tmp_path, **kw)
    written = save_torch_state_dict(state, f"s3://{BUCKET}/{prefix}", client=client, **kw)
    theirs = sorted(os.listdir(tmp_path))
    assert len(theirs) > 3 and _listing(client, prefix) == theirs
    assert written == [f"s3://{BUCKET}/{prefix}{n}" for n in theirs]
    for name in theirs:
        assert client.get_object(BUCKET, prefix + name).read() == (tmp_path / name).read_bytes(), name
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["head.weight"] == "embed.weight"  # the tied name dropped, recorded
    assert "steps" in index["weight_map"] and list(state) == list(model.state_dict()) + ["transposed"]  # not changed


def test_one_file_when_it_fits_and_huggingface_hub_loads_it(seaweed, prefix, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import huggingface_hub

    client = make_client(seaweed)
    model = Tiny(2)
    save_torch_model(model, f"s3://{BUCKET}/{prefix}", client=client, metadata={"a": "1"})
    assert _listing(client, prefix) == ["model.safetensors"]
    (tmp_path / "model.safetensors").write_bytes(client.get_object(BUCKET, f"{prefix}model.safetensors").read())
    with safe_open(f"s3://{BUCKET}/{prefix}model.safetensors", client=client) as f:
        assert f.metadata() == {"format": "pt", "a": "1", "head.weight": "embed.weight"}
    fresh = Tiny(3)
    result = huggingface_hub.load_torch_model(fresh, tmp_path, strict=False)
    assert result.missing_keys == ["head.weight"] and _same_model(fresh, model)  # theirs reports the tied name


def test_load_model_reads_into_the_parameters_themselves(seaweed, prefix, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    model = Tiny(4)
    save_torch_model(model, f"s3://{BUCKET}/{prefix}", client=client, max_shard_size="4KB")
    fresh = Tiny(5)
    ptrs = {k: v.data_ptr() for k, v in fresh.state_dict().items()}
    versions = {k: p._version for k, p in fresh.named_parameters()}
    allocs: List[Any] = []
    real = _load.alloc
    monkeypatch.setattr(_load, "alloc", lambda *a: allocs.append(a) or real(*a))
    missing, unexpected = load_model(fresh, f"s3://{BUCKET}/{prefix}", client=client)
    assert (missing, unexpected) == ([], [])
    assert _same_model(fresh, model) and fresh.head.weight is fresh.embed.weight
    assert {k: v.data_ptr() for k, v in fresh.state_dict().items()} == ptrs
    assert allocs == []  # every tensor landed in its parameter
    assert all(p._version > versions[k] for k, p in fresh.named_parameters())  # autograd sees the write


def test_save_model_and_the_package_interchange(seaweed, prefix, tmp_path) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    uri = f"s3://{BUCKET}/{prefix}m.safetensors"
    model = Tiny(6)
    save_model(model, uri, client=client)
    local = tmp_path / "m.safetensors"
    local.write_bytes(client.get_object(BUCKET, f"{prefix}m.safetensors").read())
    theirs = Tiny(7)
    missing, unexpected = sts.load_model(theirs, str(local))
    assert not missing and not unexpected and _same_model(theirs, model)
    sts.save_model(Tiny(8), str(local))
    client.put(BUCKET, f"{prefix}p.safetensors", local.read_bytes())
    ours = Tiny(9)
    load_model(ours, f"s3://{BUCKET}/{prefix}p.safetensors", client=client)
    assert _same_model(ours, Tiny(8))


def test_a_checkpoint_that_does_not_fit_leaves_the_model_untouched(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    uri = f"s3://{BUCKET}/{prefix}m.safetensors"
    state = {k: v.clone() for k, v in Tiny(10).state_dict().items() if k != "head.weight"}
    state["extra"] = torch.ones(3)
    state["norm.weight"] = torch.ones(31)
    save_file(state, uri, client=client)
    model = Tiny(11)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "extra"'):
        load_model(model, uri, client=client)
    with pytest.raises(RuntimeError, match=r"size mismatch for norm.weight: copying a param with shape"):
        load_model(model, uri, strict=False, client=client)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    del state["norm.weight"]
    save_file(state, uri, client=client)
    assert load_model(model, uri, strict=False, client=client) == (["norm.weight"], ["extra"])


def _allocs(monkeypatch: pytest.MonkeyPatch) -> List[Any]:
    allocs: List[Any] = []
    real = _load.alloc
    monkeypatch.setattr(_load, "alloc", lambda *a: allocs.append(a) or real(*a))
    return allocs


def test_another_dtype_is_cast_into_the_parameters(seaweed, prefix, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    model = Tiny(12)
    save_torch_model(model, f"s3://{BUCKET}/{prefix}", client=client)
    half = Tiny(13, dtype=torch.bfloat16)
    allocs = _allocs(monkeypatch)
    load_model(half, f"s3://{BUCKET}/{prefix}", client=client)
    ref = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    assert all(torch.equal(half.state_dict()[k], ref[k]) for k in ref)
    assert allocs == []  # cast on the way, through the staging ring, into the parameters


def test_the_cuda_path_on_cpu(seaweed, prefix, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A CUDA model's parameters take the bytes through the ring of a loader for their device;
    here CPU parameters through a CPU ring (as tests/gpu/test_cuda_safetensors.py on a GPU)."""
    client = make_client(seaweed)
    model = Tiny(15)
    save_torch_model(model, f"s3://{BUCKET}/{prefix}", client=client, max_shard_size="6KB")
    real_init = _load.Loader.__init__

    def forced(self, *a: Any, **k: Any) -> None:
        real_init(self, *a, **k)
        self.force_staging = True

    monkeypatch.setattr(_load.Loader, "__init__", forced)
    staged: List[int] = []
    real_staged = _load.Loader._load_staged
    monkeypatch.setattr(
        _load.Loader, "_load_staged", lambda self, items, *a: staged.append(len(items)) or real_staged(self, items, *a)
    )
    allocs = _allocs(monkeypatch)
    fresh = Tiny(16)
    ptrs = {k: v.data_ptr() for k, v in fresh.state_dict().items()}
    assert load_model(fresh, f"s3://{BUCKET}/{prefix}", client=client) == ([], [])
    assert _same_model(fresh, model) and {k: v.data_ptr() for k, v in fresh.state_dict().items()} == ptrs
    assert allocs == [] and sum(staged) == len(fresh.state_dict()) - 1  # every tensor but the tied one


class Conv(nn.Module):
    """A vision model's shape: batch norms (with num_batches_tracked) and an instance norm."""

    def __init__(self, seed: int, instance: bool = False) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8))
        self.extra = nn.InstanceNorm1d(8, track_running_stats=True) if instance else nn.Identity()
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.num_batches_tracked.fill_(seed)


def test_batch_norms_load_directly(seaweed, prefix, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """torch's batch norms override _load_from_state_dict only to keep num_batches_tracked
    when a checkpoint lacks it: they load straight into the parameters (nothing allocated),
    and a checkpoint without num_batches_tracked loads as the packages load it (the counter
    kept, not reported missing, strict or not). An instance norm still goes through
    load_state_dict."""
    client = make_client(seaweed)
    model = Conv(3)
    save_model(model, f"s3://{BUCKET}/{prefix}full.safetensors", client=client)
    old = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    save_file(old, f"s3://{BUCKET}/{prefix}old.safetensors", client=client)
    sts.save_file(old, str(tmp_path / "old.safetensors"))
    allocs = _allocs(monkeypatch)
    fresh = Conv(4)
    ptrs = {k: v.data_ptr() for k, v in fresh.state_dict().items()}
    assert load_model(fresh, f"s3://{BUCKET}/{prefix}full.safetensors", client=client) == ([], [])
    assert _same_model(fresh, model) and allocs == []
    assert {k: v.data_ptr() for k, v in fresh.state_dict().items()} == ptrs
    for strict in (True, False):
        ours, theirs = Conv(5), Conv(5)
        got = load_model(ours, f"s3://{BUCKET}/{prefix}old.safetensors", strict=strict, client=client)
        sts.load_model(theirs, str(tmp_path / "old.safetensors"), strict=strict)
        assert got == ([], []) and _same_model(ours, theirs) and allocs == []
        assert int(ours.bn.num_batches_tracked) == 5  # kept
    with_instance = Conv(6, instance=True)
    save_model(with_instance, f"s3://{BUCKET}/{prefix}inst.safetensors", client=client)
    target = Conv(7, instance=True)
    assert load_model(target, f"s3://{BUCKET}/{prefix}inst.safetensors", client=client) == ([], [])
    assert _same_model(target, with_instance) and allocs != []  # read into host tensors, then copied


def test_a_hooked_module_is_loaded_by_load_state_dict(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    model = Tiny(12)
    save_torch_model(model, f"s3://{BUCKET}/{prefix}", client=client)

    seen: List[str] = []
    hooked = Tiny(14)
    hooked.norm._register_load_state_dict_pre_hook(lambda sd, pfx, *a: seen.append(pfx))
    assert load_model(hooked, f"s3://{BUCKET}/{prefix}", client=client) == ([], [])
    assert seen == ["norm."] and _same_model(hooked, model)


def test_a_save_replaces_the_earlier_one(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    folder = f"s3://{BUCKET}/{prefix}"
    client.put(BUCKET, f"{prefix}model.safetensors.backup", b"kept")
    client.put(BUCKET, f"{prefix}config.json", b"{}")
    for i, size in enumerate(["4KB", "6KB", "4KB", "1GB", "6KB", "6KB"]):
        model = Tiny(20 + i)
        save_torch_model(model, folder, client=client, max_shard_size=size)
        names = _listing(client, prefix)
        assert "model.safetensors.backup" in names and "config.json" in names
        ours = [n for n in names if n.startswith("model") and not n.endswith(".backup")]
        if size == "1GB":
            assert ours == ["model.safetensors"]
        else:
            count = len(ours) - 1
            assert count > 1 and all(f"-of-{count:05d}" in n for n in ours if not n.endswith(".json"))
        fresh = Tiny(99)
        assert load_torch_model(fresh, folder, client=client, strict=True) == IncompatibleKeys([], [])
        assert _same_model(fresh, model)
    save_torch_model(Tiny(30), folder, client=client, max_shard_size="4KB", is_main_process=False)
    names = _listing(client, prefix)  # other processes delete nothing: the earlier shards stay
    assert any("-of-00005" in n for n in names) and any("-of-00006" in n for n in names)


def test_overwrite_false_refuses_an_existing_save(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    folder = f"s3://{BUCKET}/{prefix}"
    save_torch_model(Tiny(40), folder, client=client, max_shard_size="4KB", overwrite=False)
    before = _listing(client, prefix)
    with pytest.raises(FileExistsError, match="holds a save already"):
        save_torch_model(Tiny(41), folder, client=client, overwrite=False)
    assert _listing(client, prefix) == before
    fresh = Tiny(99)
    load_model(fresh, folder, client=client)
    assert _same_model(fresh, Tiny(40))


def test_a_failed_save_leaves_the_earlier_one(proxy, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(proxy)
    folder = f"s3://{BUCKET}/{prefix}"
    save_torch_model(Tiny(50), folder, client=client, max_shard_size="6KB")
    before = _listing(client, prefix)
    rule = proxy.add(Fault("error", method="PUT", path=r"model-00002-of-", status=403, code="AccessDenied"))
    with pytest.raises(Exception, match="AccessDenied|403"):
        save_torch_model(Tiny(51), folder, client=client, max_shard_size="4KB")
    proxy.clear()
    assert rule.matched >= 1
    assert _listing(client, prefix) == before  # the new shards written were deleted, no index
    fresh = Tiny(99)
    load_model(fresh, folder, client=client)
    assert _same_model(fresh, Tiny(50))


def test_bad_arguments_write_nothing(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    folder = f"s3://{BUCKET}/{prefix}"
    state = Tiny(60).state_dict()
    for pattern in ["model.safetensors", "a/model{suffix}.safetensors", "model{suffix}.bin", "{suffix}.safetensors"]:
        with pytest.raises(ValueError, match="filename_pattern"):
            save_torch_state_dict(state, folder, filename_pattern=pattern, client=client)
    for size in ["5XB", "GB", 0, True]:
        with pytest.raises((ValueError, TypeError), match="max_shard_size"):
            save_torch_state_dict(state, folder, max_shard_size=size, client=client)
    with pytest.raises(ValueError, match="names a file"):
        save_torch_state_dict(state, folder + "model.safetensors", client=client)
    with pytest.raises(ValueError, match="safe_serialization"):
        save_torch_state_dict(state, folder, safe_serialization=False, client=client)
    with pytest.raises(ValueError, match="no dtype"):  # no safetensors dtype: refused before any write
        save_torch_state_dict({**state, "u": torch.zeros(2, dtype=torch.uint1)}, folder, client=client)
    with pytest.raises(ValueError, match="safe must be True"):
        load_torch_model(Tiny(0), folder, safe=False, client=client)
    assert _listing(client, prefix) == []


def test_load_torch_model_finds_the_index_or_the_one_file(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    folder = f"s3://{BUCKET}/{prefix}"
    save_torch_model(Tiny(70), folder, client=client, max_shard_size="4KB", filename_pattern="w{suffix}.safetensors")
    with pytest.raises(ValueError, match="expected an index 'model.safetensors.index.json'"):
        load_torch_model(Tiny(0), folder, client=client)
    fresh = Tiny(0)
    keys = load_torch_model(fresh, folder, client=client, filename_pattern="w{suffix}.safetensors")
    assert keys == IncompatibleKeys([], []) and _same_model(fresh, Tiny(70))
    assert load_file(folder, client=client).keys() == Tiny(70).state_dict().keys() - {"head.weight"}


def _counted(monkeypatch: pytest.MonkeyPatch) -> List[Any]:
    """(what, target, bytes counted) of every Progress that finished."""
    from s3torch import _progress

    seen: List[Any] = []
    real = _progress.Progress.done

    def done(self: Any) -> Any:
        seen.append((self.what, self.target, self.n))
        return real(self)

    monkeypatch.setattr(_progress.Progress, "done", done)
    return seen


def test_progress_counts_every_byte_saved_and_loaded(seaweed, prefix, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    folder = f"s3://{BUCKET}/{prefix}"
    seen = _counted(monkeypatch)
    save_torch_model(Tiny(80), folder, client=client, max_shard_size="6KB", progress=True)
    stored = sum(o.size for page in client.list_objects(BUCKET, prefix) for o in page.objects)
    fresh = Tiny(81)
    load_model(fresh, folder, client=client, progress=True)
    tensors = sum(v.numel() * v.element_size() for k, v in fresh.state_dict().items() if k != "head.weight")
    assert seen == [("save to", folder, stored), ("load into a model from", folder, tensors)]
    out = capsys.readouterr().out
    assert f"s3torch: save to {folder}: " in out and f"s3torch: load into a model from {folder}: " in out
