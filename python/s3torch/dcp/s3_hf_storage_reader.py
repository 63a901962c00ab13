"""S3HuggingFaceStorageReader: torch's ``HuggingFaceStorageReader``, reading from S3.

``dcp.load`` of a Hugging Face checkpoint (safetensors files) straight from S3 into any state
dict, resharded as DCP reshards: each rank reads only the rows of each tensor its shards
need, by ranged GETs straight into host memory, then copies them into its destinations.

What it reads under ``s3://bucket/prefix/``: the ``*.safetensors.index.json`` there and the
shards it names, else every ``*.safetensors`` directly under the prefix (as torch's reader
does); or the index a path ending in ``.json`` names (no listing). Files written by torch's
``HuggingFaceStorageWriter`` with ``save_distributed=True`` carry where each piece of a
tensor lies (``__metadata__["DCP_SHARDING_INFO"]``), so a tensor may be spread over several
files; elsewhere a tensor named by two files is refused, since which one is meant cannot be
told. Headers are those of ``s3torch.safetensors``: read with
every file's first GET (all at once), validated before anything is allocated, and every GET
after held to the version the header came from.
"""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch
from torch.distributed.checkpoint.metadata import (
    ChunkStorageMetadata,
    Metadata,
    MetadataIndex,
    StorageMeta,
    TensorProperties,
    TensorStorageMetadata,
)
from torch.distributed.checkpoint.planner import LoadPlan, LoadPlanner, ReadItem
from torch.distributed.checkpoint.storage import StorageReader
from torch.futures import Future

from .._client import S3Client
from .._config import S3ClientConfig
from .._crt import S3Exception
from .._progress import Progress
from .._uri import as_dir, parse_s3_uri, s3_path
from ._metadata import UnreadableMetadata, raise_if_unreadable
from .s3_file_system import S3FileSystem

if TYPE_CHECKING:
    from ..safetensors._header import TensorInfo
    from ..safetensors._pieces import Pieces
    from ..safetensors._source import ShardFile

# Bytes of tensor rows read (and held on the host) before they are copied to their
# destinations and the next batch starts.
DEFAULT_BATCH_BYTES = 1 << 30


@dataclass(frozen=True)
class HFStorageInfo:
    """Where one saved piece of a tensor lies: its object and its name there (``storage_data``)."""

    key: str
    name: str


class S3HuggingFaceStorageReader(StorageReader):
    """Load a Hugging Face safetensors checkpoint at ``s3://bucket/prefix`` with ``dcp.load``.

    Args:
        region: the bucket's region (None: as boto3 finds it, see :class:`~s3torch.S3Client`).
        path: ``s3://bucket/prefix`` of the checkpoint (the folder its files are in), or of
            its ``.json`` index.
        s3client_config: an :class:`~s3torch.S3ClientConfig` (default: its defaults).
        endpoint: an S3-compatible endpoint, ``http(s)://host[:port]`` (default: from the environment).
        thread_count: accepted for torch's signature; the reads run concurrently in the engine
            (up to 32 GETs in flight, large ones split into parts) whatever it is.
        verify_checksums: HEAD each file for its stored checksum and check it where a rank
            reads a file whole (as ``s3torch.safetensors`` loads do); a rank that reads part
            of a file cannot check it.
        batch_bytes: at most this many bytes of rows that cannot be read into their
            destinations themselves (column shards, non-contiguous destinations) are held on
            the host before they are copied there (default 1 GiB): the host memory a load
            takes beside them. Casts and CUDA destinations go through the staging ring.
        progress: report the load: a live bar (bytes, GB/s, ETA) when stderr is a terminal,
            else a line every 5 s; then one summary line (as ``S3StorageReader``'s).

    After a load, ``last_load_stats`` counts GETs and bytes, and ``last_load_checksums``
    says for each file read whether its checksum was checked, or why not.
    """

    def __init__(
        self,
        region: Optional[str],
        path: str,
        s3client_config: Optional[S3ClientConfig] = None,
        endpoint: Optional[str] = None,
        thread_count: int = 1,
        verify_checksums: bool = True,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        progress: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(thread_count, int) or thread_count < 1:
            raise ValueError(f"thread_count must be a positive int, got {thread_count!r}")
        if not isinstance(batch_bytes, int) or batch_bytes < 1:
            raise ValueError(f"batch_bytes must be a positive int, got {batch_bytes!r}")
        self.fs = S3FileSystem(region, s3client_config=s3client_config, endpoint=endpoint)
        self.region = self.fs.region
        self.path = self._checked(path)
        self.thread_count = thread_count
        self.verify_checksums = bool(verify_checksums)
        self.batch_bytes = batch_bytes
        self.load_id = uuid.uuid4().hex
        self.storage_data: Dict[MetadataIndex, HFStorageInfo] = {}
        self._pieces: Dict[Tuple[str, str], Tuple["ShardFile", "TensorInfo"]] = {}
        self.last_load_stats: Dict[str, int] = {}
        self.last_load_checksums: Dict[str, str] = {}
        self._progress = Progress("DCP load from", self.path, progress)

    @property
    def client(self) -> S3Client:
        """The S3Client this reader reads with."""
        return self.fs.client

    @staticmethod
    def _checked(path: Any) -> str:
        p = s3_path(path)
        parse_s3_uri(p)
        return p

    @classmethod
    def validate_checkpoint_id(cls, checkpoint_id: Any) -> bool:
        """True if ``checkpoint_id`` is an ``s3://bucket[/prefix]`` path."""
        return S3FileSystem.validate_checkpoint_id(checkpoint_id)

    def reset(self, checkpoint_id: Any = None) -> None:
        """Start a new load, of ``checkpoint_id`` (an ``s3://`` path) when given."""
        if checkpoint_id is not None:
            self.path = self._checked(checkpoint_id)
            self._progress.target = self.path
        self.load_id = uuid.uuid4().hex
        self._pieces = {}

    # --- metadata -------------------------------------------------------------------------
    def read_metadata(self) -> Metadata:
        """Every tensor's dtype, size and saved pieces, from the files' headers. A failure is
        raised by :meth:`set_up_storage_reader` (or the planner's set-up, torch's next call):
        torch would log it and then report only that the metadata is None."""
        try:
            return self._read_metadata()
        except S3Exception as e:
            return UnreadableMetadata(e)  # type: ignore[return-value]  # raises on use

    def _read_metadata(self) -> Metadata:
        state: Dict[str, TensorStorageMetadata] = {}
        self.storage_data, self._pieces = {}, {}
        for name, g in self._saved_pieces().items():
            chunks = []
            for f, t, offsets in g.parts:
                shape = t.torch_shape(f.where)
                chunks.append(ChunkStorageMetadata(offsets=torch.Size(offsets), sizes=torch.Size(shape)))
                self.storage_data[MetadataIndex(fqn=name, offset=torch.Size(offsets))] = HFStorageInfo(f.key, name)
                self._pieces[(f.key, name)] = (f, t)
            dtype = g.parts[0][1].torch_dtype(g.parts[0][0].where)
            state[name] = TensorStorageMetadata(
                properties=TensorProperties(dtype=dtype), size=torch.Size(g.size), chunks=chunks
            )
        metadata = Metadata(state_dict_metadata=state, storage_data=self.storage_data)  # type: ignore[arg-type]
        metadata.storage_meta = StorageMeta(checkpoint_id=self.path, load_id=self.load_id)
        return metadata

    def _saved_pieces(self) -> Dict[str, "Pieces"]:
        """Every tensor's saved pieces (``safetensors/_pieces.py``: checked to tile it), from
        the headers of all files, read at once: a folder's files (each may hold pieces of
        tensors), or those its index names (each tensor whole in one)."""
        from ..safetensors._pieces import Pieces, gather
        from ..safetensors._source import _get_headers, open_resolved, resolve

        native = self.client._get_native()
        bucket, key = parse_s3_uri(self.path)
        if not key.endswith(".json"):  # a folder: its index, else its files
            key = as_dir(key)
        uri = f"s3://{bucket}/{key}"
        index_key, names = resolve(native, uri, bucket, key)
        if index_key is None:
            return gather(self.path, _get_headers(native, bucket, names, {}, self.verify_checksums))
        src = open_resolved(native, uri, bucket, index_key, names, verify=self.verify_checksums)
        return {
            name: Pieces(name, list(t.torch_shape(f.where)), [(f, t, (0,) * len(t.torch_shape(f.where)))])
            for name, (f, t) in src.tensors.items()
        }

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        """Keep the metadata's storage data (where each saved piece lies)."""
        raise_if_unreadable(metadata)
        self.storage_data = metadata.storage_data
        if not self._pieces:
            raise RuntimeError(
                "S3HuggingFaceStorageReader: read_metadata must run first on every rank, as dcp.load does"
            )

    def prepare_local_plan(self, plan: LoadPlan) -> LoadPlan:
        """The plan, its items in file order."""
        items = sorted(plan.items, key=lambda r: self._order(r))
        return dataclasses.replace(plan, items=items)

    def prepare_global_plan(self, plans: List[LoadPlan]) -> List[LoadPlan]:
        """The plans as they are."""
        return plans

    def _order(self, r: ReadItem) -> Tuple[str, int]:
        info = self.storage_data[r.storage_index]
        _, t = self._pieces[(info.key, info.name)]
        return info.key, t.begin

    # --- data -----------------------------------------------------------------------------
    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> "Future[None]":
        """Read the rows each item needs into the planner's destinations (safetensors/_into.py);
        the future is done when all are."""
        from ..safetensors._dtypes import PACKED
        from ..safetensors._into import Loaders, Placement, read_into

        native = self.client._get_native()
        bucket, _ = parse_s3_uri(self.path)
        # One placement per item: the rows [lo, hi) of the saved piece it needs, the index that
        # cuts the item's part out of them, and its destination (read into itself where it is
        # exactly those rows, contiguous; see safetensors/_into.py).
        placements: List[Placement] = []
        for item in plan.items:
            info = self.storage_data[item.storage_index]
            f, t = self._pieces[(info.key, info.name)]
            label = f"{f.where} tensor {t.name!r}"
            shape = t.torch_shape(label)
            offs, lens = list(item.storage_offsets), list(item.lengths)
            cut = tuple(slice(o, o + n) for o, n in zip(offs, lens))
            if shape and t.dtype.name != PACKED:
                lo, hi = offs[0], offs[0] + lens[0]
                if (lo, hi) != (0, shape[0]):
                    t = t.rows(lo, hi, f"{t.name}[{lo}:{hi}]")
                    cut = (slice(0, hi - lo), *cut[1:])
            dst = planner.resolve_tensor(item).detach()
            if tuple(dst.size()) != tuple(lens):
                raise RuntimeError(f"{label}: the destination is {list(dst.size())}, the part to read {lens}")
            placements.append(Placement(f, t, dst, cut, item))

        loaders = Loaders(native, bucket, self._progress.add)
        self._progress.set_total(sum(p.info.nbytes for p in placements))
        try:
            with self._progress:  # no summary when the read raises
                read_into(loaders, placements, self.batch_bytes, lambda p: planner.commit_tensor(p.tag, p.dst))
        finally:
            self.last_load_stats, self.last_load_checksums = loaders.results()
        fut: "Future[None]" = Future()
        fut.set_result(None)
        return fut


__all__ = ["S3HuggingFaceStorageReader"]
