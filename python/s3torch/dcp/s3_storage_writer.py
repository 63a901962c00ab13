"""S3StorageWriter: torch's FileSystemWriter format, written to S3.

Each ``.distcp`` file streams into a multipart upload (parts in flight while torch.save keeps
writing; tensor memory is handed to the CRT without a Python-side copy; at most one part is
buffered per file, so memory stays bounded). Files are byte-compatible with torch's
``FileSystemWriter``. ``.metadata`` is written last, by one PUT (atomic on S3): never by
copy+delete, so a checkpoint is loadable only once complete. A failed save aborts its
uploads and writes no ``.metadata``.
"""
from __future__ import annotations

import dataclasses
import logging
import pickle
from typing import Any, List, Optional

from torch.distributed.checkpoint.filesystem import FileSystemWriter, _StoragePrefix
from torch.distributed.checkpoint.metadata import Metadata
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from .._config import S3ClientConfig
from .._uri import parse_s3_uri
from ._progress import Progress
from .s3_file_system import S3FileSystem, _s
from .s3_prefix_strategy import DefaultPrefixStrategy, S3PrefixStrategyBase

log = logging.getLogger("s3torch.dcp")
_METADATA = ".metadata"


class S3StorageWriter(FileSystemWriter):
    fs: S3FileSystem  # type: ignore[assignment]  # torch's FileSystem, replaced by ours

    """Write DCP checkpoints to ``s3://bucket/prefix``.

    Args:
        region, path, s3client_config, endpoint: where to write and how.
        prefix_strategy: key layout per rank (default: torch's ``__<rank>_<n>.distcp``).
        thread_count: files written concurrently per rank (each is itself a concurrent
            multipart upload).
        progress: log one line (bytes, seconds, GB/s) when the save finishes.
        **kwargs: torch ``FileSystemWriter`` options: ``single_file_per_rank``,
            ``per_thread_copy_ahead``, ``cache_staged_state_dict``, ``overwrite``;
            ``sync_files`` is accepted and ignored (S3 objects are durable once written).
    """

    def __init__(self, region: str, path: str, s3client_config: Optional[S3ClientConfig] = None,
                 prefix_strategy: Optional[S3PrefixStrategyBase] = None, thread_count: int = 1,
                 endpoint: Optional[str] = None, progress: bool = False, **kwargs: Any) -> None:
        path = _s(path)
        parse_s3_uri(path)
        kwargs.pop("sync_files", None)  # an fsync fallback would os.sync() the whole machine
        known = {"single_file_per_rank", "per_thread_copy_ahead", "cache_staged_state_dict", "overwrite",
                 "_extensions", "serialization_format"}
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(f"S3StorageWriter got unexpected keyword arguments {sorted(unknown)}")
        if not isinstance(thread_count, int) or thread_count < 1:
            raise ValueError(f"thread_count must be a positive int, got {thread_count!r}")
        super().__init__(path=path, sync_files=False, thread_count=thread_count, **kwargs)
        self.fs = S3FileSystem(region, s3client_config=s3client_config, endpoint=endpoint)
        self.path = self.fs.init_path(path)
        self.region = region
        self.prefix_strategy = prefix_strategy or DefaultPrefixStrategy()
        self._progress = Progress("DCP save to", str(self.path), progress)

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        return S3FileSystem.validate_checkpoint_id(checkpoint_id)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        self._progress.start()
        plan = super().prepare_local_plan(plan)  # refuses an existing checkpoint if overwrite=False
        if self.rank is not None and not self.use_collectives:
            plan = dataclasses.replace(plan, storage_data=_StoragePrefix(self.prefix_strategy.generate_prefix(self.rank)))
        return plan

    def prepare_global_plan(self, plans: List[SavePlan]) -> List[SavePlan]:
        return [
            dataclasses.replace(p, storage_data=_StoragePrefix(self.prefix_strategy.generate_prefix(i)))
            if p.storage_data is None else p
            for i, p in enumerate(plans)
        ]

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> "Future[List[WriteResult]]":
        self._progress.start()
        fut = super().write_data(plan, planner)
        for wr in fut.value():
            self._progress.add(wr.size_in_bytes)
        return fut

    def finish(self, metadata: Metadata, results: List[List[WriteResult]]) -> None:
        from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION

        metadata.version = CURRENT_DCP_VERSION
        storage_md = {}
        for wr_list in results:
            storage_md.update({wr.index: wr.storage_data for wr in wr_list})
        metadata.storage_data = storage_md
        metadata.storage_meta = self.storage_meta()
        if not self.use_collectives and self.rank is not None:
            name = f"__{self.rank}{_METADATA}"
        else:
            name = _METADATA
        # One PUT, last: the checkpoint becomes visible atomically, and only when complete.
        with self.fs.create_stream(self.fs.concat_path(self.path, name), "wb") as stream:
            pickle.dump(metadata, stream)
        self._progress.done()
