"""Where the raw tensor bytes sit inside a DCP tensor record.

torch's FileSystemWriter stores each tensor item as a ``torch.save`` zip archive. Inside it,
``<archive>/data/0`` holds the storage bytes unchanged (stored, not compressed, 64-byte
aligned), and ``<archive>/data.pkl`` says how to rebuild the tensor (dtype, size, stride,
storage offset). Reading both from the record's first and last few KiB tells us the exact byte
range to GET straight into the destination tensor.

Anything unusual (compression, several storages, an unknown dtype or rebuild function) makes
``locate`` return None, and the caller falls back to ``torch.load``.
"""

from __future__ import annotations

import io
import pickle
import struct
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

HEAD_BYTES = 4096
TAIL_BYTES = 4096

_LOCAL = b"PK\x03\x04"
_CENTRAL = b"PK\x01\x02"
_EOCD = b"PK\x05\x06"
_EOCD64_LOCATOR = b"PK\x06\x07"

_STORAGE_DTYPES: Dict[str, torch.dtype] = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}


@dataclass(frozen=True)
class TensorLayout:
    """The stored tensor: its storage bytes are record[data_offset : data_offset + data_len]."""

    dtype: torch.dtype
    size: Tuple[int, ...]
    stride: Tuple[int, ...]
    storage_offset: int  # in elements
    data_offset: int  # in the record
    data_len: int
    crc32: int

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    def is_contiguous(self) -> bool:
        expected = 1
        for s, st in zip(reversed(self.size), reversed(self.stride)):
            if s != 1 and st != expected:
                return False
            expected *= s
        return True


@dataclass(frozen=True)
class _Entry:
    name: str
    crc32: int
    compressed: int
    size: int
    method: int
    local_offset: int


def _central_directory(tail: bytes, record_len: int) -> Optional[Dict[str, _Entry]]:
    """Parse the central directory found in the record's last bytes (`tail`)."""
    eocd = tail.rfind(_EOCD)
    if eocd < 0 or eocd + 22 > len(tail):
        return None
    (_, _, _, n_this, n_total, cd_size, cd_offset, _) = struct.unpack("<IHHHHIIH", tail[eocd : eocd + 22])
    if cd_offset == 0xFFFFFFFF or n_total == 0xFFFF or cd_size == 0xFFFFFFFF:
        loc = tail.rfind(_EOCD64_LOCATOR, 0, eocd)
        if loc < 0:
            return None
        (eocd64_off,) = struct.unpack("<Q", tail[loc + 8 : loc + 16])
        start64 = eocd64_off - (record_len - len(tail))
        if start64 < 0:
            return None
        (n_total, cd_size, cd_offset) = struct.unpack("<QQQ", tail[start64 + 32 : start64 + 56])
    tail_start = record_len - len(tail)
    pos = cd_offset - tail_start
    if pos < 0 or pos + cd_size > len(tail):
        return None
    entries: Dict[str, _Entry] = {}
    for _ in range(n_total):
        if tail[pos : pos + 4] != _CENTRAL:
            return None
        (method, crc, csize, usize, nlen, xlen, clen) = struct.unpack("<HxxxxIIIHHH", tail[pos + 10 : pos + 34])
        (local_off,) = struct.unpack("<I", tail[pos + 42 : pos + 46])
        name = tail[pos + 46 : pos + 46 + nlen].decode("utf-8", "replace")
        extra = tail[pos + 46 + nlen : pos + 46 + nlen + xlen]
        if 0xFFFFFFFF in (csize, usize, local_off):
            vals = _zip64_extra(extra)
            if vals is None:
                return None
            it = iter(vals)
            if usize == 0xFFFFFFFF:
                usize = next(it)
            if csize == 0xFFFFFFFF:
                csize = next(it)
            if local_off == 0xFFFFFFFF:
                local_off = next(it)
        entries[name] = _Entry(name, crc, csize, usize, method, local_off)
        pos += 46 + nlen + xlen + clen
    return entries


def _zip64_extra(extra: bytes) -> Optional[list]:
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack("<HH", extra[pos : pos + 4])
        if tag == 0x0001:
            body = extra[pos + 4 : pos + 4 + size]
            return [struct.unpack("<Q", body[i : i + 8])[0] for i in range(0, len(body) - 7, 8)]
        pos += 4 + size
    return None


def _data_start(head: bytes, entry: _Entry) -> Optional[int]:
    """Offset of an entry's data: after its local header (whose extra field holds padding)."""
    p = entry.local_offset
    if p + 30 > len(head) or head[p : p + 4] != _LOCAL:
        return None
    nlen, xlen = struct.unpack("<HH", head[p + 26 : p + 30])
    return p + 30 + nlen + xlen


class _StorageRef:
    def __init__(self, dtype: torch.dtype, key: str, numel: int) -> None:
        self.dtype, self.key, self.numel = dtype, key, numel


class _Rebuilt:
    def __init__(self, storage: _StorageRef, storage_offset: int, size: Any, stride: Any, *rest: Any) -> None:
        if not isinstance(storage, _StorageRef):  # bytes that call the rebuild on anything else
            raise pickle.UnpicklingError("not a plain tensor record (its storage is not a storage)")
        self.storage, self.storage_offset = storage, int(storage_offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
        self.requires_grad = rest[0] if rest else False


class _StorageType:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _MetaUnpickler(pickle.Unpickler):
    """Unpickles only what torch.save writes for one plain tensor, without building it."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _Rebuilt
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            import collections

            return collections.OrderedDict
        raise pickle.UnpicklingError(f"not a plain tensor record ({module}.{name})")

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise pickle.UnpicklingError("unexpected persistent id")
        return _StorageRef(pid[1].dtype, str(pid[2]), int(pid[4]))


def _inside(offset: int, size: Tuple[int, ...], stride: Tuple[int, ...], numel: int) -> bool:
    """Whether a tensor of this offset, size and stride lies within a storage of ``numel``
    elements, as torch checks when it rebuilds one: its last element's index is below it."""
    if offset < 0 or len(size) != len(stride) or min(size + stride, default=0) < 0:
        return False
    if 0 in size:
        return offset <= numel
    return offset + sum((n - 1) * st for n, st in zip(size, stride)) < numel


def locate(head: bytes, tail: bytes, record_len: int) -> Optional[TensorLayout]:
    """The stored tensor's layout from the record's first `head` and last `tail` bytes."""
    try:
        entries = _central_directory(tail, record_len)
    except (struct.error, StopIteration):  # a ZIP64 record or extra field cut short
        return None
    if not entries:
        return None
    pkl = next((e for n, e in entries.items() if n.endswith("/data.pkl")), None)
    datas = [e for n, e in entries.items() if "/data/" in n and not n.endswith("/data.pkl")]
    if pkl is None or len(datas) != 1 or pkl.method != 0 or datas[0].method != 0:
        return None
    data = datas[0]
    pkl_start = _data_start(head, pkl)
    data_start = _data_start(head, data)
    if pkl_start is None or data_start is None or pkl_start + pkl.compressed > len(head):
        return None
    try:
        obj = _MetaUnpickler(io.BytesIO(head[pkl_start : pkl_start + pkl.compressed])).load()
    except Exception:
        return None
    if not isinstance(obj, _Rebuilt) or not data.name.endswith("/data/" + obj.storage.key):
        return None
    itemsize = torch.empty((), dtype=obj.storage.dtype).element_size()
    if data.size != obj.storage.numel * itemsize or data_start + data.size > record_len:
        return None
    if not _inside(obj.storage_offset, obj.size, obj.stride, obj.storage.numel):
        return None  # torch.load refuses it ("out of bounds for storage"); never read past it
    return TensorLayout(obj.storage.dtype, obj.size, obj.stride, obj.storage_offset, data_start, data.size, data.crc32)
