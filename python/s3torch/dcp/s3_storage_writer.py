"""S3StorageWriter: torch's FileSystemWriter format, written to S3.

Each ``.distcp`` file streams into a multipart upload with parts in flight while the next
tensors are serialised. Tensor bytes reach the CRT without a Python-side copy, and a write
waits while more than a window of parts (enough for the throughput target) is waiting to be
uploaded, so memory stays bounded whatever the checkpoint size. Tensor records are written
by s3torch (``_torch_save``): the same bytes as ``torch.save``, with the native CRC-32.
Files are byte-identical to torch's ``FileSystemWriter`` output, each followed by its save
mark (``_save_mark``: which save wrote it, checked by every load). CUDA tensors stream
device-to-host a slot at a time through a pinned staging ring into the upload
(``_staged_save``), so a save from GPU memory holds the ring and the upload window, never a
whole tensor, in host memory. ``.metadata`` is written
last, by one PUT (atomic on S3), never by copy+delete, so a checkpoint is loadable only once
complete. Overwriting a checkpoint in place removes its old metadata before any data is
replaced; with ``overwrite=False`` the ``.metadata`` is written create-only (``If-None-Match``),
so of two saves racing for one path only the first to finish commits. A failed save aborts its
uploads, removes the files it completed, and writes no ``.metadata``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pickle
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple, cast

from torch.distributed.checkpoint.filesystem import FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from .. import _torch_compat, _uploads
from .._config import S3ClientConfig
from .._create_only import write_create_only
from .._crt import S3Exception, S3ObjectExistsError
from .._notes import add_note
from .._progress import Progress
from .._uri import as_dir, parse_s3_uri, s3_path
from . import _save_mark, _torch_save
from ._staged_save import (
    DEFAULT_SAVE_RING_BYTES,
    DEFAULT_SAVE_SLOT_BYTES,
    StagedSave,
    caller_streams,
    on_callers_stream,
    plain_strided,
    record_source,
)
from ._staging import borrow_ring, check_ring_size
from .s3_file_system import S3FileSystem
from .s3_prefix_strategy import DefaultPrefixStrategy, S3PrefixStrategyBase

log = logging.getLogger("s3torch.dcp")
_File = Tuple[Any, str, List[Any]]  # (path, file name, write items)
_METADATA = ".metadata"
_STATS_LOCK = threading.Lock()  # writer threads add to last_save_stats (a lock would not pickle)


def _where(path: Any, wi: Any) -> str:
    """A write item's name in errors: ``s3://bucket/key item fqn [at offset]``."""
    idx = wi.index
    return f"{path} item {idx.fqn}" + (f" at {list(idx.offset)}" if idx.offset is not None and any(idx.offset) else "")


# Bytes a file's size hint allows per item beyond its tensor's: a record's torch.save framing
# (zip headers, pickle, alignment) and the small byte items, well over what they take.
RECORD_ALLOWANCE = 64 << 10


def _tensor_bytes(wi: Any) -> int:
    """The bytes of a write item's tensor (0 for byte items)."""
    td = getattr(wi, "tensor_data", None)
    if td is None:
        return 0
    n = 1
    for s in td.size:
        n *= int(s)
    return n * td.properties.dtype.itemsize


class S3StorageWriter(FileSystemWriter):
    """Write DCP checkpoints to ``s3://bucket/prefix``.

    Args:
        region: the bucket's region (None: as boto3 finds it, see :class:`~s3torch.S3Client`).
        path: ``s3://bucket/prefix`` of the checkpoint.
        s3client_config: an :class:`~s3torch.S3ClientConfig` (default: its defaults).
        endpoint: an S3-compatible endpoint, ``http(s)://host[:port]`` (default: from the environment).
        prefix_strategy: key layout per rank (default: torch's ``__<rank>_<n>.distcp``).
        thread_count: files written concurrently per rank (each is itself a concurrent
            multipart upload).
        progress: report the save: a live bar (bytes, GB/s, ETA) when stderr is a terminal,
            else a line every 5 s; then one summary line (bytes, seconds, GB/s). Lines go
            to the ``s3torch`` logger when it is enabled for INFO, else to stderr (the
            summary to stdout).
        staging_bytes: size of the staging ring (default 64 MiB) through which CUDA tensors
            reach the upload: page-locked host memory, one ring per writer thread, kept
            between saves (``s3torch.dcp.release_staging_memory()`` frees idle rings). With
            the upload window (part size times the parts the throughput target keeps in
            flight), it bounds the host memory a save from GPU memory takes, whatever the
            state dict's size. ``dcp.async_save`` stages to CPU memory first and does not
            use it.
        staging_slot_bytes: the ring's slot size (default 8 MiB, a multiple of 64): each slot
            is one device-to-host copy and one write to the upload.
        **kwargs: torch ``FileSystemWriter`` options: ``single_file_per_rank``,
            ``per_thread_copy_ahead``, ``cache_staged_state_dict``, ``overwrite``;
            ``sync_files`` is accepted and ignored (S3 objects are durable once written).

    A failed device-to-host copy raises a ``StagingError`` naming the item and its object;
    the upload is aborted and no ``.metadata`` written. After a save,
    ``last_save_stats`` holds ``staged`` (tensors that went through the ring) and
    ``ring_slot_uses``.
    """

    fs: S3FileSystem  # type: ignore[assignment]  # torch's FileSystem, replaced by ours

    def __init__(
        self,
        region: Optional[str],
        path: str,
        s3client_config: Optional[S3ClientConfig] = None,
        prefix_strategy: Optional[S3PrefixStrategyBase] = None,
        thread_count: int = 1,
        endpoint: Optional[str] = None,
        progress: bool = False,
        staging_bytes: int = DEFAULT_SAVE_RING_BYTES,
        staging_slot_bytes: int = DEFAULT_SAVE_SLOT_BYTES,
        **kwargs: Any,
    ) -> None:
        check_ring_size(staging_bytes, staging_slot_bytes)
        path = s3_path(path)
        parse_s3_uri(path)
        kwargs.pop("sync_files", None)  # an fsync fallback would os.sync() the whole machine
        known = {
            "single_file_per_rank",
            "per_thread_copy_ahead",
            "cache_staged_state_dict",
            "overwrite",
            "_extensions",
            "serialization_format",
        }
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(f"S3StorageWriter got unexpected keyword arguments {sorted(unknown)}")
        if not isinstance(thread_count, int) or thread_count < 1:
            raise ValueError(f"thread_count must be a positive int, got {thread_count!r}")
        super().__init__(path=path, sync_files=False, thread_count=thread_count, **kwargs)
        self.fs = S3FileSystem(region, s3client_config=s3client_config, endpoint=endpoint)
        self.path = self.fs.init_path(path)
        self.region = self.fs.region
        self.prefix_strategy = prefix_strategy or DefaultPrefixStrategy()
        self._progress = Progress("DCP save to", str(self.path), progress)
        self.staging_bytes, self.staging_slot_bytes = staging_bytes, staging_slot_bytes
        self._force_staging = False  # tests: CPU tensors through the (unpinned) ring, as CUDA's go
        self._caller_streams: Dict[Any, Any] = {}  # during write_data: read by writer threads
        self.last_save_stats: Dict[str, int] = {}

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        """True if ``checkpoint_id`` is an ``s3://bucket[/prefix]`` path."""
        return S3FileSystem.validate_checkpoint_id(checkpoint_id)

    def _metadata_name(self) -> str:
        return f"__{self.rank}{_METADATA}" if not self.use_collectives and self.rank is not None else _METADATA

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """FileSystemWriter's plan, after removing an overwritten checkpoint's metadata first."""
        _uploads.retry_pending_aborts(self.fs.client)  # left by an earlier save's outage
        plan = super().prepare_local_plan(plan)  # refuses an existing checkpoint if overwrite=False
        # Overwriting in place: take the old checkpoint's metadata away before any data object
        # is replaced. Otherwise a save that fails halfway would leave the old metadata over a
        # mix of old and new data files: a checkpoint that loads, wrongly. Every rank does this
        # before the plans are gathered, so it is done before any rank writes data.
        metadata = self.fs.concat_path(self.path, self._metadata_name())
        if self.fs.exists(metadata):
            log.info("s3torch: overwriting the checkpoint at %s: removing its metadata first", self.path)
            self.fs.rm_file(metadata)
        if self.rank is not None and not self.use_collectives:
            plan = dataclasses.replace(
                plan, storage_data=_torch_compat.StoragePrefix(self.prefix_strategy.generate_prefix(self.rank))
            )
        return plan

    def prepare_global_plan(self, plans: List[SavePlan]) -> List[SavePlan]:
        """Each rank's plan with its file prefix from the prefix strategy."""
        return [
            dataclasses.replace(p, storage_data=_torch_compat.StoragePrefix(self.prefix_strategy.generate_prefix(i)))
            if p.storage_data is None
            else p
            for i, p in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> "Future[List[WriteResult]]":
        """Write this rank's items into its ``.distcp`` objects; the future holds their WriteResults."""
        # Timed from here, not from planning: a save that fails before its data is written
        # (or metadata read alone) never starts the progress thread.
        self._progress.start()
        self.last_save_stats = {"staged": 0, "ring_slot_uses": 0}
        self._caller_streams = caller_streams()  # writer threads have current streams of their own
        # The total is the tensors' bytes; each record adds about 1 kB of zip framing, so the
        # count ends a little above it.
        self._progress.set_total(sum(_tensor_bytes(wi) for wi in plan.items))
        try:
            if self._can_write_fast():
                results = self._write_files(plan, planner)  # counts each record as it is written
                fut: "Future[List[WriteResult]]" = Future()
                fut.set_result(results)
            else:
                fut = super().write_data(plan, planner)
                for wr in fut.value():
                    self._progress.add(wr.size_in_bytes)
        except BaseException:
            self._progress.__exit__(RuntimeError, None, None)  # stop drawing, no summary
            raise
        finally:
            self._caller_streams = {}  # CUDA streams do not pickle, and the writer does
        # Every rank reports its own bytes here; the coordinator's .metadata PUT follows.
        self._progress.done()
        return fut

    # --- the file-writing loop ---------------------------------------------------------------
    # torch's FileSystemWriter.write_data, with three changes: tensors are written by
    # _torch_save (torch.save's bytes, a faster checksum); CUDA tensors stream device-to-host
    # through a pinned staging ring into the upload (_staged_save) instead of being copied
    # whole to pageable memory; and an error in any writer thread fails the save (and aborts
    # every upload still open) instead of being lost with its thread. Files, names, item order
    # and offsets are the same as torch's. Used when the save is plain torch.save records with
    # no stream extensions; otherwise torch's own loop runs.

    def _can_write_fast(self) -> bool:
        try:
            from torch.distributed.checkpoint.filesystem import SerializationFormat

            fmt_ok = (
                getattr(self, "serialization_format", SerializationFormat.TORCH_SAVE) == SerializationFormat.TORCH_SAVE
            )
        except ImportError:
            fmt_ok = True
        transforms = getattr(self, "transforms", None)
        return (
            fmt_ok
            and transforms is not None
            and not getattr(transforms, "extensions", None)
            and _torch_compat.WRITE_LOOP
            and _torch_save.fast_path_enabled()
        )

    def _write_files(self, plan: SavePlan, planner: SavePlanner) -> List[WriteResult]:
        from torch.distributed.checkpoint.filesystem import DEFAULT_SUFFIX

        prefix = plan.storage_data.prefix
        files: List[_File] = []
        buckets = (
            _torch_compat.split_by_size_and_type(self.thread_count, plan.items)
            if self.single_file_per_rank
            else [[item] for item in plan.items]
        )
        for i, bucket in enumerate(buckets):
            name = f"{prefix}{i}{DEFAULT_SUFFIX}"
            files.append((self.fs.concat_path(self.path, name), name, bucket))
        written: List[Any] = []  # paths of files completed by this save
        self._save_id = _save_mark.new_id(self)  # ends every file (_save_mark)
        try:
            return self._write_files_in_threads(planner, files, written)
        except BaseException:
            # Nothing of a failed save stays behind: files still open were aborted by their
            # writers; remove those already completed (best effort).
            for path in written:
                try:
                    self.fs.rm_file(path)
                except Exception as e:
                    log.warning("s3torch: could not remove %s after the failed save: %s", path, e)
            raise

    def _write_files_in_threads(
        self, planner: SavePlanner, files: List[_File], written: List[Any]
    ) -> List[WriteResult]:
        if self.thread_count == 1 or len(files) <= 1:
            return [wr for f in files for wr in self._write_file(planner, *f, written=written)]
        lock = threading.Lock()
        queue = list(reversed(files))
        failed: List[BaseException] = []

        def worker() -> List[WriteResult]:
            out: List[WriteResult] = []
            while True:
                with lock:
                    if failed or not queue:
                        return out
                    f = queue.pop()
                try:
                    out += self._write_file(planner, *f, written=written)
                except BaseException as e:
                    with lock:
                        failed.append(e)
                    raise

        with ThreadPoolExecutor(max_workers=min(self.thread_count, len(files)), thread_name_prefix="s3torch-dcp") as ex:
            futures = [ex.submit(worker) for _ in range(min(self.thread_count, len(files)))]
            results: List[WriteResult] = []
            errors = []
            for f in futures:
                try:
                    results += f.result()
                except BaseException as e:
                    errors.append(e)
        if errors:
            raise errors[0]
        return results

    def _write_file(
        self, planner: SavePlanner, path: Any, file_name: str, items: List[Any], written: List[Any]
    ) -> List[WriteResult]:
        import torch
        from torch.distributed.checkpoint.planner import WriteItemType

        tc = _torch_compat
        tensors = [wi for wi in items if wi.type != WriteItemType.BYTE_IO]
        if self.thread_count == 1 and torch.cuda.is_available() and self.per_thread_copy_ahead > 0:
            # torch's loop then loads through _OverlappingCpuLoader, which writes the tensors
            # smallest first (a stable sort); the same order keeps the file byte-identical.
            tensors.sort(key=tc.item_size)
        results: List[WriteResult] = []

        def result(wi: Any, offset: int, length: int) -> WriteResult:
            return WriteResult(
                index=wi.index,
                size_in_bytes=length,
                storage_data=tc.StorageInfo(file_name, offset, length, transform_descriptors=None),
            )

        # Exits in reverse: the ring gets its slots back (StagedSave), goes back to the pool,
        # then the upload completes, or is aborted after an error.
        with contextlib.ExitStack() as stack:
            # About the file's size, so that one past S3's 10,000 parts of part_size gets larger parts.
            hint = sum(_tensor_bytes(wi) for wi in tensors) + RECORD_ALLOWANCE * len(items)
            stream = stack.enter_context(self.fs.create_stream(path, "wb", size_hint=hint))
            staged: Optional[StagedSave] = None
            for wi in items:
                if wi.type == WriteItemType.BYTE_IO:
                    offset = stream.tell()
                    data: Any = planner.resolve_data(wi)  # an io.BytesIO
                    stream.write(data.getbuffer())
                    results.append(result(wi, offset, stream.tell() - offset))
                    self._progress.add(stream.tell() - offset)
            for i, wi in enumerate(tensors):
                tensor = cast(torch.Tensor, planner.resolve_data(wi)).detach()
                offset = stream.tell()
                records = None
                if self._through_ring(tensor):
                    template, src = record_source(tensor)
                    records = _torch_save.streamed_records(template)  # None: torch.save's own path
                if records is not None:
                    if staged is None:  # the file's first staged tensor: borrow a ring
                        pinned = tensor.device.type == "cuda"
                        ring = stack.enter_context(borrow_ring(self.staging_bytes, self.staging_slot_bytes, pinned))
                        ring.prepare(sum(_tensor_bytes(w) for w in tensors[i:]))
                        staged = stack.enter_context(StagedSave(ring, self._caller_streams))
                    uses = staged.ring.uses
                    _torch_save.save_streamed(records, staged.chunks(src, _where(path, wi)), stream)
                    self._count_staged(staged.ring.uses - uses)
                else:
                    # What torch's loaders hand its loop: a CPU tensor whose storage is exactly its elements.
                    with on_callers_stream(tensor.device, self._caller_streams):
                        tensor = tensor.cpu()
                    if tensor.untyped_storage().size() != tensor.nbytes:
                        tensor = tensor.clone()  # keeps the memory format
                    _torch_save.save_tensor(tensor, stream)
                results.append(result(wi, offset, stream.tell() - offset))
                self._progress.add(stream.tell() - offset)
            # After the last record: which save wrote this file, checked by every s3torch load.
            stream.write(_save_mark.mark(self._save_id))
        _save_mark.tag((r.storage_data for r in results), self._save_id)
        written.append(path)  # list.append is atomic: safe from several writer threads
        return results

    def _through_ring(self, tensor: Any) -> bool:
        """Whether a tensor's record streams through the staging ring: CUDA tensors (CPU ones
        too with ``_force_staging``) of plain strided layout; the rest go torch's way."""
        if tensor.device.type != "cuda" and not (self._force_staging and tensor.device.type == "cpu"):
            return False
        return plain_strided(tensor)

    def _count_staged(self, slot_uses: int) -> None:
        with _STATS_LOCK:
            self.last_save_stats["staged"] += 1
            self.last_save_stats["ring_slot_uses"] += slot_uses

    def finish(self, metadata: Metadata, results: List[List[WriteResult]]) -> None:
        """Write ``.metadata``, last and in one PUT: the checkpoint becomes visible complete."""
        from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION

        metadata.version = CURRENT_DCP_VERSION
        storage_md = {}
        for wr_list in results:
            storage_md.update({wr.index: wr.storage_data for wr in wr_list})
        metadata.storage_data = storage_md
        metadata.storage_meta = self.storage_meta()
        name = self._metadata_name()
        # One PUT, last: the checkpoint becomes visible atomically, and only when complete.
        # overwrite=False: create only, so that of two saves racing for one path (each found no
        # checkpoint when it planned) only the first to finish commits.
        path = self.fs.concat_path(self.path, name)

        def write(create_only: bool) -> None:
            with self.fs.create_stream(path, "xb" if create_only else "wb") as stream:
                pickle.dump(metadata, stream)

        try:
            if getattr(self, "overwrite", True):
                write(False)
            else:
                write_create_only(write, path)
        except S3ObjectExistsError as e:
            add_note(
                e,
                f"s3torch: another save committed a checkpoint at {self.path} while this one (overwrite=False) was "
                "writing, so this save is not committed. Both wrote data files of the same names: where that "
                "checkpoint's now hold this save's, an s3torch load refuses them (each file names its save). "
                "Save to another path, or with overwrite=True.",
            )
            raise
        if self.use_collectives:
            # Every rank has finished writing: any incomplete upload under this checkpoint is
            # left from an earlier save that failed (killed, or its aborts hit an outage).
            self._abort_stale_uploads()

    def _abort_stale_uploads(self) -> None:
        bucket, key = parse_s3_uri(str(self.path))
        if not as_dir(key):  # at a bucket's root, other writers' uploads are under it too: leave them
            return
        try:
            _uploads.abort_uploads_under(self.fs.client, bucket, as_dir(key))
        except S3Exception as e:  # the checkpoint is complete; this is housekeeping
            log.warning("s3torch: could not check %s for incomplete multipart uploads: %s", self.path, e)
