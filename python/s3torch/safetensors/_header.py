"""The safetensors header: read and validated before anything is allocated, and written.

A file is ``N`` (8 bytes, little-endian), ``N`` bytes of JSON, then the data section. The JSON
maps each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets into
the data section) and may carry ``"__metadata__"``: str -> str. The rules checked here are the
ones the safetensors crate enforces, so a file is accepted here exactly when it is there: the
header at most ``MAX_HEADER`` bytes, UTF-8 JSON without repeated keys, known dtypes, shapes of
non-negative ints, ``end - begin`` equal to the shape's byte size, and the tensors tiling the
data section, which must end where the object ends (no overlap, no hole, no trailing bytes).
Every error names the object and the tensor.

Writing follows the same crate's layout: tensors sorted by descending dtype rank, then name;
compact JSON with ``__metadata__`` first; the header padded with spaces to a multiple of 8.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ._dtypes import DTYPES, PACKED, Dtype
from ._errors import HeaderError, TruncatedFileError, UnsupportedDtypeError

MAX_HEADER = 100_000_000  # bytes, the safetensors crate's bound
PREFIX = 8  # the little-endian u64 header length
METADATA = "__metadata__"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a header: where its bytes are, relative to the data section."""

    name: str
    dtype: Dtype
    shape: Tuple[int, ...]  # as the header writes it (F4: in 4-bit elements)
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    def rows(self, lo: int, hi: int, name: Optional[str] = None) -> "TensorInfo":
        """Rows [lo, hi) of the first dimension, as a tensor of their own (``name``, default
        this one's): where their bytes are."""
        row = self.nbytes // self.shape[0] if self.shape[0] else 0
        return TensorInfo(
            self.name if name is None else name,
            self.dtype,
            (hi - lo, *self.shape[1:]),
            self.begin + lo * row,
            self.begin + hi * row,
        )

    def torch_dtype(self, where: str) -> torch.dtype:
        """The torch dtype, or UnsupportedDtypeError naming the tensor."""
        dt = self.dtype.torch
        if dt is None:
            raise UnsupportedDtypeError(
                f"{where} tensor {self.name!r}: dtype {self.dtype.name} has no torch dtype in torch {torch.__version__}"
            )
        return dt

    def torch_shape(self, where: str) -> Tuple[int, ...]:
        """The shape of the torch tensor (F4 packs two elements a byte: the last dim halves)."""
        if self.dtype.name != PACKED:
            return self.shape
        if not self.shape or self.shape[-1] % 2:
            raise UnsupportedDtypeError(
                f"{where} tensor {self.name!r}: F4 of shape {list(self.shape)} does not pack into "
                "torch.float4_e2m1fn_x2 (the last dimension must be even)"
            )
        return (*self.shape[:-1], self.shape[-1] // 2)


@dataclass
class Header:
    """A validated header: tensors in file order, the metadata, where the data starts."""

    tensors: Dict[str, TensorInfo]  # by name, in order of their offsets
    metadata: Optional[Dict[str, str]]
    data_start: int  # offset of the data section in the object (8 + N)


def header_length(prefix: bytes, where: str, object_size: int) -> int:
    """``N`` from the first 8 bytes, checked against the bound and the object's size."""
    if len(prefix) < PREFIX or object_size < PREFIX:
        raise TruncatedFileError(f"{where}: {object_size} bytes is too short for a safetensors file")
    (n,) = struct.unpack("<Q", prefix[:PREFIX])
    if n > MAX_HEADER:
        raise HeaderError(f"{where}: header length {n} exceeds the {MAX_HEADER}-byte bound")
    if PREFIX + n > object_size:
        raise TruncatedFileError(
            f"{where}: header length {n} runs past the end of the {object_size}-byte object (truncated?)"
        )
    return int(n)


def _no_repeats(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"key {k!r} appears twice")
        out[k] = v
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_header(raw: bytes, where: str, object_size: int) -> Header:
    """Validate the ``N`` JSON bytes of the header of ``where``, an object of ``object_size``
    bytes. Raises HeaderError / TruncatedFileError naming the object and the tensor."""
    data_start = PREFIX + len(raw)
    data_size = object_size - data_start
    try:
        doc = json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=_no_repeats)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise HeaderError(f"{where}: the header is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise HeaderError(f"{where}: the header is JSON {type(doc).__name__}, not an object")
    metadata = doc.pop(METADATA, None)
    if metadata is not None:
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise HeaderError(f"{where}: __metadata__ must map str to str, got {json.dumps(metadata)[:200]}")
    infos: List[TensorInfo] = []
    for name, entry in doc.items():
        infos.append(_tensor(name, entry, where))
    infos.sort(key=lambda t: (t.begin, t.end))
    pos = 0
    for t in infos:
        if t.end > data_size:
            raise TruncatedFileError(
                f"{where} tensor {t.name!r}: its bytes [{t.begin}, {t.end}) run past the end of the "
                f"{data_size}-byte data section (truncated file, or a header that lies)"
            )
        if t.begin < pos:
            raise HeaderError(f"{where} tensor {t.name!r}: its bytes [{t.begin}, {t.end}) overlap another tensor's")
        if t.begin > pos:
            raise HeaderError(
                f"{where} tensor {t.name!r}: a hole of {t.begin - pos} bytes before its offset {t.begin} "
                "(tensors must tile the data section)"
            )
        pos = t.end
    if pos != data_size:
        raise HeaderError(
            f"{where}: {data_size - pos} bytes after the last tensor (the header accounts for {pos} of the "
            f"{data_size} data bytes)"
        )
    return Header({t.name: t for t in infos}, metadata, data_start)


def _tensor(name: str, entry: Any, where: str) -> TensorInfo:
    what = f"{where} tensor {name!r}"
    if not isinstance(entry, dict):
        raise HeaderError(f"{what}: its entry is {type(entry).__name__}, not an object")
    # Fields beyond these three are ignored, as the safetensors crate does.
    name_of = entry.get("dtype")
    dtype = DTYPES.get(name_of) if isinstance(name_of, str) else None
    if dtype is None:
        raise HeaderError(f"{what}: unknown dtype {entry.get('dtype')!r} (known: {', '.join(DTYPES)})")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise HeaderError(f"{what}: shape must be a list of non-negative ints, got {shape!r}")
    offsets = entry.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise HeaderError(f"{what}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offsets!r}")
    bits = math.prod(shape) * dtype.bits
    if bits % 8 or bits // 8 != offsets[1] - offsets[0]:
        raise HeaderError(
            f"{what}: {offsets[1] - offsets[0]} bytes at data_offsets {offsets} do not hold {dtype.name} of "
            f"shape {shape} ({bits / 8:g} bytes)"
        )
    return TensorInfo(name, dtype, tuple(shape), offsets[0], offsets[1])


# --- writing -------------------------------------------------------------------------------


def layout(entries: Iterable[Tuple[str, Dtype, Sequence[int]]]) -> List[Tuple[str, Dtype, Tuple[int, ...], int, int]]:
    """(name, dtype, shape, begin, end) of each tensor in the order a writer lays them out."""
    ordered = sorted(entries, key=lambda e: (-e[1].rank, e[0]))
    out = []
    pos = 0
    for name, dtype, shape in ordered:
        n = math.prod(shape) * dtype.bits // 8
        out.append((name, dtype, tuple(shape), pos, pos + n))
        pos += n
    return out


def build_header(
    placed: Sequence[Tuple[str, Dtype, Tuple[int, ...], int, int]], metadata: Optional[Dict[str, str]]
) -> bytes:
    """The 8-byte length and the padded JSON header for tensors placed by ``layout``."""
    doc: Dict[str, Any] = {}
    if metadata is not None:
        doc[METADATA] = metadata
    for name, dtype, shape, begin, end in placed:
        doc[name] = {"dtype": dtype.name, "shape": list(shape), "data_offsets": [begin, end]}
    text = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text
