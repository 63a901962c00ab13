"""How s3torch.safetensors splits a state dict into shards and which tied names it drops,
against huggingface_hub's and the safetensors package's own code on generated state dicts
(sizes, shard limits, tensors sharing storage), and the arguments it refuses."""

from __future__ import annotations

from typing import Dict, List

import huggingface_hub
import pytest
import safetensors.torch as sts
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from s3torch.safetensors._shards import check_pattern, parse_size, split, written_by
from s3torch.safetensors._shared import duplicate_names, shared_groups


@st.composite
def state_dicts(draw: st.DrawFn) -> Dict[str, torch.Tensor]:
    """Tensors of varied sizes; some names tied to an earlier tensor (the same tensor, or a
    view covering its whole storage)."""
    n = draw(st.integers(1, 12))
    out: Dict[str, torch.Tensor] = {}
    for i in range(n):
        name = f"m{draw(st.integers(0, 99)):02d}.w{i}"
        if out and draw(st.booleans()) and draw(st.booleans()):
            target = draw(st.sampled_from(sorted(out)))
            base = out[target]
            out[name] = base if draw(st.booleans()) else base.view(-1)
        else:
            out[name] = torch.zeros(draw(st.integers(0, 300)), dtype=draw(st.sampled_from([torch.float32, torch.int8])))
    return out


@settings(max_examples=150, deadline=None)
@given(state_dicts(), st.integers(1, 1500))
def test_split_is_huggingface_hubs(state: Dict[str, torch.Tensor], limit: int) -> None:
    theirs = huggingface_hub.split_torch_state_dict_into_shards(state, max_shard_size=limit)
    ours = split(state, "model{suffix}.safetensors", limit)
    assert ours.files == theirs.filename_to_tensors
    assert ours.total_size == theirs.metadata["total_size"]


@settings(max_examples=150, deadline=None)
@given(state_dicts(), st.lists(st.sampled_from(["a", "b"]), max_size=2))
def test_tied_names_are_the_packages(state: Dict[str, torch.Tensor], _: List[str]) -> None:
    names = sorted(state)
    for discard in ([], names[:1], names[-2:]):
        theirs = huggingface_hub.serialization._torch._remove_duplicate_names(state, discard_names=discard)
        assert duplicate_names(state, discard=discard) == dict(theirs)
    for preferred in ([], names[1:2]):
        theirs = sts._remove_duplicate_names(state, preferred_names=preferred)
        assert duplicate_names(state, preferred=preferred) == dict(theirs)


def test_views_that_do_not_overlap_are_not_shared() -> None:
    qkv = torch.zeros(3, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    assert shared_groups({"q": q, "k": k, "v": v}) == []
    assert shared_groups({"q": q, "qkv": qkv, "x": torch.zeros(1)}) == [["q", "qkv"]]
    with pytest.raises(RuntimeError, match="none of them covers all of it"):
        duplicate_names({"a": qkv[:2], "b": qkv[1:]})


def test_sizes_and_patterns() -> None:
    assert parse_size("5GB") == 5 * 10**9 and parse_size(" 1.5mb ") == 1_500_000 and parse_size(7) == 7
    for bad in ["5GiB", "GB", "-1KB", 0, 2.5, True, None]:
        with pytest.raises((ValueError, TypeError), match="max_shard_size"):
            parse_size(bad)  # type: ignore[arg-type]
    assert check_pattern("w{suffix}.safetensors") == "w{suffix}.safetensors"
    for bad in [
        "w.safetensors",
        "{suffix}{suffix}.safetensors",
        "d/w{suffix}.safetensors",
        "..\\w{suffix}.safetensors",
    ]:
        with pytest.raises(ValueError, match="filename_pattern"):
            check_pattern(bad)
    for bad in ["w{suffix}.bin", "{suffix}.safetensors", "w{suffix}{x}.safetensors", 3]:
        with pytest.raises(ValueError, match="filename_pattern"):
            check_pattern(bad)  # type: ignore[arg-type]
    r = written_by("model{suffix}.safetensors")
    hits = ["model.safetensors", "model-00001-of-00002.safetensors", "model.safetensors.index.json"]
    misses = ["model.safetensors.backup", "model-1-of-2.safetensors", "xmodel.safetensors", "model.bin"]
    assert all(r.fullmatch(n) for n in hits) and not any(r.fullmatch(n) for n in misses)
