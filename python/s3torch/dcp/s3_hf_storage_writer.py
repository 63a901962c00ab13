"""S3HuggingFaceStorageWriter: torch's ``HuggingFaceStorageWriter``, writing to S3.

``dcp.save`` of a state dict as a Hugging Face checkpoint (safetensors files and their index)
under ``s3://bucket/prefix/``, in torch's layout:

- **Rank-0 saves** (a full state dict): ``model-00001-of-0000n.safetensors`` ... as
  ``fqn_to_index_mapping`` splits the tensors (one file without it), then
  ``model.safetensors.index.json``.
- **``save_distributed=True``** (DTensor state dicts, every rank saving its pieces):
  ``shard-0000r-model-0000i-of-0000n.safetensors`` per rank, each saying where its pieces lie
  (``__metadata__["DCP_SHARDING_INFO"]``, as torch writes it); with
  ``enable_consolidation=True`` they go under ``sharded/`` and the coordinator then writes the
  full tensors into ``model-...`` files and the index at the top (:mod:`._hf_consolidate`).

Each file is streamed: its header from the tensors' dtypes and shapes, then each tensor's bytes
from its own memory (a CUDA tensor's through a pinned staging ring, slot by slot), so a rank
holds no copy of what it saves (torch's writer builds each file in memory, whole). Files are
safetensors as the ``safetensors`` package writes them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.planner import SavePlan, SavePlanner, WriteItem, WriteItemType
from torch.distributed.checkpoint.storage import StorageWriter, WriteResult
from torch.futures import Future

from .._batch_writes import BatchWrite, delete_keys
from .._client import S3Client
from .._config import S3ClientConfig
from .._progress import Progress
from .._uri import as_dir, parse_s3_uri, s3_path
from ..safetensors._pieces import SAVED_OFFSETS_KEY, SHARDING_INFO_KEY
from ..safetensors._source import _list
from ._staged_save import caller_streams
from .s3_file_system import S3FileSystem

INDEX_NAME = "model.safetensors.index.json"
_OURS = re.compile(r"(shard-\d{5}-)?model-\d{5}-of-\d{5}\.safetensors|model\.safetensors\.index\.json")
_PIECE = re.compile(r"shard-\d{5}-model-\d{5}-of-\d{5}\.safetensors")
_TOP = re.compile(r"model-\d{5}-of-\d{5}\.safetensors|model\.safetensors\.index\.json")  # a full checkpoint's
SHARDED_DIR = "sharded"
DCP_VERSION_KEY = "DCP_VERSION"
DCP_VERSION = "1.0"


def file_name(index: int, largest: int, shard: Optional[int] = None) -> str:
    """torch's names: ``model-00001-of-00004.safetensors``, ``shard-00002-model-...``."""
    name = f"model-{index:05d}-of-{largest:05d}.safetensors"
    return name if shard is None else f"shard-{shard:05d}-{name}"


@dataclass(frozen=True)
class HFWrite:
    """Where a write item went (gathered to the coordinator for the index)."""

    relative_path: str
    length: int


class S3HuggingFaceStorageWriter(StorageWriter):
    """``dcp.save`` of a state dict as a Hugging Face checkpoint on S3 (torch's
    ``HuggingFaceStorageWriter``, which writes a local folder).

    Args:
        region: the bucket's region (None: as :class:`~s3torch.S3Client` finds it).
        path: ``s3://bucket/prefix``: the folder.
        fqn_to_index_mapping: tensor name -> file number (1..n), as torch's; None: one file
            (per rank).
        thread_count: files uploaded at once per rank (each a multipart upload whose parts are
            concurrent already).
        save_distributed: every rank saves its own pieces (DTensor state dicts).
        enable_consolidation: with ``save_distributed``: pieces go under ``sharded/``, then the
            coordinator writes the full tensors at the top.
        thread_count_consolidation: output files consolidated at once (each holding one full
            tensor in host memory at a time; each tensor's pieces are read concurrently
            whatever it is).
        s3client_config: an :class:`~s3torch.S3ClientConfig`.
        endpoint: the S3 endpoint (default as for :class:`~s3torch.S3Client`).
        progress: report each rank's save, and the consolidation: a live bar (bytes, GB/s,
            ETA) when stderr is a terminal, else a line every 5 s; then one summary line.
        overwrite: True: replace a checkpoint the folder holds so that it never loads as a
            mix of two saves (the earlier files are deleted after the new index is written,
            or, where the new files take their names, before the first is written, the index
            first). False: refuse a folder holding a Hugging Face checkpoint already (its
            index, ``model-*`` or ``shard-*`` files: ``FileExistsError`` before anything is
            written), and write every file create-only (``If-None-Match: *``), so that a save
            racing this one is not replaced either.
    """

    def __init__(
        self,
        region: Optional[str],
        path: str,
        fqn_to_index_mapping: Optional[Dict[str, int]] = None,
        thread_count: int = 1,
        save_distributed: bool = False,
        enable_consolidation: bool = False,
        thread_count_consolidation: int = 1,
        s3client_config: Optional[S3ClientConfig] = None,
        endpoint: Optional[str] = None,
        progress: bool = False,
        overwrite: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(thread_count, int) or thread_count < 1:
            raise ValueError(f"thread_count must be a positive int, got {thread_count!r}")
        if fqn_to_index_mapping is not None:
            bad = {
                k: v for k, v in fqn_to_index_mapping.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1
            }
            if bad or not fqn_to_index_mapping:
                raise ValueError(f"fqn_to_index_mapping must map names to file numbers 1..n, got {bad or {}}")
        if enable_consolidation and not save_distributed:
            raise ValueError("enable_consolidation needs save_distributed=True (a rank-0 save is consolidated already)")
        self.fs = S3FileSystem(region, s3client_config=s3client_config, endpoint=endpoint)
        self.region = self.fs.region
        self._config, self._endpoint = s3client_config, endpoint
        self.fqn_to_index_mapping = dict(fqn_to_index_mapping) if fqn_to_index_mapping is not None else None
        self.thread_count = thread_count
        self.save_distributed = bool(save_distributed)
        self.enable_consolidation = bool(enable_consolidation)
        if not isinstance(thread_count_consolidation, int) or thread_count_consolidation < 1:
            raise ValueError(f"thread_count_consolidation must be a positive int, got {thread_count_consolidation!r}")
        self.thread_count_consolidation = thread_count_consolidation
        self.is_coordinator = False
        self.progress = bool(progress)
        self.overwrite = bool(overwrite)
        self.save_id = uuid.uuid4().hex
        self._replaced: List[str] = []  # the coordinator's: an earlier checkpoint's keys, deleted after the index
        self._set_path(path)

    @property
    def client(self) -> S3Client:
        """The S3Client this writer writes with."""
        return self.fs.client

    def _set_path(self, path: Any) -> None:
        p = s3_path(path)
        bucket, key = parse_s3_uri(p)
        if key.endswith(".safetensors") or key.endswith(".json"):
            raise ValueError(f"{p} names a file: S3HuggingFaceStorageWriter writes into a folder (s3://bucket/folder)")
        self.path = p.rstrip("/")
        folder = as_dir(key)
        self._bucket, self._folder = bucket, folder
        self._pieces_folder = folder + SHARDED_DIR + "/" if self.enable_consolidation else folder

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        """True if ``checkpoint_id`` is an ``s3://bucket[/prefix]`` path."""
        return S3FileSystem.validate_checkpoint_id(checkpoint_id)

    def reset(self, checkpoint_id: Any = None) -> None:
        """Start a new save, to ``checkpoint_id`` (an ``s3://`` path) when given."""
        if checkpoint_id is not None:
            self._set_path(checkpoint_id)
        self.save_id = uuid.uuid4().hex

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Note whether this rank is the coordinator (it writes the index, or consolidates)."""
        self.is_coordinator = is_coordinator

    def storage_meta(self) -> Optional[StorageMeta]:
        """The save's path and id, for the checkpoint's metadata."""
        return StorageMeta(checkpoint_id=self.path, save_id=self.save_id)

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        """Refuse what safetensors cannot hold (bytes), before anything is written."""
        for item in plan.items:
            if item.type == WriteItemType.BYTE_IO:
                raise ValueError(
                    f"{item.index.fqn!r} is not a tensor: a Hugging Face checkpoint (safetensors) holds tensors only"
                )
            if self.fqn_to_index_mapping is not None and item.index.fqn not in self.fqn_to_index_mapping:
                raise ValueError(f"tensor {item.index.fqn!r} has no file in fqn_to_index_mapping")
        return plan

    def prepare_global_plan(self, plans: List[SavePlan]) -> List[SavePlan]:
        """Each rank's plan with the file mapping, and its shard number when distributed (as
        torch). A distributed save first deletes the pieces an earlier one left in its folder
        (``shard-*-model-*.safetensors``): consolidation, and any reader, would take them for
        pieces of this one; a save of full files makes room for them (``_make_room``). With
        ``overwrite=False`` a folder holding a checkpoint is refused here instead (the
        coordinator lists it once, before anything is written)."""
        if not self.overwrite:
            folders = {self._folder, self._pieces_folder}
            taken = [
                k
                for f in sorted(folders)
                for k in _list(self.client._get_native(), self._bucket, f)
                if _OURS.fullmatch(k[len(f) :])
            ]
            if taken:
                raise FileExistsError(
                    f"{self.path} holds a Hugging Face checkpoint already ({', '.join(taken[:3])}); "
                    "pass overwrite=True to replace it, or save to another folder"
                )
        if self.save_distributed and self.overwrite:  # overwrite=False found none, above
            listed = _list(self.client._get_native(), self._bucket, self._pieces_folder)
            stale = [k for k in listed if _PIECE.fullmatch(k[len(self._pieces_folder) :])]
            delete_keys(self.client, self._bucket, stale, "a piece of an earlier distributed save")
        self._replaced = []
        if self.overwrite and (self.enable_consolidation or not self.save_distributed):
            self._replaced = self._make_room()
        out = []
        for i, plan in enumerate(plans, start=1):
            data: Dict[str, Any] = {}
            if self.fqn_to_index_mapping is not None:
                data["fqn_to_index_mapping"] = self.fqn_to_index_mapping
            if self.save_distributed:
                data["shard_index"] = i
            out.append(dataclasses.replace(plan, storage_data=data))
        return out

    def _make_room(self) -> List[str]:
        """Before a save that writes a full checkpoint (``model-*`` files and the index) into
        a folder holding one: the earlier checkpoint's keys to delete once the new index is
        written. Where the new files take the earlier ones' names (the same file count), the
        earlier files are deleted now instead, the index first, as ``huggingface_hub`` deletes
        them: replaced one by one, a save failing half-way would leave the earlier index over
        a mix of the two saves' files, which loads without an error."""
        mapping = self.fqn_to_index_mapping
        largest = max(mapping.values()) if mapping else 1
        new = {self._folder + file_name(i, largest) for i in (set(mapping.values()) if mapping else {1})}
        listed = _list(self.client._get_native(), self._bucket, self._folder)
        earlier = [k for k in listed if _TOP.fullmatch(k[len(self._folder) :])]
        earlier.sort(key=lambda k: not k.endswith(INDEX_NAME))  # the index before its files
        if any(k in new for k in earlier):
            delete_keys(self.client, self._bucket, earlier, "a file of the earlier checkpoint this save replaces")
            return []
        return [k for k in earlier if not k.endswith(INDEX_NAME)]  # the new index replaces the earlier one

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> "Future[List[WriteResult]]":
        """Stream each of this rank's files; the future holds every item's result."""
        from ..safetensors._save import file_size, write
        from ..safetensors._save import plan as plan_file

        data: Dict[str, Any] = plan.storage_data or {}
        mapping: Optional[Dict[str, int]] = data.get("fqn_to_index_mapping")
        shard: Optional[int] = data.get("shard_index")
        largest = max(mapping.values()) if mapping else 1
        files: Dict[str, List[WriteItem]] = {}
        for item in plan.items:
            files.setdefault(file_name(mapping[item.index.fqn] if mapping else 1, largest, shard), []).append(item)

        jobs = []
        for name, items in sorted(files.items()):
            tensors: Dict[str, torch.Tensor] = {}
            offsets: Dict[str, Dict[str, List[int]]] = {}
            for item in items:
                fqn = item.index.fqn
                if fqn in tensors:
                    raise ValueError(f"{name}: two pieces of {fqn!r} on one rank (safetensors holds one per name)")
                t = planner.resolve_data(item)
                if not isinstance(t, torch.Tensor):
                    raise ValueError(f"{fqn!r} is not a tensor: safetensors holds tensors only")
                tensors[fqn] = t.detach().contiguous()
                assert item.tensor_data is not None
                offsets[fqn] = {SAVED_OFFSETS_KEY: list(item.tensor_data.chunk.offsets)}
            metadata = {SHARDING_INFO_KEY: json.dumps(offsets), DCP_VERSION_KEY: DCP_VERSION, "format": "pt"}
            jobs.append((name, items, tensors, plan_file(tensors, metadata)))  # every file checked first

        report = Progress("HF save to", self.path, self.progress, total=sum(file_size(j[3], j[2]) for j in jobs))
        streams = caller_streams()  # the pool's threads have current CUDA streams of their own

        def one(job: Any) -> List[WriteResult]:
            name, items, tensors, planned = job
            write(
                self.client,
                self._bucket,
                self._pieces_folder + name,
                tensors,
                planned,
                exclusive=not self.overwrite,
                on_bytes=report.add,
                streams=streams,
            )
            results = []
            for item in items:
                t = tensors[item.index.fqn]
                n = t.numel() * t.element_size()
                results.append(WriteResult(index=item.index, size_in_bytes=n, storage_data=HFWrite(name, n)))
            return results

        # A failure deletes the files this rank wrote, and begins no other (BatchWrite).
        with report, BatchWrite(self.client, self._bucket, "s3torch-hf-save") as batch:
            done = batch.run(
                [(self._pieces_folder + job[0], functools.partial(one, job)) for job in jobs], self.thread_count
            )
        results = [wr for got in done for wr in got]
        fut: "Future[List[WriteResult]]" = Future()
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: List[List[WriteResult]]) -> None:
        """Write the index (rank-0 save), or consolidate the pieces (distributed, with
        consolidation); a distributed save without it writes nothing more, as torch's."""
        if self.save_distributed and not self.enable_consolidation:
            return
        if self.save_distributed:
            from ._hf_consolidate import consolidate

            mapping = self.fqn_to_index_mapping or dict.fromkeys(metadata.state_dict_metadata, 1)
            consolidate(
                self.region,
                self._config,
                self._endpoint,
                self._bucket,
                self._pieces_folder,
                self._folder,
                metadata,
                mapping,
                Progress("HF consolidate into", self.path, self.progress),
                exclusive=not self.overwrite,
                threads=self.thread_count_consolidation,
            )
            self._drop_replaced()
            return
        weight_map: Dict[str, str] = {}
        total = 0
        for rank_results in results:
            for wr in rank_results:
                weight_map[wr.index.fqn] = wr.storage_data.relative_path
                total += wr.storage_data.length
        body = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2).encode()
        self.client.put(self._bucket, self._folder + INDEX_NAME, body, exclusive=not self.overwrite)
        self._drop_replaced()

    def _drop_replaced(self) -> None:
        """After the new index: delete the earlier checkpoint's files it does not name."""
        delete_keys(
            self.client, self._bucket, self._replaced, "a file of an earlier checkpoint, not replaced by this save"
        )
        self._replaced = []


__all__ = ["S3HuggingFaceStorageWriter"]
