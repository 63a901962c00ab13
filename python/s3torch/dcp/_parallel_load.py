"""The parallel, zero-copy DCP load behind S3StorageReader.read_data.

1. Probe: for every tensor record, the first and last few KiB (whole record when small) in
   one batch of concurrent ranged GETs; parse where the raw tensor bytes sit (_record.locate).
   The same batch reads each file's save mark (_save_mark), with the probe of the file's last
   record (no request of its own): a file another save wrote is refused before anything is
   placed.
2. Fetch: for each tensor whose destination (``planner.resolve_tensor``) is contiguous CPU
   memory of the stored dtype, a ranged GET of exactly its bytes lands *in the destination*.
   Every other destination (CUDA, non-contiguous, a permuted stored layout) is fed through
   the staging ring (_staging): slot-sized GETs into a fixed block of host memory, each slot
   copied to its block of the destination as it lands. Records that cannot be placed this
   way go through ``torch.load`` as torch itself would.
3. Verify the CRC32 the record carries for every fully fetched tensor (computed on worker
   threads, in pieces combined in order), then commit.

Byte items go through ``planner.load_bytes``. Every failure names the object and the item.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.distributed.checkpoint.planner import LoadItemType, LoadPlanner, ReadItem

from .. import _crt, _torch_compat
from .._crc import crc32_of_parts
from .._prefault import Prefaulter
from .._versions import ObjectVersions
from ._errors import CheckpointCorruptError, crc_mismatch, read_error, short_read
from ._record import HEAD_BYTES, TAIL_BYTES, TensorLayout, locate
from ._save_mark import check as check_mark
from ._staging import (
    DEFAULT_RING_BYTES,
    DEFAULT_SLOT_BYTES,
    RingLoad,
    StagedTensor,
    StagingRing,
    borrow_ring,
    land,
)

SMALL_RECORD = 64 * 1024  # fetched whole in the probe
BATCH = 256  # requests in flight at once, probe and direct GETs
CRC_THREADS = max(1, min(4, (os.cpu_count() or 2) - 1))  # a core left for the CRT; ~10 GB/s a thread
CRC_PIECE = 32 << 20  # a large tensor's CRC is computed in pieces of this size, in parallel


def crc32_on(pool: ThreadPoolExecutor, data: torch.Tensor) -> Callable[[], int]:
    """Start the CRC32 of a flat uint8 tensor on the pool, in pieces; call the result to
    wait for them and combine."""
    n = data.numel()
    parts = [(pool.submit(_crt.crc32, data[a : a + CRC_PIECE]), min(CRC_PIECE, n - a)) for a in range(0, n, CRC_PIECE)]

    return lambda: crc32_of_parts((f.result(), length) for f, length in parts)


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
    # Where the stored bytes go, in row-major order: the target itself, or a permuted view of
    # it when the stored tensor is dense but permuted (a saved transpose). None: fallback.
    dst: Optional[torch.Tensor] = None
    direct: bool = False  # dst is contiguous CPU memory: the GET lands in it, no staging
    sub: Tuple[int, int] = (0, 0)  # byte range of the stored data to fetch, relative to data start
    full: bool = True  # sub covers the whole stored tensor (so its CRC can be checked)
    shared: bool = False  # the whole record came from another rank (share_reads)


def _view_bytes(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes as a flat uint8 view (the tensor is contiguous)."""
    flat = t.reshape(-1)
    return flat.view(torch.uint8) if flat.numel() else flat


def _storage_order(L: TensorLayout) -> Optional[List[int]]:
    """The permutation of dimensions that makes a dense but permuted stored tensor contiguous
    (its storage holds that permuted view in row-major order), or None if it is not dense."""
    perm = sorted(range(len(L.size)), key=lambda d: -L.stride[d])
    expected = 1
    for d in reversed(perm):
        if L.size[d] != 1 and L.stride[d] != expected:
            return None
        expected *= L.size[d]
    return perm


class ParallelLoader:
    def __init__(
        self,
        native: "_crt.NativeClient",
        bucket: str,
        verify: bool,
        ring_bytes: int = DEFAULT_RING_BYTES,
        slot_bytes: int = DEFAULT_SLOT_BYTES,
        force_staging: bool = False,
        progress: Optional[Callable[[int], None]] = None,
        marks: Optional[Dict[str, Tuple[int, bytes]]] = None,
    ) -> None:
        self.native, self.bucket, self.verify = native, bucket, verify
        # Save marks still to check, by key: where each starts and what it must be (_save_mark).
        self.marks: Dict[str, Tuple[int, bytes]] = dict(marks or {})
        # Every GET of a file must answer from the version the first one did (_versions).
        self.versions = ObjectVersions(CheckpointCorruptError)
        self.progress = progress  # called with each record's length once its tensor is placed
        self.ring_bytes, self.slot_bytes = ring_bytes, slot_bytes
        self.force_staging = force_staging  # tests: every tensor through the ring, CPU ones too
        self.bytes_read = 0
        # How each tensor was placed: "direct" (GET into the destination), "staged" (through
        # the staging ring), "small" (copied out of a whole-record probe), "shared" (copied
        # out of a record another rank fetched), "fallback" (torch.load of the record).
        self.stats: Dict[str, int] = {"direct": 0, "staged": 0, "small": 0, "shared": 0, "fallback": 0}
        self.ring_slot_uses = 0
        self.ring_out_of_order = 0  # ring slots that landed before a GET started earlier
        self._ring: Optional[StagingRing] = None  # the pinned ring a CUDA load borrowed early

    def _where(self, it: _Item) -> str:
        idx = it.req.storage_index
        return f"s3://{self.bucket}/{it.key} item {idx.fqn}" + (f" at {list(idx.offset)}" if idx.offset else "")

    def _err(self, it: _Item, msg: str) -> CheckpointCorruptError:
        return CheckpointCorruptError(f"{self._where(it)}: {msg}")

    def _get_many(self, reqs: List[Tuple[str, int, int, Any]], wheres: List[str]) -> List[int]:
        """All GETs in flight at once, then waited for in order: a failure names what it was
        reading (``wheres``, one per request; the rest are cancelled)."""
        handles: List[Any] = []
        try:
            for (key, off, n, buf), where in zip(reqs, wheres):
                try:
                    handles.append(self.native.start_get_into(self.bucket, key, buf, off, n))
                except _crt.S3Exception as e:
                    raise read_error(where, e) from e
            got = []
            for h, where, req in zip(handles, wheres, reqs):
                try:
                    got.append(h.wait())
                except _crt.S3Exception as e:
                    raise read_error(where, e) from e
                self.versions.check(req[0], where, h)
            return got
        finally:
            for h in handles:
                if not h.done():
                    h.cancel()

    # --- 1. probe ------------------------------------------------------------------------
    def _probe(self, items: List[_Item]) -> None:
        reqs: List[Tuple[str, int, int, Any]] = []
        # (item, part, mark_at) or (key, "mark", mark_at): where in the request's buffer the
        # file's save mark starts (None: the request reads none). An item's request reads its
        # file's mark too when its record is the file's last.
        owners: List[Tuple[Any, str, Optional[int]]] = []
        unread = dict(self.marks)  # marks no item's request reads
        for it in items:
            pending = unread.get(it.key)
            extra = len(pending[1]) if pending is not None and it.offset + it.length == pending[0] else 0
            if extra:
                del unread[it.key]
            if it.length <= SMALL_RECORD or it.req.type == LoadItemType.BYTE_IO:
                buf = _crt.HostBuffer(it.length + extra)
                reqs.append((it.key, it.offset, it.length + extra, buf))
                owners.append((it, "whole", it.length if extra else None))
            else:
                h, t = _crt.HostBuffer(HEAD_BYTES), _crt.HostBuffer(TAIL_BYTES + extra)
                reqs.append((it.key, it.offset, HEAD_BYTES, h))
                reqs.append((it.key, it.offset + it.length - TAIL_BYTES, TAIL_BYTES + extra, t))
                owners += [(it, "head", None), (it, "tail", TAIL_BYTES if extra else None)]
        for key, (start, mark) in unread.items():
            # Files whose last record this load does not read (a resharded load reads part of
            # a file). Last, so that a failed read names an item. From the last byte of the
            # last record: a file that ends there (no mark) answers that byte, where a range
            # past its end would be an error that says "truncated".
            lead = 1 if start > 0 else 0
            reqs.append((key, start - lead, len(mark) + lead, _crt.HostBuffer(len(mark) + lead)))
            owners.append((key, "mark", lead))
        wheres = [self._mark_where(o) if part == "mark" else self._where(o) for o, part, _ in owners]
        for i in range(0, len(reqs), BATCH):
            got = self._get_many(reqs[i : i + BATCH], wheres[i : i + BATCH])
            for (owner, part, mark_at), (key, _, want, buf), n in zip(owners[i : i + BATCH], reqs[i : i + BATCH], got):
                record = want if mark_at is None else mark_at  # a file without its mark ends there
                if part != "mark" and n < record:
                    raise self._err(
                        owner,
                        f"the file ends early: {n} of {record} bytes at offset {owner.offset} "
                        "(truncated checkpoint file?)",
                    )
                if mark_at is not None:
                    check_mark(self._mark_where(key), self.marks[key][1], bytes(memoryview(buf)[mark_at:n]))
                if part == "mark":
                    continue
                mv = memoryview(buf)[:record]
                if part == "whole":
                    owner.head = owner.tail = mv
                elif part == "head":
                    owner.head = mv
                else:
                    owner.tail = mv
                self.bytes_read += record
        self.marks = {}  # checked

    def _mark_where(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # --- 2. plan where each tensor's bytes go ---------------------------------------------
    def _plan_tensor(self, it: _Item, planner: LoadPlanner) -> None:
        req = it.req
        assert it.target is not None  # resolved by load(), before the probe
        whole = it.head is it.tail and it.length > SMALL_RECORD  # a large record in memory: parse its ends
        head, tail = (it.head[:HEAD_BYTES], it.tail[-TAIL_BYTES:]) if whole else (it.head, it.tail)
        it.layout = locate(bytes(head), bytes(tail), it.length)
        L = it.layout
        if L is None or L.dtype != it.target.dtype:
            return  # torch.load fallback
        want = tuple(int(x) for x in req.lengths)
        if tuple(it.target.shape) != want:
            raise self._err(
                it,
                f"destination shape {tuple(it.target.shape)} does not match the read "
                f"{want}: the state dict does not match the checkpoint",
            )
        size, offs = L.size, tuple(int(x) for x in req.storage_offsets)
        if len(offs) != len(size) or any(o + n > s for o, n, s in zip(offs, want, size)):
            raise self._err(it, f"read of {want} at {offs} is outside the stored tensor {size}")
        full = offs == (0,) * len(size) and want == size
        numel = it.target.numel()
        if not L.is_contiguous():
            # Dense but permuted (e.g. a saved transpose): the storage holds a permutation of
            # the tensor in row-major order; stream it into the same permutation of the target.
            perm = _storage_order(L)
            if not full or perm is None or L.storage_offset or L.data_len != numel * L.itemsize:
                return  # a slice of a permuted tensor, or a storage with more in it: fallback
            it.dst, it.sub, it.full = it.target.permute(perm), (0, L.data_len), True
            return
        row = L.itemsize
        for s in size[1:]:
            row *= s
        dim0_slice = len(size) > 0 and all(o == 0 for o in offs[1:]) and want[1:] == size[1:]
        if not (full or dim0_slice):
            return  # a general N-d slice: fallback narrows after torch.load
        base = L.storage_offset * L.itemsize
        start = base + (offs[0] * row if len(size) else 0)
        nbytes = numel * L.itemsize
        it.sub, it.full = (start, start + nbytes), full and base == 0 and nbytes == L.data_len
        t = it.target
        it.dst = t
        it.direct = not self.force_staging and t.device.type == "cpu" and t.is_contiguous() and not t.is_sparse

    # --- the load ------------------------------------------------------------------------
    def load(
        self,
        plan_items: List[Tuple[ReadItem, str, int, int]],
        planner: LoadPlanner,
        records: Optional[Dict[Tuple[str, int], memoryview]] = None,
    ) -> None:
        """Load the items. ``records``: whole records already in memory (shared by another
        rank), by (key, offset): their items are not fetched, only placed."""
        items = [_Item(req, key, off, length) for req, key, off, length in plan_items]
        for it in items:
            record = records.get((it.key, it.offset)) if records else None
            if record is not None:
                it.head = it.tail = record
                it.shared = True
        # Destinations first: a load into CUDA memory starts page-locking its ring now, so the
        # slots are ready while the probe runs instead of being locked under the first GETs.
        cuda_bytes = 0
        for it in items:
            if it.req.type != LoadItemType.BYTE_IO:
                it.target = planner.resolve_tensor(it.req).detach()
                if it.target.device.type == "cuda" and not it.shared and it.length > SMALL_RECORD:
                    cuda_bytes += it.length
        with contextlib.ExitStack() as stack:
            if cuda_bytes:
                self._ring = stack.enter_context(borrow_ring(self.ring_bytes, self.slot_bytes, pinned=True))
                self._ring.prepare(cuda_bytes)
            try:
                self._load(items, planner)
            finally:
                self._ring = None

    def _load(self, items: List[_Item], planner: LoadPlanner) -> None:
        self._probe([it for it in items if not it.shared])
        for it in items:
            if it.req.type == LoadItemType.BYTE_IO:
                planner.load_bytes(it.req, io.BytesIO(bytes(it.head)))
                if self.progress is not None:
                    self.progress(it.length)
        tensors = [it for it in items if it.req.type != LoadItemType.BYTE_IO]
        for it in tensors:
            self._plan_tensor(it, planner)

        direct: List[_Item] = []
        staged: List[_Item] = []
        for it in tensors:
            if it.dst is None:
                continue
            if it.head is it.tail and it.layout is not None:  # whole record in memory: copy it out
                a, b = it.layout.data_offset + it.sub[0], it.layout.data_offset + it.sub[1]
                if it.full:
                    self._check_crc(it, it.head[it.layout.data_offset : it.layout.data_offset + it.layout.data_len])
                if b > a:
                    land(it.dst, torch.frombuffer(it.head[a:b], dtype=torch.uint8))
                self._commit(it, planner, "shared" if it.shared else "small")
            else:
                (direct if it.direct else staged).append(it)
        # CRC32s run on worker threads (crc32 releases the GIL) while the transfers go on.
        pool = ThreadPoolExecutor(CRC_THREADS, thread_name_prefix="s3torch-crc") if self.verify else None
        try:
            self._load_direct(direct, planner, pool)
            self._load_staged(staged, planner, pool)
        finally:
            if pool is not None:
                pool.shutdown(wait=True)

        # Everything else: the record through torch.load, exactly as torch's reader does.
        for it in tensors:
            if it.dst is None:
                self._fallback(it, planner)

    def _load_direct(self, items: List[_Item], planner: LoadPlanner, pool: Optional[ThreadPoolExecutor]) -> None:
        """GETs straight into contiguous CPU destinations, a batch in flight at a time. The
        destinations no one has written yet (``model.to_empty()``) are made resident on a thread
        of their own ahead of the GETs, helped by this one while it waits (_prefault): their page
        faults would otherwise be taken by the event-loop threads that copy the bytes in
        (benchmarks/results/prefault/)."""
        with Prefaulter([_view_bytes(it.dst) for it in items if it.dst is not None]) as p:  # (it drops empty ones)
            self._get_direct(items, planner, pool, p)

    def _get_direct(
        self,
        items: List[_Item],
        planner: LoadPlanner,
        pool: Optional[ThreadPoolExecutor],
        prefaulter: Prefaulter,
    ) -> None:
        for i in range(0, len(items), BATCH):
            batch = items[i : i + BATCH]
            # Start every GET of the batch, then take them in order: each tensor's CRC is
            # computed on the pool while the transfers still running go on.
            handles: List[Optional[Any]] = []
            checks: List[Tuple[_Item, Optional[Callable[[], int]]]] = []
            try:
                for it in batch:
                    assert it.layout is not None and it.dst is not None
                    nb = it.sub[1] - it.sub[0]
                    if nb == 0:
                        handles.append(None)
                        continue
                    start = it.offset + it.layout.data_offset + it.sub[0]
                    try:
                        handles.append(self.native.start_get_into(self.bucket, it.key, _view_bytes(it.dst), start, nb))
                    except _crt.S3Exception as e:
                        raise read_error(self._where(it), e) from e
                for it, h in zip(batch, handles):
                    nb = it.sub[1] - it.sub[0]
                    if h is not None:
                        prefaulter.help_until(h.done)  # this thread would only wait: it populates meanwhile
                        try:
                            n = h.wait()
                        except _crt.S3Exception as e:
                            raise read_error(self._where(it), e) from e
                        self.versions.check(it.key, self._where(it), h)
                        if n != nb:
                            raise short_read(self._where(it), nb, n)
                        self.bytes_read += n
                    assert it.dst is not None
                    checks.append((it, crc32_on(pool, _view_bytes(it.dst)) if it.full and pool else None))
                for it, crc in checks:
                    if crc is not None:
                        self._check_crc_value(it, crc())
                    self._commit(it, planner, "direct")
            finally:
                # On failure, stop what is still running. (Each handle holds its destination
                # until the CRT is done with it, so no memory is released under a transfer.)
                for h in handles:
                    if h is not None and not h.done():
                        h.cancel()

    def _load_staged(self, items: List[_Item], planner: LoadPlanner, pool: Optional[ThreadPoolExecutor]) -> None:
        """Everything else through the staging ring (page-locked when any target is on CUDA)."""
        if not items:
            return
        work: List[StagedTensor] = []
        for it in items:
            assert it.layout is not None and it.dst is not None
            done = functools.partial(self._commit, it, planner, "staged")
            crc = it.layout.crc32 if it.full else None
            work.append(
                StagedTensor(
                    it.key,
                    it.offset + it.layout.data_offset + it.sub[0],
                    it.sub[1] - it.sub[0],
                    it.dst,
                    crc,
                    self._where(it),
                    done,
                )
            )
        pinned = any(it.dst is not None and it.dst.device.type == "cuda" for it in items)
        early = self._ring if pinned else None
        with (
            contextlib.nullcontext(early)
            if early is not None
            else borrow_ring(self.ring_bytes, self.slot_bytes, pinned) as ring
        ):
            uses = ring.uses
            run = RingLoad(self.native, self.bucket, ring, pool, self.versions)
            try:
                run.run(work)
            finally:
                self.bytes_read += run.bytes_read
                self.ring_slot_uses += ring.uses - uses
                self.ring_out_of_order += run.landed_out_of_order

    def _commit(self, it: _Item, planner: LoadPlanner, how: str) -> None:
        """The item's tensor is in place (``how`` it got there, for the stats)."""
        assert it.target is not None
        self.stats[how] += 1
        planner.commit_tensor(it.req, it.target)
        if self.progress is not None:
            self.progress(it.length)

    def _check_crc(self, it: _Item, data: Any) -> None:
        if self.verify:
            self._check_crc_value(it, _crt.crc32(data))

    def _check_crc_value(self, it: _Item, got: int) -> None:
        assert it.layout is not None
        if got != it.layout.crc32:
            raise crc_mismatch(self._where(it), it.layout.crc32, got)

    def _fallback(self, it: _Item, planner: LoadPlanner) -> None:
        if it.head is it.tail:
            record = bytes(it.head)
        else:
            try:
                record = self.native.get_bytes(
                    self.bucket, it.key, it.offset, it.length, None, self.versions.first(it.key)
                )
            except _crt.S3ObjectChangedError as e:
                raise self.versions.refused(self._where(it), e) from e
            if len(record) != it.length:
                raise self._err(it, f"the file ends early: {len(record)} of {it.length} record bytes")
            self.bytes_read += len(record)
        try:
            tensor = torch.load(io.BytesIO(record), map_location="cpu", weights_only=True)
        except Exception as e:
            raise self._err(it, f"the tensor record does not load ({e}): the checkpoint file is corrupt") from e
        tensor = _torch_compat.narrow_tensor_by_index(tensor, it.req.storage_offsets, it.req.lengths)
        target = it.target
        assert target is not None  # resolved by load(), before the probe
        if target.size() != tensor.size():
            raise self._err(
                it,
                f"stored {tuple(tensor.size())} does not match the destination "
                f"{tuple(target.size())}: the state dict does not match the checkpoint",
            )
        target.copy_(tensor)
        self.stats["fallback"] += 1
        planner.commit_tensor(it.req, target)
        if self.progress is not None:
            self.progress(it.length)
