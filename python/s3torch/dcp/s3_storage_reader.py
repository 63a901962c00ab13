"""S3StorageReader: load DCP checkpoints (torch's FileSystemWriter format) from S3.

By default, loads go through the parallel zero-copy loader (see _parallel_load): many ranged
GETs in flight across items and files, each tensor's bytes landing directly in the
destination tensor when it is contiguous CPU memory, CRC32 checked. With an explicit
``reader_constructor`` (sequential, range_based, dcp_optimized) the load runs torch's own
per-file path over those readers instead, as s3torchconnector does.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch.distributed as dist
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner
from torch.futures import Future

from .._catalog import what_is_there_now
from .._config import S3ClientConfig
from .._crt import S3Exception
from .._progress import Progress
from .._tiling import find, shape_text, split_tiles
from .._uri import parse_s3_uri, s3_path
from ..s3reader import ItemRange
from ..s3reader.constructor import DCPOptimizedConstructor, ReaderConstructor
from . import _save_mark
from ._errors import CheckpointCorruptError
from ._metadata import raise_if_unreadable, rank_local_name, read_or_defer, read_rank_local_or_defer
from ._parallel_load import ParallelLoader
from ._safe_unpickle import SafeBytesPlanner, load_metadata
from ._shared_reads import DEFAULT_ROUND_BYTES, SharedLoad, ShareSchedule, plan_sharing
from ._staging import DEFAULT_RING_BYTES, DEFAULT_SLOT_BYTES, check_ring_size
from .s3_file_system import S3FileSystem

log = logging.getLogger("s3torch.dcp")


class S3StorageReader(FileSystemReader):
    """Read DCP checkpoints from ``s3://bucket/prefix``.

    Args:
        region: the bucket's region (None: as boto3 finds it, see :class:`~s3torch.S3Client`).
        path: ``s3://bucket/prefix`` of the checkpoint.
        s3client_config: an :class:`~s3torch.S3ClientConfig` (default: its defaults).
        endpoint: an S3-compatible endpoint, ``http(s)://host[:port]`` (default: from the environment).
        reader_constructor: None (default) for the parallel zero-copy loader; or
            ``S3ReaderConstructor.sequential() / range_based() / dcp_optimized()`` to read
            through that reader strategy with torch's own per-file loop.
        thread_count: accepted for compatibility; the parallel loader's concurrency comes
            from the CRT (the number of requests in flight), not from Python threads.
        staging_bytes: size of the staging ring (default 256 MiB), the host memory through
            which bytes reach destinations that cannot take a GET directly: CUDA tensors,
            non-contiguous views, transposed stored tensors. Page-locked when it feeds a
            GPU. Allocated once per process and reused by later loads; this is the only
            staging memory a load holds, whatever the checkpoint's size.
            ``s3torch.dcp.release_staging_memory()`` frees idle rings.
        staging_slot_bytes: the ring's slot size (default 8 MiB, a multiple of 64): each slot
            is one ranged GET and one copy to the destination.
        verify_checksums: check each fully read tensor against the CRC32 its record carries,
            and that each file s3torch wrote ends with the save mark the metadata names (a
            file another save wrote, two saves to one path overlapping, is refused with
            ``CheckpointCorruptError`` before any tensor is placed; docs/dcp.md).
        progress: report the load: a live bar (bytes, GB/s, ETA) when stderr is a terminal,
            else a line every 5 s; then one summary line (bytes, seconds, GB/s). Lines go
            to the ``s3torch`` logger when it is enabled for INFO, else to stderr (the
            summary to stdout).
        share_reads: records that several ranks read (DDP replicas, HSDP replica groups,
            replicated small tensors) are fetched from S3 by one of them and sent to the
            others over ``process_group`` (default: the default group; gloo on CPU, NCCL
            through the current CUDA device), in rounds of at most ``share_round_bytes``
            (default 256 MiB). A failed fetch fails the load on every rank with the fetching
            rank's error. ``last_load_stats["bytes_from_s3"]`` counts this rank's bytes.

    When ``dcp.load`` returns, CUDA destinations are safe to use on each device's current
    stream without a synchronize: the current stream waits for the staging copies.
    """

    fs: S3FileSystem  # type: ignore[assignment]  # torch's FileSystem, replaced by ours

    def __init__(
        self,
        region: Optional[str],
        path: str,
        s3client_config: Optional[S3ClientConfig] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
        thread_count: int = 1,
        endpoint: Optional[str] = None,
        staging_bytes: int = DEFAULT_RING_BYTES,
        staging_slot_bytes: int = DEFAULT_SLOT_BYTES,
        verify_checksums: bool = True,
        progress: bool = False,
        share_reads: bool = False,
        process_group: Optional[Any] = None,
        share_round_bytes: int = DEFAULT_ROUND_BYTES,
        trust_checkpoint: bool = False,
    ) -> None:
        check_ring_size(staging_bytes, staging_slot_bytes)
        if isinstance(share_round_bytes, bool) or not isinstance(share_round_bytes, int) or share_round_bytes <= 0:
            raise ValueError(f"share_round_bytes must be a positive int, got {share_round_bytes!r}")
        path = s3_path(path)
        parse_s3_uri(path)
        super().__init__(path)
        self.fs = S3FileSystem(
            region, s3client_config=s3client_config, reader_constructor=reader_constructor, endpoint=endpoint
        )
        self.path = self.fs.init_path(path)
        self.region = self.fs.region
        self.sync_files = False
        self.thread_count = thread_count
        self.reader_constructor = reader_constructor
        self.staging_bytes, self.staging_slot_bytes = staging_bytes, staging_slot_bytes
        self._force_staging = False  # tests: every tensor through the ring
        self.verify_checksums = verify_checksums
        self._progress = Progress("DCP load from", str(self.path), progress)
        self.last_load_stats: Dict[str, int] = {}
        self.share_reads, self.process_group, self.share_round_bytes = share_reads, process_group, share_round_bytes
        self.trust_checkpoint = bool(trust_checkpoint)
        self._transformed = False  # set up from the metadata: see _generic

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        """True if ``checkpoint_id`` is an ``s3://bucket[/prefix]`` path."""
        return S3FileSystem.validate_checkpoint_id(checkpoint_id)

    def _key(self, relative_path: str) -> str:
        return parse_s3_uri(self.fs.concat_path(self.path, relative_path), need_key=True)[1]

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """The checkpoint's metadata. A failed read of the global ``.metadata`` is raised by
        :meth:`set_up_storage_reader`, torch's next call, so that torch neither logs it nor
        retries it as rank-local metadata (see ``_metadata``)."""
        rank = kwargs.get("rank")
        if rank is not None:  # torch's fallback: only when a rank-local file exists
            path = str(self.fs.concat_path(self.path, rank_local_name(rank)))
            return read_rank_local_or_defer(lambda: self._read_metadata(rank), path)  # type: ignore[return-value]
        got = read_or_defer(lambda: self._read_metadata(None), str(self.path), self._exists, self._instead)
        return got  # type: ignore[return-value]  # an UnreadableMetadata raises on use

    def _read_metadata(self, rank: Optional[int]) -> Metadata:
        """What torch's ``FileSystemReader.read_metadata`` does, with the one unpickler of
        ``_safe_unpickle`` in place of ``pickle.load``."""
        path = self.fs.concat_path(self.path, rank_local_name(rank))
        with self.fs.create_stream(path, "rb") as stream:
            data = stream.read()
        metadata = load_metadata(data, str(path), self.trust_checkpoint)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata

    def _instead(self) -> str:
        """What the path holds instead of a checkpoint (the checkpoints below it), for the error."""
        return what_is_there_now(self.fs.client, *parse_s3_uri(str(self.path)))

    def _exists(self, rank: int) -> bool:
        try:
            self.fs.client.head_object(
                *parse_s3_uri(self.fs.concat_path(self.path, rank_local_name(rank)), need_key=True)
            )
            return True
        except S3Exception:
            return False

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """torch's set-up; raises here the error of a ``.metadata`` read that failed."""
        raise_if_unreadable(metadata)
        super().set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)
        self._tensors = metadata.state_dict_metadata
        self._transformed = any(getattr(info, "transform_descriptors", None) for info in self.storage_data.values())

    def _generic(self) -> bool:
        """Whether torch's own read loop runs: a ``reader_constructor`` was given, or the
        checkpoint's records are stream-transformed (saved with torch's ``_extensions``, e.g.
        ``ZStandard``), which torch decodes and the parallel loader does not."""
        return self.reader_constructor is not None or self._transformed

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """Check that the metadata's chunks hold each tensor the plan loads whole
        (``check_chunks``); sort items by file and offset; hand the item ranges to a
        DCP-optimized reader."""
        check_chunks(str(self.path), getattr(self, "_tensors", {}), {r.dest_index.fqn for r in plan.items})
        items = sorted(
            plan.items,
            key=lambda r: (self.storage_data[r.storage_index].relative_path, self.storage_data[r.storage_index].offset),
        )
        if isinstance(self.reader_constructor, DCPOptimizedConstructor):
            ranges: Dict[str, List[ItemRange]] = {}
            for r in items:
                info = self.storage_data[r.storage_index]
                ranges.setdefault(self._key(info.relative_path), []).append(
                    ItemRange(info.offset, info.offset + info.length)
                )
            self.reader_constructor.set_item_ranges_by_file(ranges)
        return dataclasses.replace(plan, items=items)

    def prepare_global_plan(self, plans: List[LoadPlan]) -> List[LoadPlan]:
        """With share_reads: assign each record several ranks read to one of them."""
        if not self.share_reads or self._generic() or len(plans) < 2:
            return plans
        return plan_sharing(plans, self.storage_data, self.share_round_bytes)

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> "Future[None]":
        """Load every item of ``plan`` into the planner's destinations; the future is done when all are."""
        if not self.trust_checkpoint:  # torch's planner unpickles byte items with weights_only=False
            planner = SafeBytesPlanner(planner, str(self.path))  # type: ignore[assignment]
        self._progress.start()
        self._progress.set_total(sum(self.storage_data[r.storage_index].length for r in plan.items))
        try:
            fut = self._read_data(plan, planner)
        except BaseException:
            self._progress.__exit__(RuntimeError, None, None)  # stop drawing, no summary
            raise
        self._progress.done()
        return fut

    def _read_data(self, plan: LoadPlan, planner: LoadPlanner) -> "Future[None]":
        if self._generic():
            generic = super().read_data(plan, planner)
            for r in plan.items:
                self._progress.add(self.storage_data[r.storage_index].length)
            return generic
        bucket, _ = parse_s3_uri(self.path)
        work: List[Tuple[Any, str, int, int]] = []
        for r in plan.items:
            info = self.storage_data[r.storage_index]
            work.append((r, self._key(info.relative_path), info.offset, info.length))
        marks: Dict[str, Tuple[int, bytes]] = {}
        if self.verify_checksums:  # the marks of the files this rank reads
            paths = {self.storage_data[r.storage_index].relative_path for r in plan.items}
            marks = {
                self._key(p): m
                for p, m in _save_mark.expected(self.storage_data, s3_path(self.path).rstrip("/") + "/").items()
                if p in paths
            }
        loader = ParallelLoader(
            self.fs.client._get_native(),
            bucket,
            self.verify_checksums,
            self.staging_bytes,
            self.staging_slot_bytes,
            force_staging=self._force_staging,
            progress=self._progress.add,
            marks=marks,
        )
        schedule = plan.storage_data
        shared_in = 0
        if isinstance(schedule, ShareSchedule) and schedule.rounds and dist.is_initialized():
            key_of = {path: self._key(path) for path in {info.relative_path for info in self.storage_data.values()}}
            sharing = SharedLoad(loader, schedule, self.process_group, str(self.path))
            sharing.run(work, self.storage_data, key_of, planner)
            shared_in = sharing.bytes_shared_in
        else:
            loader.load(work, planner)
        self.last_load_stats = dict(
            loader.stats,
            ring_slot_uses=loader.ring_slot_uses,
            ring_out_of_order=loader.ring_out_of_order,
            bytes_from_s3=loader.bytes_read,
            bytes_shared_in=shared_in,
        )
        fut: Future = Future()
        fut.set_result(None)
        return fut


def check_chunks(where: str, tensors: Dict[str, Any], fqns: Iterable[str]) -> None:
    """CheckpointCorruptError for the first of ``fqns`` whose chunks in the metadata
    (``tensors``: its ``state_dict_metadata``) do not tile the tensor, naming what they miss,
    overlap or overrun (``_tiling``): torch's planner would load what they cover and leave the
    rest of the destination as it was, with no error. A tensor split along one dimension (as
    torch's shards are) is checked by a sort of its chunks' ranges (0.05 s for 400 tensors x
    1,024 chunks); any other, by a sweep for overlaps and a sum of volumes (identical chunks
    counted once), or where the sweep would take too long, by the sum alone."""
    for fqn in sorted(fqns):
        md = tensors.get(fqn)
        chunks = getattr(md, "chunks", None)
        if md is None or not chunks:
            continue  # a byte item, or a tensor the planner found elsewhere
        size = list(md.size)
        if split_tiles(size, [(c.offsets, c.sizes) for c in chunks]):
            continue
        boxes = sorted({(tuple(c.offsets), tuple(c.sizes)) for c in chunks})  # a chunk listed twice: once
        found = find(size, boxes)
        if found is None:
            continue
        if found.kind == "unchecked":  # too many to sweep: their volumes add up, or not
            if sum(math.prod(s) for _, s in boxes) == math.prod(size):
                continue
            why = "its chunks do not add up to it"
        else:
            why = found.words(boxes, "chunk")
        raise CheckpointCorruptError(
            f"{where}: tensor {fqn!r} ({shape_text(md.size)}): in the .metadata, {why}: the checkpoint is corrupt "
            "(a load would leave elements of the destination as they were)"
        )
