"""Shared reads: checkpoint records that several ranks need leave S3 once, not once per rank.

Planning (``plan_sharing``, on the coordinator, in ``prepare_global_plan``): every stored
record (a tensor's or a byte item's ``torch.save`` record: file, offset, length) that more
than one rank reads is assigned to one of those ranks, the one with the fewest bytes to
fetch so far (largest records first), so every rank fetches about the same number of bytes.
The shared records are cut into rounds of at most ``round_bytes``; every rank gets the same
schedule in its plan's ``storage_data``.

Loading (``SharedLoad.run``, on every rank, in ``read_data``), round by round:
1. each rank fetches the records of the round assigned to it (ranged GETs, all in flight);
2. all ranks exchange their status (``all_gather_object``): if any fetch failed, every rank
   raises, with the fetching rank's error, before anything is sent. The status carries the
   ETag each fetch answered with: every rank holds the file to that version (``_versions``),
   the fetches of other ranks as well as its own reads, so a file replaced during the load
   cannot give one rank's records from one version and another's from the other;
3. each record is broadcast by its fetcher in chunks of at most ``CHUNK`` bytes; the ranks
   that need it place its items from memory (CRC-checked like any other read), the others
   drop it. An error while placing is kept and raised after the last round, so no rank
   leaves the collectives early and none is left waiting.
Then each rank loads the records only it needs, as without sharing. Memory: one round's
records at a time. Collectives run on the process group given to the reader (default: the
default group); with NCCL the chunks travel through the current CUDA device.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, ReadItem

from .. import _crt
from ._errors import CheckpointCorruptError
from ._parallel_load import ParallelLoader

DEFAULT_ROUND_BYTES = 256 << 20
CHUNK = 64 << 20  # bytes per broadcast

Record = Tuple[str, int, int]  # relative path, offset, length


class SharedReadError(_crt.S3Exception):
    """Another rank could not fetch bytes this rank needs; the message is that rank's error."""


@dataclass(frozen=True)
class SharedRecord:
    record: Record
    fetcher: int  # rank in the load's process group
    needers: Tuple[int, ...]


@dataclass(frozen=True)
class ShareSchedule:
    rounds: Tuple[Tuple[SharedRecord, ...], ...]

    def records(self) -> Dict[Record, SharedRecord]:
        return {r.record: r for rnd in self.rounds for r in rnd}


def _record(storage_data: Dict[Any, Any], item: ReadItem) -> Record:
    info = storage_data[item.storage_index]
    return (info.relative_path, info.offset, info.length)


def plan_sharing(plans: List[LoadPlan], storage_data: Dict[Any, Any], round_bytes: int) -> List[LoadPlan]:
    """Assign each record several ranks read to one of them; the schedule goes to every plan."""
    needers: Dict[Record, List[int]] = {}
    for rank, plan in enumerate(plans):
        for item in plan.items:
            ranks = needers.setdefault(_record(storage_data, item), [])
            if not ranks or ranks[-1] != rank:
                ranks.append(rank)
    load = [0] * len(plans)  # bytes each rank will fetch from S3
    for rec, ranks in needers.items():
        if len(ranks) == 1:
            load[ranks[0]] += rec[2]
    shared: List[SharedRecord] = []
    for rec, ranks in sorted(needers.items(), key=lambda kv: (-kv[0][2], kv[0])):
        if len(ranks) < 2:
            continue
        fetcher = min(ranks, key=lambda r: (load[r], r))
        load[fetcher] += rec[2]
        shared.append(SharedRecord(rec, fetcher, tuple(ranks)))
    shared.sort(key=lambda s: s.record)  # file order: neighbouring ranges travel together
    rounds: List[Tuple[SharedRecord, ...]] = []
    current: List[SharedRecord] = []
    size = 0
    for s in shared:
        if current and size + s.record[2] > round_bytes:
            rounds.append(tuple(current))
            current, size = [], 0
        current.append(s)
        size += s.record[2]
    if current:
        rounds.append(tuple(current))
    schedule = ShareSchedule(tuple(rounds))
    return [dataclasses.replace(p, storage_data=schedule) for p in plans]


def collective_device(group: Optional[Any]) -> Optional[torch.device]:
    """Where the group's collectives need their tensors: the current CUDA device for NCCL,
    None (host memory) for gloo and the rest. Records stay in host memory either way; with
    NCCL each chunk goes up to the device, is broadcast there, and comes back down."""
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


class SharedLoad:
    """One rank's side of a shared load (see the module docstring)."""

    def __init__(self, loader: ParallelLoader, schedule: ShareSchedule, group: Optional[Any], where: str) -> None:
        self.loader, self.schedule, self.group, self.where = loader, schedule, group, where
        self.rank = dist.get_rank(group)
        self.bytes_shared_in = 0  # bytes this rank placed from other ranks' fetches
        self.device = collective_device(group)

    def run(
        self,
        work: List[Tuple[ReadItem, str, int, int]],
        storage_data: Dict[Any, Any],
        key_of: Dict[str, str],
        planner: LoadPlanner,
    ) -> None:
        """``work``: this rank's (item, key, offset, length); ``key_of``: relative path -> key."""
        mine: Dict[Record, List[Tuple[ReadItem, str, int, int]]] = {}
        shared = self.schedule.records()
        local: List[Tuple[ReadItem, str, int, int]] = []
        for w in work:
            rec = _record(storage_data, w[0])
            if rec in shared:
                mine.setdefault(rec, []).append(w)
            else:
                local.append(w)
        failure: Optional[BaseException] = None
        for rnd in self.schedule.rounds:
            bufs, versions = self._fetch(rnd, key_of)
            if failure is None:
                try:  # this rank's own reads of a file against the version its fetcher read
                    for path, etag in versions.items():
                        self.loader.versions.agree(key_of[path], f"{self.where}/{path}", etag)
                except BaseException as e:  # raised after the last round, as below
                    failure = e
            for s in rnd:
                buf = self._broadcast(s, bufs.get(s.record))
                if buf is None or failure is not None:
                    continue
                try:
                    key = key_of[s.record[0]]
                    self.loader.load(mine[s.record], planner, {(key, s.record[1]): buf.numpy().data})
                    if s.fetcher != self.rank:
                        self.bytes_shared_in += s.record[2]
                except BaseException as e:  # raised after the last round: the others still wait on us
                    failure = e
        if failure is not None:
            raise failure
        self.loader.load(local, planner)

    def _fetch(
        self, rnd: Tuple[SharedRecord, ...], key_of: Dict[str, str]
    ) -> Tuple[Dict[Record, torch.Tensor], Dict[str, str]]:
        """Fetch this rank's records of the round; every rank learns whether all fetches worked,
        and the version (ETag) of each file they read: returned by relative path."""
        bufs: Dict[Record, torch.Tensor] = {}
        error: Optional[str] = None
        own_error: Optional[BaseException] = None
        mine: Dict[str, str] = {}  # relative path -> ETag of this rank's fetches
        todo = [s for s in rnd if s.fetcher == self.rank]
        try:
            reqs = []
            for s in todo:
                path, off, n = s.record
                bufs[s.record] = torch.empty(n, dtype=torch.uint8)
                reqs.append((key_of[path], off, n, bufs[s.record]))
            # All in flight at once; each answer held to this rank's own reads of its file so
            # far (a mismatch fails every rank, below).
            got = self.loader._get_many(reqs, [f"{self.where}/{s.record[0]}" for s in todo])
            for s, n in zip(todo, got):
                path, off, want = s.record
                if n != want:
                    raise SharedReadError(
                        f"{self.where}/{path}: the file ends early: {n} of {want} bytes at offset {off} "
                        "(truncated checkpoint file?)"
                    )
                if self.loader.versions.first(key_of[path]):
                    mine[path] = self.loader.versions.first(key_of[path])
                self.loader.bytes_read += n
        except Exception as e:
            own_error, error = e, f"{type(e).__name__}: {e}"
        statuses: List[Any] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(statuses, (self.rank, error, mine), group=self.group)
        for rank, err, _ in statuses:
            if err is not None:
                if rank == self.rank and own_error is not None:
                    raise own_error
                raise SharedReadError(f"rank {rank} could not read checkpoint bytes this rank needs: {err}")
        # The fetchers' versions, alike on every rank, so every rank raises here or none does.
        versions: Dict[str, Tuple[int, str]] = {}
        for rank, _, theirs in statuses:
            for path, etag in theirs.items():
                first = versions.setdefault(path, (rank, etag))
                if first[1] != etag:
                    raise CheckpointCorruptError(
                        f"{self.where}/{path}: the object was replaced while this load read it (rank {first[0]} "
                        f"read ETag {first[1]}, rank {rank} ETag {etag}: something wrote to the same path "
                        "meanwhile); its records would mix two versions. Load again once the writer is done"
                    )
        return bufs, {path: etag for path, (_, etag) in versions.items()}

    def _broadcast(self, s: SharedRecord, fetched: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Send (fetcher) or receive one record; returns its bytes where this rank needs them."""
        n = s.record[2]
        need = self.rank in s.needers
        buf = fetched if fetched is not None else (torch.empty(n, dtype=torch.uint8) if need else None)
        src = dist.get_global_rank(self.group, s.fetcher) if self.group is not None else s.fetcher
        scratch: Optional[torch.Tensor] = None
        for a in range(0, n, CHUNK):
            b = min(n, a + CHUNK)
            if buf is not None:
                piece = buf[a:b]
            else:  # not needed here: receive into scratch memory and drop it
                if scratch is None:
                    scratch = torch.empty(min(n, CHUNK), dtype=torch.uint8)
                piece = scratch[: b - a]
            if self.device is None:
                dist.broadcast(piece, src=src, group=self.group)
            else:
                on_dev = (
                    piece.to(self.device)
                    if self.rank == s.fetcher
                    else torch.empty(b - a, dtype=torch.uint8, device=self.device)
                )
                dist.broadcast(on_dev, src=src, group=self.group)
                if self.rank != s.fetcher:
                    piece.copy_(on_dev)
        return buf if need else None
