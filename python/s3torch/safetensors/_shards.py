"""How a state dict is split into safetensors shards, and the index that maps them: the
layout huggingface_hub's ``split_torch_state_dict_into_shards`` and ``save_torch_state_dict``
write, so the same state dict gives the same file names, the same tensors in each, and the
same index.

Tensors are taken in the state dict's order; a shard is closed when the next tensor would
take it past ``max_shard_size`` (a tensor larger than that gets a shard of its own). A
tensor's size is its storage's, counted once for tensors sharing one (they go into the shard
of the first). One shard is ``model.safetensors`` and no index; ``n`` shards are
``model-00001-of-0000n.safetensors`` ... and ``model.safetensors.index.json``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Union

import torch

from ._source import FILE_SUFFIX

DEFAULT_PATTERN = "model{suffix}.safetensors"
DEFAULT_MAX_SHARD_SIZE = "5GB"
_UNITS = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3}
INDEX_EXTENSION = ".index.json"


def parse_size(size: Union[int, str]) -> int:
    """Bytes from an int or a string such as ``"5GB"`` (units TB, GB, MB, KB: powers of 10)."""
    if isinstance(size, bool) or not isinstance(size, (int, str)):
        raise TypeError(f"max_shard_size must be an int or a string such as '5GB', got {size!r}")
    if isinstance(size, str):
        text = size.strip()
        unit = _UNITS.get(text[-2:].upper())
        try:
            if unit is None:
                raise ValueError
            size = int(float(text[:-2].strip()) * unit)
        except ValueError:
            raise ValueError(
                f"max_shard_size {size!r}: expected a number and a unit (TB, GB, MB, KB), as '5GB'"
            ) from None
    if size < 1:
        raise ValueError(f"max_shard_size must be at least 1 byte, got {size}")
    return size


def check_pattern(pattern: str) -> str:
    """A file-name pattern: ``{suffix}`` once, a ``.safetensors`` name, no folder part."""
    if not isinstance(pattern, str) or pattern.count("{suffix}") != 1:
        raise ValueError(f"filename_pattern must contain '{{suffix}}' once, as {DEFAULT_PATTERN!r}; got {pattern!r}")
    rest = pattern.replace("{suffix}", "")
    if "{" in rest or "}" in rest:
        raise ValueError(f"filename_pattern {pattern!r}: only '{{suffix}}' may be in braces")
    if "/" in pattern or "\\" in pattern:
        raise ValueError(f"filename_pattern {pattern!r} must be a file name (no '/'), as {DEFAULT_PATTERN!r}")
    if not rest.endswith(FILE_SUFFIX) or rest == FILE_SUFFIX:
        raise ValueError(
            f"filename_pattern {pattern!r} must be a name ending in {FILE_SUFFIX!r}: s3torch writes safetensors only"
        )
    return pattern


def file_name(pattern: str, index: int, count: int) -> str:
    return pattern.format(suffix="" if count == 1 else f"-{index + 1:05d}-of-{count:05d}")


def index_name(pattern: str) -> str:
    return pattern.format(suffix="") + INDEX_EXTENSION


def written_by(pattern: str) -> "re.Pattern[str]":
    """Names a save with ``pattern`` writes, whatever its shard count: what it replaces."""
    before, _, after = pattern.partition("{suffix}")
    return re.compile(re.escape(before) + r"(-\d{5}-of-\d{5})?" + re.escape(after) + r"(\.index\.json)?")


def _storage_size(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def _storage_id(t: torch.Tensor) -> Optional[Any]:
    if t.device.type == "meta":
        return None
    return t.device, t.untyped_storage().data_ptr(), _storage_size(t)


@dataclass
class Split:
    """Which file holds which tensors, in the order they are written."""

    files: Dict[str, List[str]]  # file name -> tensor names
    total_size: int

    @property
    def sharded(self) -> bool:
        return len(self.files) > 1

    def index_bytes(self, metadata: Dict[str, str]) -> bytes:
        """The index huggingface_hub writes: ``json.dump(..., indent=2)``."""
        weight_map = {name: f for f, names in self.files.items() for name in names}
        index = {"metadata": {"total_size": self.total_size, **metadata}, "weight_map": weight_map}
        return json.dumps(index, indent=2).encode()


def split(state_dict: Dict[str, torch.Tensor], pattern: str, max_shard_size: int) -> Split:
    shards: List[List[str]] = []
    current: List[str] = []
    current_size = total = 0
    sharing: Dict[Any, List[str]] = {}  # storage -> names on it, the first placed for all
    for name, t in state_dict.items():
        sid = _storage_id(t)
        if sid is not None:
            if sid in sharing:
                sharing[sid].append(name)
                continue
            sharing[sid] = [name]
        size = _storage_size(t)
        total += size
        if size > max_shard_size:
            shards.append([name])
            continue
        if current and current_size + size > max_shard_size:
            shards.append(current)
            current, current_size = [], 0
        current.append(name)
        current_size += size
    if current or not shards:
        shards.append(current)
    for names in sharing.values():
        for shard in shards:
            if names[0] in shard:
                shard.extend(names[1:])
                break
    return Split({file_name(pattern, i, len(shards)): s for i, s in enumerate(shards)}, total)
