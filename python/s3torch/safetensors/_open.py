"""safe_open: a lazy view of safetensors files on S3, the safetensors package's interface.

Opening reads and validates the headers (of every shard, concurrently) and nothing else;
``get_tensor`` and ``get_slice(...)[...]`` read only the bytes they return (a slice reads the
rows of the first dimension it covers).
"""

from __future__ import annotations

import math
import os
from types import TracebackType
from typing import Any, Dict, Iterable, List, Optional, Tuple, Type, Union

import torch

from .._client import S3Client
from .._config import S3ClientConfig, default_region
from .._uri import parse_s3_uri, s3_path
from ..dcp._staging import (
    DEFAULT_RING_BYTES,
    DEFAULT_SLOT_BYTES,
    SAFETENSORS_RING_BYTES,
    SAFETENSORS_SLOT_BYTES,
    check_ring_size,
)
from ._dtypes import PACKED
from ._header import TensorInfo
from ._load import Loader
from ._source import ShardFile, Source, open_source

Device = Union[str, int, torch.device]


def client_of(
    client: Optional[S3Client], region: Optional[str], endpoint: Optional[str], config: Optional[S3ClientConfig]
) -> S3Client:
    """The client to use: ``client``, else one for region (default: ``default_region``),
    endpoint and config."""
    if client is not None:
        if region is not None or endpoint is not None or config is not None:
            raise ValueError("pass either client or region/endpoint/s3client_config, not both")
        return client
    region = region or default_region(config.profile if config is not None else None)
    return S3Client(region, endpoint=endpoint, s3client_config=config)


def device_of(device: Device) -> torch.device:
    """``device`` as a torch.device: "cpu", "cuda", "cuda:N", or an int N for cuda:N."""
    if isinstance(device, bool):
        raise TypeError(f"device must be a str, int or torch.device, got {device!r}")
    d = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {d}")
    return d


def ring_sizes(device: torch.device, ring: Optional[int], slot: Optional[int]) -> Tuple[int, int]:
    """The staging ring's (bytes, slot bytes): as given, else 512 MiB in 16 MiB slots for a
    CUDA device (page-locked; weights kept pace with the pinned-CPU load only with larger
    slots) and 256 MiB in 8 MiB slots otherwise (casts on the host), as DCP loads use."""
    cuda = device.type == "cuda"
    big_slots = cuda and (ring is None or ring >= SAFETENSORS_SLOT_BYTES)  # a smaller ring given: 8 MiB, as before
    return (
        ring if ring is not None else (SAFETENSORS_RING_BYTES if cuda else DEFAULT_RING_BYTES),
        slot if slot is not None else (SAFETENSORS_SLOT_BYTES if big_slots else DEFAULT_SLOT_BYTES),
    )


class safe_open:
    """Open safetensors weights on S3 lazily, as ``safetensors.safe_open`` opens a file.

    Opening reads every header (validated before anything is allocated); tensors are read
    when asked for, and only they. Works as a context manager and without one.

    Args:
        uri: ``s3://bucket/key.safetensors``; an index ``s3://bucket/dir/model.safetensors.index.json``
            (its shards are read concurrently); or a prefix ``s3://bucket/dir/`` holding one
            index or ``*.safetensors`` files.
        framework: ``"pt"`` (the only one; ``"torch"`` and ``"pytorch"`` are accepted too).
        device: where tensors go: ``"cpu"`` (ranged GETs straight into tensor memory),
            ``"cuda"``, ``"cuda:N"`` or an int (through the page-locked staging ring; ready on
            the current stream when a call returns).
        dtype: cast floating-point tensors to this dtype (others keep theirs); on CUDA the
            cast happens on the device.
        pin_memory: CPU tensors in page-locked memory (needs CUDA).
        client: an :class:`~s3torch.S3Client` to read through (then leave region, endpoint
            and s3client_config unset).
        region: for a client made here: default ``$AWS_REGION``, ``$AWS_DEFAULT_REGION``, the
            profile's ``region`` in ``~/.aws/config``, else us-east-1.
        endpoint: for a client made here: default as for :class:`~s3torch.S3Client`.
        s3client_config: for a client made here: an :class:`~s3torch.S3ClientConfig`.
        staging_bytes: size of the staging ring (CUDA destinations, casts), as for
            :class:`~s3torch.dcp.S3StorageReader` (default 512 MiB for a CUDA device, else 256 MiB).
        staging_slot_bytes: the ring's slot size (default 16 MiB for a CUDA device, else 8 MiB).
        verify_checksums: HEAD each file for the checksum S3 stores with it, and check every
            call that reads a whole file against it (default True; see docs/safetensors.md).
            Calls that read part of a file (one tensor, a slice) cannot be checked.

    Raises:
        HeaderError: a header or index that is malformed or lies.
        TruncatedFileError: an object shorter than its header says.
        MissingShardError: the object, or a shard the index names, does not exist.
        ChecksumMismatchError: (from a load) the bytes read differ from the stored checksum.

    After each call that reads, ``last_load_stats`` counts what it did and
    ``last_load_checksums`` says for each file read whether its checksum was checked, or why not.
    """

    def __init__(
        self,
        uri: Union[str, "os.PathLike[str]"],
        framework: str = "pt",
        device: Device = "cpu",
        *,
        dtype: Optional[torch.dtype] = None,
        pin_memory: bool = False,
        client: Optional[S3Client] = None,
        region: Optional[str] = None,
        endpoint: Optional[str] = None,
        s3client_config: Optional[S3ClientConfig] = None,
        staging_bytes: Optional[int] = None,
        staging_slot_bytes: Optional[int] = None,
        verify_checksums: bool = True,
    ) -> None:
        if framework not in ("pt", "torch", "pytorch"):
            raise ValueError(f"framework {framework!r} is not supported: s3torch.safetensors loads torch tensors (pt)")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
        self.uri = s3_path(uri)
        self._bucket, key = parse_s3_uri(self.uri)
        self._device = device_of(device)
        self._dtype, self._pin = dtype, bool(pin_memory)
        self._ring = ring_sizes(self._device, staging_bytes, staging_slot_bytes)
        check_ring_size(*self._ring)
        self._client = client_of(client, region, endpoint, s3client_config)
        self._force_staging = False  # tests: CPU destinations through the ring, as CUDA's go
        self.last_load_stats: Dict[str, int] = {}
        self.last_load_checksums: Dict[str, str] = {}
        self._source: Source = open_source(
            self._client._get_native(), self.uri, self._bucket, key, verify=bool(verify_checksums)
        )

    def __enter__(self) -> "safe_open":
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        return None

    def keys(self) -> List[str]:
        """The tensor names, sorted."""
        return sorted(self._source.tensors)

    def offset_keys(self) -> List[str]:
        """The tensor names in the order their bytes lie (shard by shard)."""
        return list(self._source.tensors)

    def metadata(self) -> Optional[Dict[str, Any]]:
        """The file's ``__metadata__`` (str -> str), None when it has none; for an index, the
        index's ``metadata``."""
        return self._source.metadata

    def get_tensor(self, name: str) -> torch.Tensor:
        """Read one tensor (only its bytes)."""
        return self._load([name])[name]

    def get_tensors(self) -> Dict[str, torch.Tensor]:
        """Read every tensor, in file order: coalesced GETs, every shard concurrently."""
        return self._load(self.offset_keys())

    def get_slice(self, name: str) -> "TensorSlice":
        """A lazy slice: ``get_shape()``, ``get_dtype()``, and ``[...]`` to read part of it."""
        f, info = self._entry(name)
        return TensorSlice(self, f, info)

    # --- inside ---------------------------------------------------------------------------
    def _entry(self, name: str) -> Tuple[ShardFile, TensorInfo]:
        try:
            return self._source.tensors[name]
        except KeyError:
            raise KeyError(f"{self.uri} has no tensor {name!r}") from None

    def _loader(self, device: torch.device, dtype: Optional[torch.dtype], pin: bool) -> Loader:
        return Loader(
            self._client._get_native(), self._bucket, device, dtype, pin, *self._ring, force_staging=self._force_staging
        )

    def _load(self, names: Iterable[str]) -> Dict[str, torch.Tensor]:
        wanted = [self._entry(n) for n in names]
        loader = self._loader(self._device, self._dtype, self._pin)
        try:
            return loader.load(wanted)
        finally:
            self.last_load_stats, self.last_load_checksums = loader.stats, loader.checksums


class TensorSlice:
    """Part of one tensor, read on indexing (as ``safe_open(...).get_slice(name)`` returns in
    the safetensors package). Indexing takes ints, slices with positive steps, and ``...``;
    the rows of the first dimension the index covers are read, the rest is cut on the host."""

    def __init__(self, owner: safe_open, file: ShardFile, info: TensorInfo) -> None:
        self._owner, self._file, self._info = owner, file, info

    def get_shape(self) -> List[int]:
        """The tensor's shape, as the header writes it."""
        return list(self._info.shape)

    def get_dtype(self) -> str:
        """The tensor's dtype, as the header writes it ("F32", "BF16", ...)."""
        return self._info.dtype.name

    def __getitem__(self, index: Any) -> torch.Tensor:
        info, where = self._info, f"{self._file.where} tensor {self._info.name!r}"
        shape = info.torch_shape(where)
        info.torch_dtype(where)
        idx = index if isinstance(index, tuple) else (index,)
        lo, hi = 0, shape[0] if shape else 0
        # Only the rows the index covers, where it starts with an int or a slice (F4 packs its
        # last dimension: read whole).
        if shape and idx and info.dtype.name != PACKED and not any(i is Ellipsis or i is None for i in idx):
            first, n0 = idx[0], shape[0]
            if isinstance(first, int) and not isinstance(first, bool):
                i = first + n0 if first < 0 else first
                if not 0 <= i < n0:
                    raise IndexError(f"index {first} is out of bounds for dimension 0 with size {n0}")
                lo, hi, idx = i, i + 1, (0, *idx[1:])
            elif isinstance(first, slice):
                start, stop, step = first.indices(n0)
                if step <= 0:
                    raise ValueError(f"{where}: slice steps must be positive, got {step}")
                count = len(range(start, stop, step))
                lo, hi = (start, start + (count - 1) * step + 1) if count else (0, 0)
                idx = (slice(0, hi - lo, step), *idx[1:])
        rows = self._read_rows(lo, hi) if shape else self._read_rows(0, 0)
        out = rows[idx]
        if out.untyped_storage().nbytes() != out.numel() * out.element_size():
            out = out.clone(memory_format=torch.contiguous_format)  # not a view of more rows than asked
        o = self._owner
        dtype = o._dtype if o._dtype is not None and out.is_floating_point() else None
        if o._device.type != "cpu" or dtype is not None:
            out = out.to(device=o._device, dtype=dtype or out.dtype)
        if o._pin and o._device.type == "cpu":
            out = out.pin_memory()
        return out

    def _read_rows(self, lo: int, hi: int) -> torch.Tensor:
        """Rows [lo, hi) of the first dimension (the whole tensor when it has none) on the host."""
        info = self._info
        if info.shape:
            info = info.rows(lo, hi)
            assert info.nbytes == math.prod(info.shape) * info.dtype.bits // 8
        loader = self._owner._loader(torch.device("cpu"), None, False)
        try:
            return loader.load([(self._file, info)])[info.name]
        finally:
            self._owner.last_load_stats, self._owner.last_load_checksums = loader.stats, loader.checksums
