"""Where each tensor's bytes go, and the GETs that put them there.

- **Direct** (CPU destination, stored dtype): tensors land by ranged GETs straight into their
  own memory (page-locked with ``pin_memory``). Runs of adjacent small tensors are coalesced
  into one GET into a buffer of at most ``GROUP_BYTES``, copied out to each tensor's own
  storage (small tensors: a negligible copy; far fewer requests); a tensor of
  ``OWN_STORAGE`` bytes or more gets an allocation and a GET of its own (the CRT splits it into
  parts). At most ``WINDOW`` GETs are in flight, in file order. Every destination is
  allocated before the first GET, and a thread of its own makes the tensors' fresh pages
  resident ahead of the GETs (``_prefault.py``): otherwise the CRT's event-loop thread takes
  every page fault while it copies the bytes in.
- **Staged** (CUDA destination, or a dtype cast): through the DCP loader's staging ring
  (``dcp/_staging.py``): bounded host memory, page-locked when it feeds a GPU, each landed slot
  copied (and cast) to its block of the destination; on CUDA the copies are asynchronous on a
  side stream and the tensors are ready on the current stream when the load returns.

Every destination is allocated only after every requested tensor's header entry has passed
validation, and only the requested tensors are read. A load that reads every byte of a file
whose stored checksum can be checked (``_verify.py``) computes the CRC of each piece as it
lands and checks the file before returning.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import torch

from .. import _crt
from .._prefault import Prefaulter
from .._versions import ObjectVersions
from ..dcp._staging import RingLoad, StagedTensor, borrow_ring
from ._dtypes import DTYPES, PACKED
from ._errors import FileChangedError, TruncatedFileError, read_error
from ._header import TensorInfo
from ._source import ShardFile
from ._verify import FileCheck, outcome_without_check, tiles

MiB = 1024 * 1024
OWN_STORAGE = 1 * MiB  # tensors this large get their own allocation and GET
GROUP_BYTES = 16 * MiB  # at most this many bytes of small tensors share one GET and allocation
WINDOW = 32  # GETs in flight at once


def alloc(shape: Tuple[int, ...], dtype: torch.dtype, device: torch.device, pin: bool) -> torch.Tensor:
    """A destination tensor: the one place this module allocates tensor memory."""
    if device.type == "cpu":
        return torch.empty(shape, dtype=dtype, pin_memory=pin)
    return torch.empty(shape, dtype=dtype, device=device)


def fits_in_place(dst: torch.Tensor, dtype: torch.dtype, shape: Tuple[int, ...]) -> bool:
    """Whether a GET of a tensor of ``dtype`` and ``shape`` can land in ``dst`` itself: host
    memory of that dtype and shape, contiguous."""
    return dst.device.type == "cpu" and dst.dtype == dtype and tuple(dst.shape) == shape and dst.is_contiguous()


def fits_staged(dst: torch.Tensor, dtype: torch.dtype, shape: Tuple[int, ...], device: torch.device) -> bool:
    """Whether the staging ring can copy a tensor of ``dtype`` and ``shape`` into ``dst``
    itself: on ``device``, that shape, contiguous, of that dtype or one a copy casts it to
    (floating point both, neither the packed 4-bit one)."""
    if dst.device != device or tuple(dst.shape) != shape or not dst.is_contiguous():
        return False
    if dst.dtype == dtype:
        return True
    packed = DTYPES[PACKED].torch
    return dst.dtype.is_floating_point and dtype.is_floating_point and packed not in (dst.dtype, dtype)


def _where(f: ShardFile, t: TensorInfo) -> str:
    return f"{f.where} tensor {t.name!r}"


@dataclass
class _Planned:
    file: ShardFile
    info: TensorInfo
    dtype: torch.dtype  # stored
    shape: Tuple[int, ...]  # torch shape
    out_dtype: torch.dtype


@dataclass
class _Group:
    """One GET: adjacent tensors of one file, landing in one allocation."""

    file: ShardFile
    begin: int  # data-section offsets
    end: int
    members: List[_Planned] = field(default_factory=list)
    buf: Optional[torch.Tensor] = None  # uint8: the lone tensor's bytes, or the shared landing buffer


class Loader:
    """Loads requested tensors of one bucket's files onto one device."""

    def __init__(
        self,
        native: "_crt.NativeClient",
        bucket: str,
        device: torch.device,
        dtype: Optional[torch.dtype],
        pin_memory: bool,
        ring_bytes: int,
        slot_bytes: int,
        force_staging: bool = False,
    ) -> None:
        self.native, self.bucket, self.device = native, bucket, device
        self.dtype, self.pin_memory = dtype, pin_memory
        self.ring_bytes, self.slot_bytes = ring_bytes, slot_bytes
        self.force_staging = force_staging  # tests: CPU destinations through the ring, as CUDA's go
        self.stats: Dict[str, int] = {"direct": 0, "staged": 0, "gets": 0, "bytes": 0, "files_checked": 0}
        self.checksums: Dict[str, str] = {}  # file -> what its checksum check found (_verify.py)
        self._checks: Dict[int, FileCheck] = {}  # id(ShardFile) -> its check, for this load
        # Every GET of a file must answer from the version its header came from (_versions).
        self.versions = ObjectVersions(FileChangedError)
        self._checks_planned = False  # plan_checks() ran: load() neither plans nor verifies
        self.on_progress: Optional[Callable[[int], None]] = None  # called with the bytes each GET landed

    def _plan(self, f: ShardFile, t: TensorInfo) -> _Planned:
        where = _where(f, t)
        dt = t.torch_dtype(where)
        shape = t.torch_shape(where)
        out = dt
        if self.dtype is not None and dt.is_floating_point and self.dtype != dt and t.dtype.name != PACKED:
            out = self.dtype
        return _Planned(f, t, dt, shape, out)

    def load(
        self, wanted: List[Tuple[ShardFile, TensorInfo]], into: Optional[Dict[str, torch.Tensor]] = None
    ) -> Dict[str, torch.Tensor]:
        """The tensors, by name, in the order asked. ``into``: destinations the caller holds,
        by name; one this loader :meth:`takes` is read into itself (nothing allocated): by
        the GETs (host memory of the stored dtype), else through the ring (cast to its dtype
        if need be); the others are ignored."""
        planned = [self._plan(f, t) for f, t in wanted]  # every check before any allocation
        for f, _ in wanted:
            self.versions.expect(f.key, f.etag)
        if not self._checks_planned:
            self._plan_checks(planned)
        given: Dict[str, torch.Tensor] = {}
        for p in planned:
            d = (into or {}).get(p.info.name)
            if d is not None and self._takes(d, p.dtype, p.shape):
                given[p.info.name] = d
        staged_dev = self.device.type != "cpu" or self.force_staging

        def goes_direct(p: _Planned) -> bool:
            d = given.get(p.info.name)
            return not staged_dev and (p.out_dtype if d is None else d.dtype) == p.dtype

        direct = [p for p in planned if goes_direct(p)]
        staged = [p for p in planned if not goes_direct(p)]
        out: Dict[str, torch.Tensor] = {}
        self._load_direct(direct, out, given)
        self._load_staged(staged, out, given)
        if not self._checks_planned:
            self.verify_checks()
        return {p.info.name: out[p.info.name] for p in planned}

    def takes(self, dst: torch.Tensor, f: ShardFile, t: TensorInfo) -> bool:
        """Whether :meth:`load` reads tensor ``t`` of ``f`` into ``dst`` itself."""
        where = _where(f, t)
        return self._takes(dst, t.torch_dtype(where), t.torch_shape(where))

    def _takes(self, dst: torch.Tensor, dtype: torch.dtype, shape: Tuple[int, ...]) -> bool:
        if self.device.type == "cpu" and not self.force_staging and fits_in_place(dst, dtype, shape):
            return True
        return fits_staged(dst, dtype, shape, self.device)

    def plan_checks(self, wanted: List[Tuple[ShardFile, TensorInfo]]) -> None:
        """For a read made of several ``load`` calls (``wanted``: everything they read
        together): the checks are planned over all of it, each call adds the pieces it reads,
        and :meth:`verify_checks` checks the files once the last call is done."""
        self._plan_checks([self._plan(f, t) for f, t in wanted])
        self._checks_planned = True

    def verify_checks(self) -> None:
        """Check every file read whole against its stored checksum (ChecksumMismatchError)."""
        for check in self._checks.values():
            self.checksums[check.where] = check.verify()  # ChecksumMismatchError: nothing is returned
            self.stats["files_checked"] += 1
        self._checks = {}

    def _plan_checks(self, planned: List[_Planned]) -> None:
        """A FileCheck for each file this load reads whole and whose stored checksum can be
        checked; the outcome for the others."""
        by_file: Dict[int, List[_Planned]] = {}
        for p in planned:
            by_file.setdefault(id(p.file), []).append(p)
        for items in by_file.values():
            f = items[0].file
            if f.stored is None or not f.stored.algorithm:
                self.checksums[f.where] = outcome_without_check(f.stored)
            elif not tiles(f.header.data_start, f.size, [(p.info.begin, p.info.end) for p in items]):
                self.checksums[f.where] = "not checked: this load reads a part of the file"
            else:
                check = FileCheck(f.where, f.size, f.stored)
                check.add(0, f.head)
                self._checks[id(f)] = check

    # --- direct ---------------------------------------------------------------------------
    def _groups(self, items: List[_Planned]) -> List[_Group]:
        groups: List[_Group] = []
        order: Dict[int, int] = {}  # files in the order they are first asked for
        for p in items:
            order.setdefault(id(p.file), len(order))
        items = sorted(items, key=lambda p: (order[id(p.file)], p.info.begin))
        for p in items:
            t = p.info
            g = groups[-1] if groups else None
            small = t.nbytes < OWN_STORAGE
            if (
                g is not None
                and small
                and g.file is p.file
                and g.end == t.begin
                and g.members[0].info.nbytes < OWN_STORAGE
                and t.end - g.begin <= GROUP_BYTES
            ):
                g.end = t.end
                g.members.append(p)
            else:
                groups.append(_Group(p.file, t.begin, t.end, [p]))
        return groups

    def _place(self, g: _Group, out: Dict[str, torch.Tensor], into: Dict[str, torch.Tensor]) -> None:
        """Allocate the group's tensors, and for a lone tensor point the group's GET at the
        tensor itself (a group of several lands in a buffer its tensors are copied out of,
        allocated by ``_load_direct`` when its GET starts: every tensor keeps a storage of
        its own, as the safetensors package gives it)."""
        for p in g.members:
            given = into.get(p.info.name)
            fits = given is not None and fits_in_place(given, p.dtype, p.shape)
            out[p.info.name] = given if fits else alloc(p.shape, p.dtype, self.device, self.pin_memory)  # type: ignore[assignment]
        if len(g.members) == 1:
            tensor = out[g.members[0].info.name]
            g.buf = tensor.reshape(-1).view(torch.uint8) if tensor.numel() else None

    def _load_direct(self, items: List[_Planned], out: Dict[str, torch.Tensor], into: Dict[str, torch.Tensor]) -> None:
        groups = self._groups(items)
        for g in groups:  # every destination first (address space only), so that ...
            self._place(g, out, into)
        # ... a thread of its own can make them resident ahead of the GETs (_prefault.py).
        # Page-locked memory is resident already; a shared buffer lives for one GET only.
        fresh = [] if self.pin_memory else [g.buf for g in groups if len(g.members) == 1 and g.buf is not None]
        inflight: Deque[Tuple[_Group, Any]] = deque()
        try:
            with Prefaulter(fresh) as prefaulter:
                for g in groups:
                    self.stats["direct"] += len(g.members)
                    if len(g.members) > 1:
                        g.buf = torch.empty(g.end - g.begin, dtype=torch.uint8)
                    if g.buf is None:  # empty tensors: nothing to read
                        continue
                    if len(inflight) >= WINDOW:
                        self._finish(*inflight.popleft(), out, prefaulter)
                    start = g.file.header.data_start + g.begin
                    try:
                        h = self.native.start_get_into(self.bucket, g.file.key, g.buf, start, g.end - g.begin)
                    except _crt.S3Exception as e:
                        raise read_error(_where(g.file, g.members[0].info), e) from e
                    self.stats["gets"] += 1
                    inflight.append((g, h))
                while inflight:
                    self._finish(*inflight.popleft(), out, prefaulter)
        finally:
            # On failure, stop what is still running (each handle holds its destination
            # until the CRT is done with it, so no memory is released under a transfer).
            for _, h in inflight:
                if not h.done():
                    h.cancel()

    def _finish(self, g: _Group, h: Any, out: Dict[str, torch.Tensor], prefaulter: Prefaulter) -> None:
        prefaulter.help_until(h.done)  # this thread would only wait: it populates meanwhile
        try:
            n = h.wait()
        except _crt.S3Exception as e:
            raise read_error(_where(g.file, g.members[0].info), e) from e
        self.versions.check(g.file.key, _where(g.file, g.members[0].info), h)
        want = g.end - g.begin
        if n != want:
            raise TruncatedFileError(
                f"{_where(g.file, g.members[0].info)}: read {n} of {want} bytes (the object changed or was truncated)"
            )
        self.stats["bytes"] += n
        if self.on_progress is not None:
            self.on_progress(n)
        check = self._checks.get(id(g.file))
        if check is not None and g.buf is not None:
            check.add(g.file.header.data_start + g.begin, g.buf[:n])
        if len(g.members) > 1:
            assert g.buf is not None
            for p in g.members:
                a = p.info.begin - g.begin
                dst = out[p.info.name]
                if dst.numel():
                    dst.reshape(-1).view(torch.uint8).copy_(g.buf[a : a + p.info.nbytes])
        g.buf = None

    # --- staged ---------------------------------------------------------------------------
    def _on_bytes(self, f: ShardFile) -> Optional[Callable[[int, torch.Tensor], None]]:
        check = self._checks.get(id(f))
        return check.add if check is not None else None

    def _load_staged(self, items: List[_Planned], out: Dict[str, torch.Tensor], given: Dict[str, torch.Tensor]) -> None:
        if not items:
            return
        work: List[StagedTensor] = []
        for p in items:
            mine = given.get(p.info.name)
            dst = mine if mine is not None else alloc(p.shape, p.out_dtype, self.device, self.pin_memory)
            out[p.info.name] = dst
            src_dtype: Optional[torch.dtype] = p.dtype if dst.dtype != p.dtype else None
            view = dst
            if src_dtype is None and dst.numel():
                view = dst.reshape(-1).view(torch.uint8)  # moved as bytes, whatever the dtype
            work.append(
                StagedTensor(
                    p.file.key,
                    p.file.header.data_start + p.info.begin,
                    p.info.nbytes,
                    view,
                    None,
                    _where(p.file, p.info),
                    lambda: None,
                    src_dtype=src_dtype,
                    on_bytes=self._on_bytes(p.file),
                )
            )
        self.stats["staged"] += len(items)
        with borrow_ring(self.ring_bytes, self.slot_bytes, self.device.type == "cuda") as ring:
            run = RingLoad(self.native, self.bucket, ring, None, self.versions)
            try:
                run.run(work)
            finally:
                self.stats["bytes"] += run.bytes_read
                if self.on_progress is not None:
                    self.on_progress(run.bytes_read)
