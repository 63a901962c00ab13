"""The dtypes of the safetensors format and their torch counterparts.

Every dtype the format defines is listed, with its size in bits and its rank in the format's
dtype order (the ``Dtype`` enum of the safetensors crate, smallest alignment first): writers
lay tensors out by descending rank, then by name, which keeps every tensor aligned to its
element size. The torch dtype is looked up by name, so a dtype this torch lacks (the 6-bit
floats, or a float8 variant on an older torch) is known to the format but loads with a clear
error instead of failing the whole header.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch


@dataclass(frozen=True)
class Dtype:
    name: str  # as the header spells it
    bits: int  # size of one element in bits
    rank: int  # position in the format's dtype order (writers sort by descending rank)
    torch_name: Optional[str]  # attribute of torch, None when torch has no such dtype

    @property
    def torch(self) -> Optional[torch.dtype]:
        """The torch dtype, or None when this torch has none."""
        if self.torch_name is None:
            return None
        dt = getattr(torch, self.torch_name, None)
        return dt if isinstance(dt, torch.dtype) else None


# (name, bits, torch name) in the format's dtype order.
_ORDER = [
    ("BOOL", 8, "bool"),
    ("F4", 4, "float4_e2m1fn_x2"),  # two 4-bit floats a byte; torch's shape halves the last dim
    ("F6_E2M3", 6, None),
    ("F6_E3M2", 6, None),
    ("U8", 8, "uint8"),
    ("I8", 8, "int8"),
    ("F8_E5M2", 8, "float8_e5m2"),
    ("F8_E4M3", 8, "float8_e4m3fn"),
    ("F8_E8M0", 8, "float8_e8m0fnu"),
    ("F8_E4M3FNUZ", 8, "float8_e4m3fnuz"),
    ("F8_E5M2FNUZ", 8, "float8_e5m2fnuz"),
    ("I16", 16, "int16"),
    ("U16", 16, "uint16"),
    ("F16", 16, "float16"),
    ("BF16", 16, "bfloat16"),
    ("I32", 32, "int32"),
    ("U32", 32, "uint32"),
    ("F32", 32, "float32"),
    ("C64", 64, "complex64"),
    ("F64", 64, "float64"),
    ("I64", 64, "int64"),
    ("U64", 64, "uint64"),
]

DTYPES: Dict[str, Dtype] = {name: Dtype(name, bits, rank, tn) for rank, (name, bits, tn) in enumerate(_ORDER)}

# torch dtype -> format dtype, for the writer (only the dtypes this torch has).
BY_TORCH: Dict[torch.dtype, Dtype] = {d.torch: d for d in DTYPES.values() if d.torch is not None}

PACKED = "F4"  # the one format dtype whose torch dtype holds two elements
