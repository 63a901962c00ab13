"""Every private torch name s3torch uses, imported here and nowhere else.

Each name is looked up when this module is imported. When a torch release moves or removes
one, the attribute here holds a fallback instead and one ``TorchCompatWarning`` lists what is
missing; s3torch then takes torch's public path for that step:

- ``torch.serialization._save``, ``_serialization_tls``: s3torch's own ``torch.save`` record
  writer is switched off; tensors are written by ``torch.save`` (same bytes, slower checksum).
- ``torch.distributed.checkpoint.filesystem._split_by_size_and_type``, ``_item_size``,
  ``_OverlappingCpuLoader``, ``_SerialCpuLoader``, ``_StorageInfo``: ``S3StorageWriter`` writes
  through torch's own ``FileSystemWriter.write_data`` loop (same files).
- ``torch.distributed.checkpoint.filesystem._StoragePrefix``: a dataclass of the same shape.
- ``torch.distributed._shard._utils.narrow_tensor_by_index``: the same narrowing with
  ``Tensor.narrow``.

The rest of the package reads these as attributes of this module (``_torch_compat.NAME``), so
a test can remove a name from torch, reload this module and exercise the fallback.
"""

from __future__ import annotations

import dataclasses
import importlib
import warnings
from typing import Any, Dict, List, Sequence

import torch


class TorchCompatWarning(UserWarning):
    """A private torch name s3torch uses is missing from this torch; a public path is used."""


MISSING: List[str] = []  # "module.name" of each private name this torch lacks
_INSTEAD: Dict[str, List[str]] = {}  # what s3torch does instead -> the missing names it is for


def _private(module: str, name: str, instead: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        MISSING.append(f"{module}.{name}")
        _INSTEAD.setdefault(instead, []).append(MISSING[-1])
        return None


_RECORDS = "tensors are written by torch.save"
_LOOP = "S3StorageWriter writes through FileSystemWriter.write_data"
_FS = "torch.distributed.checkpoint.filesystem"

serialization_save = _private("torch.serialization", "_save", _RECORDS)
serialization_tls = _private("torch.serialization", "_serialization_tls", _RECORDS)
split_by_size_and_type = _private(_FS, "_split_by_size_and_type", _LOOP)
item_size = _private(_FS, "_item_size", _LOOP)
# The two loaders are no longer called (S3StorageWriter resolves and orders tensors itself, as
# they would); they stay as a check that torch's loop, whose item order the writer mirrors, is
# still the one it was written against.
OverlappingCpuLoader = _private(_FS, "_OverlappingCpuLoader", _LOOP)
SerialCpuLoader = _private(_FS, "_SerialCpuLoader", _LOOP)
StorageInfo = _private(_FS, "_StorageInfo", _LOOP)
StoragePrefix = _private(_FS, "_StoragePrefix", "a dataclass of the same shape")
narrow_tensor_by_index = _private("torch.distributed._shard._utils", "narrow_tensor_by_index", "Tensor.narrow")

# True when s3torch may write tensor records itself / run its own file-writing loop.
RECORD_WRITER = serialization_save is not None and serialization_tls is not None
WRITE_LOOP = None not in (split_by_size_and_type, item_size, OverlappingCpuLoader, SerialCpuLoader, StorageInfo)

if StoragePrefix is None:

    @dataclasses.dataclass
    class _StoragePrefix:
        prefix: str

    StoragePrefix = _StoragePrefix

if narrow_tensor_by_index is None:

    def _narrow_tensor_by_index(tensor: torch.Tensor, offsets: Sequence[int], sizes: Sequence[int]) -> torch.Tensor:
        narrowed = tensor
        for dim, (offset, size) in enumerate(zip(offsets, sizes)):
            if size < tensor.size(dim):
                narrowed = narrowed.narrow(dim, offset, size)
        return narrowed

    narrow_tensor_by_index = _narrow_tensor_by_index

if MISSING:
    warnings.warn(
        f"s3torch: torch {torch.__version__} lacks private names s3torch was written against; "
        "using torch's public path instead: " + "; ".join(f"{', '.join(v)}: {k}" for k, v in _INSTEAD.items()),
        TorchCompatWarning,
        stacklevel=2,
    )
