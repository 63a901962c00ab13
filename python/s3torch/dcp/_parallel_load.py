"""The parallel, zero-copy DCP load behind S3StorageReader.read_data.

1. Probe: for every tensor record, the first and last few KiB (whole record when small) in
   one batch of concurrent ranged GETs; parse where the raw tensor bytes sit (_record.locate).
2. Fetch: for each tensor whose destination (``planner.resolve_tensor``) is contiguous CPU
   memory of the stored dtype, a ranged GET of exactly its bytes lands *in the destination*;
   otherwise into a staging tensor (pinned when CUDA is available), then one copy. Records
   that cannot be placed directly go through ``torch.load`` as torch itself would.
   Staging memory in flight is bounded by ``max_inflight_bytes``.
3. Verify the CRC32 the record carries for every fully fetched tensor, then commit.

Byte items go through ``planner.load_bytes``. Every failure names the object and the item.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Dict, List, NoReturn, Optional, Tuple

import torch
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, LoadPlanner, ReadItem

from .. import _crt
from ._record import HEAD_BYTES, TAIL_BYTES, TensorLayout, locate

SMALL_RECORD = 64 * 1024  # fetched whole in the probe
BATCH = 256  # requests started per get_into_many call


class CheckpointCorruptError(_crt.S3Exception):
    """A checkpoint file's bytes do not match its metadata (truncated, corrupt, wrong shape)."""


@dataclass
class _Item:
    req: ReadItem
    key: str  # S3 key of the file
    offset: int  # record offset in the file
    length: int  # record length
    head: Any = None  # memoryview of the record's first bytes (or the whole record)
    tail: Any = None
    layout: Optional[TensorLayout] = None
    target: Optional[torch.Tensor] = None
    dest: Optional[torch.Tensor] = None  # where the GET lands (target, or a staging tensor)
    sub: Tuple[int, int] = (0, 0)  # byte range of the stored data to fetch, relative to data start
    full: bool = True  # sub covers the whole stored tensor (so its CRC can be checked)
    strided: bool = False  # dest holds the raw storage of a permuted tensor: as_strided, then copy
    post: List[Any] = field(default_factory=list)


def _view_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 view (the tensor is contiguous)."""
    flat = t.reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else flat


class ParallelLoader:
    def __init__(self, native: "_crt.NativeClient", bucket: str, verify: bool, max_inflight_bytes: int,
                 pin: bool) -> None:
        self.native, self.bucket = native, bucket
        self.verify, self.max_inflight, self.pin = verify, max_inflight_bytes, pin
        self.bytes_read = 0
        # How each tensor was placed: "direct" (GET into the destination), "staged" (GET into
        # a staging tensor, one copy), "small" (copied out of a whole-record probe),
        # "fallback" (torch.load of the record).
        self.stats: Dict[str, int] = {"direct": 0, "staged": 0, "small": 0, "fallback": 0}

    def _err(self, it: _Item, msg: str) -> CheckpointCorruptError:
        idx = it.req.storage_index
        where = f"s3://{self.bucket}/{it.key} item {idx.fqn}" + (f" at {list(idx.offset)}" if idx.offset else "")
        return CheckpointCorruptError(f"{where}: {msg}")

    def _raise_read_error(self, it: _Item, e: "_crt.S3Exception") -> NoReturn:
        """Raise for a failed read of an item: access and timeout errors as they are,
        anything else named after the item it hit. Call from the handler of `e`."""
        if isinstance(e, (_crt.S3PermissionError, _crt.S3TimeoutError)):
            raise e
        hint = " (the file is shorter than the checkpoint metadata says: truncated?)" if e.http_status == 416 else ""
        raise self._err(it, f"cannot read its bytes: {e}{hint}") from e

    def _get_many(self, reqs: List[Tuple[str, int, int, Any]], owners: List[_Item]) -> List[int]:
        """get_into_many, with failures that name the item whose bytes could not be read."""
        if not reqs:
            return []
        try:
            return self.native.get_into_many(self.bucket, reqs)
        except _crt.S3Exception as e:
            culprit = next((it for (key, off, n, _), it in zip(reqs, owners) if key == e.key), None)
            if culprit is None:
                raise
            self._raise_read_error(culprit, e)

    # --- 1. probe ------------------------------------------------------------------------
    def _probe(self, items: List[_Item]) -> None:
        reqs: List[Tuple[str, int, int, Any]] = []
        owners: List[Tuple[_Item, str]] = []
        for it in items:
            if it.length <= SMALL_RECORD or it.req.type == LoadItemType.BYTE_IO:
                buf = _crt.HostBuffer(it.length)
                reqs.append((it.key, it.offset, it.length, buf))
                owners.append((it, "whole"))
            else:
                h, t = _crt.HostBuffer(HEAD_BYTES), _crt.HostBuffer(TAIL_BYTES)
                reqs.append((it.key, it.offset, HEAD_BYTES, h))
                reqs.append((it.key, it.offset + it.length - TAIL_BYTES, TAIL_BYTES, t))
                owners += [(it, "head"), (it, "tail")]
        for i in range(0, len(reqs), BATCH):
            got = self._get_many(reqs[i : i + BATCH], [o[0] for o in owners[i : i + BATCH]])
            for (it, part), (_, _, want, buf), n in zip(owners[i : i + BATCH], reqs[i : i + BATCH], got):
                if n != want:
                    raise self._err(it, f"the file ends early: {n} of {want} bytes at offset "
                                        f"{it.offset} (truncated checkpoint file?)")
                mv = memoryview(buf)
                if part == "whole":
                    it.head = it.tail = mv
                elif part == "head":
                    it.head = mv
                else:
                    it.tail = mv
                self.bytes_read += n

    # --- 2. plan where each tensor's bytes go ---------------------------------------------
    def _plan_tensor(self, it: _Item, planner: LoadPlanner) -> None:
        req = it.req
        it.target = planner.resolve_tensor(req).detach()
        it.layout = locate(bytes(it.head), bytes(it.tail), it.length)
        L = it.layout
        if L is None or L.dtype != it.target.dtype:
            return  # torch.load fallback
        want = tuple(int(x) for x in req.lengths)
        if tuple(it.target.shape) != want:
            raise self._err(it, f"destination shape {tuple(it.target.shape)} does not match the read "
                                f"{want}: the state dict does not match the checkpoint")
        size, offs = L.size, tuple(int(x) for x in req.storage_offsets)
        if len(offs) != len(size) or any(o + n > s for o, n, s in zip(offs, want, size)):
            raise self._err(it, f"read of {want} at {offs} is outside the stored tensor {size}")
        row = L.itemsize
        for s in size[1:]:
            row *= s
        full = offs == (0,) * len(size) and want == size
        if not L.is_contiguous():
            if not full:
                return  # a slice of a permuted tensor: fallback
            # Dense but permuted (e.g. a saved transpose): fetch the storage, view it with the
            # stored strides, copy once into the destination.
            it.strided, it.sub, it.full = True, (0, L.data_len), True
            it.dest = torch.empty(L.data_len, dtype=torch.uint8, pin_memory=self.pin)
            return
        dim0_slice = len(size) > 0 and all(o == 0 for o in offs[1:]) and want[1:] == size[1:]
        if not (full or dim0_slice):
            return  # a general N-d slice: fallback narrows after torch.load
        base = L.storage_offset * L.itemsize
        start = base + (offs[0] * row if len(size) else 0)
        nbytes = it.target.numel() * L.itemsize
        it.sub, it.full = (start, start + nbytes), full and base == 0 and nbytes == L.data_len
        t = it.target
        direct = t.device.type == "cpu" and t.is_contiguous() and not t.is_sparse
        it.dest = t if direct else torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pin)

    # --- the load ------------------------------------------------------------------------
    def load(self, plan_items: List[Tuple[ReadItem, str, int, int]], planner: LoadPlanner) -> None:
        items = [_Item(req, key, off, length) for req, key, off, length in plan_items]
        self._probe(items)
        for it in items:
            if it.req.type == LoadItemType.BYTE_IO:
                planner.load_bytes(it.req, io.BytesIO(bytes(it.head)))
        tensors = [it for it in items if it.req.type != LoadItemType.BYTE_IO]
        for it in tensors:
            self._plan_tensor(it, planner)

        # Small records are already here: copy their tensor bytes out of the probe buffer.
        fetch: List[_Item] = []
        for it in tensors:
            if it.dest is None:
                continue
            if it.head is it.tail and it.layout is not None:  # whole record in memory
                a, b = it.layout.data_offset + it.sub[0], it.layout.data_offset + it.sub[1]
                if it.full:
                    self._check_crc(it, it.head[it.layout.data_offset : it.layout.data_offset + it.layout.data_len])
                if b > a:
                    _view_bytes(it.dest).copy_(torch.frombuffer(it.head[a:b], dtype=torch.uint8))
                self.stats["small"] += 1
                self._finish(it, planner)
            else:
                fetch.append(it)

        # Large tensors: all GETs in flight at once, each straight into its destination.
        # Staging tensors count against the in-flight budget; direct ones cost no memory.
        i = 0
        while i < len(fetch):
            batch: List[_Item] = []
            staged = 0
            while i < len(fetch) and len(batch) < BATCH:
                it = fetch[i]
                nb = it.sub[1] - it.sub[0]
                if it.dest is not it.target:
                    if batch and staged + nb > self.max_inflight:
                        break
                    staged += nb
                batch.append(it)
                i += 1
            # Start every GET of the batch, then take them in order: checking one tensor's CRC
            # overlaps with the transfers still running.
            handles: List[Optional[Any]] = []
            try:
                for it in batch:
                    assert it.layout is not None and it.dest is not None
                    nb = it.sub[1] - it.sub[0]
                    if nb == 0:
                        handles.append(None)
                        continue
                    start = it.offset + it.layout.data_offset + it.sub[0]
                    try:
                        handles.append(self.native.start_get_into(self.bucket, it.key, _view_bytes(it.dest), start, nb))
                    except _crt.S3Exception as e:
                        self._raise_read_error(it, e)
                for it, h in zip(batch, handles):
                    nb = it.sub[1] - it.sub[0]
                    if h is not None:
                        try:
                            n = h.wait()
                        except _crt.S3Exception as e:
                            self._raise_read_error(it, e)
                        if n != nb:
                            raise self._err(it, f"expected {nb} tensor bytes, the file has {n} (truncated?)")
                        self.bytes_read += n
                    assert it.dest is not None
                    if it.full:
                        self._check_crc(it, _view_bytes(it.dest))
                    self.stats["direct" if it.dest is it.target else "staged"] += 1
                    self._finish(it, planner)
            finally:
                # On failure, stop what is still running. (Each handle holds its destination
                # until the CRT is done with it, so no memory is released under a transfer.)
                for h in handles:
                    if h is not None and not h.done():
                        h.cancel()

        # Everything else: the record through torch.load, exactly as torch's reader does.
        for it in tensors:
            if it.dest is None:
                self._fallback(it, planner)

    def _check_crc(self, it: _Item, data: Any) -> None:
        if not self.verify or it.layout is None:
            return
        got = _crt.crc32(data)
        if got != it.layout.crc32:
            raise self._err(it, f"tensor bytes fail their CRC32 check (stored {it.layout.crc32:#010x}, "
                                f"read {got:#010x}): the checkpoint file is corrupt")

    def _finish(self, it: _Item, planner: LoadPlanner) -> None:
        assert it.target is not None and it.dest is not None
        if it.strided:
            L = it.layout
            assert L is not None
            src = it.dest.view(L.dtype) if L.data_len else torch.empty(0, dtype=L.dtype)
            try:
                view = torch.as_strided(src, L.size, L.stride, L.storage_offset)
            except RuntimeError as e:
                raise self._err(it, f"stored strides do not fit its storage ({e}): the checkpoint file is corrupt")
            it.target.copy_(view)
        elif it.dest is not it.target:
            it.target.copy_(it.dest, non_blocking=it.target.device.type == "cuda")
        planner.commit_tensor(it.req, it.target)

    def _fallback(self, it: _Item, planner: LoadPlanner) -> None:
        from torch.distributed._shard._utils import narrow_tensor_by_index

        if it.head is it.tail:
            record = bytes(it.head)
        else:
            record = self.native.get_bytes(self.bucket, it.key, it.offset, it.length)
            if len(record) != it.length:
                raise self._err(it, f"the file ends early: {len(record)} of {it.length} record bytes")
            self.bytes_read += len(record)
        try:
            tensor = torch.load(io.BytesIO(record), map_location="cpu", weights_only=True)
        except Exception as e:
            raise self._err(it, f"the tensor record does not load ({e}): the checkpoint file is corrupt") from e
        tensor = narrow_tensor_by_index(tensor, it.req.storage_offsets, it.req.lengths)
        target = it.target if it.target is not None else planner.resolve_tensor(it.req).detach()
        if target.size() != tensor.size():
            raise self._err(it, f"stored {tuple(tensor.size())} does not match the destination "
                                f"{tuple(target.size())}: the state dict does not match the checkpoint")
        target.copy_(tensor)
        self.stats["fallback"] += 1
        planner.commit_tensor(it.req, target)
