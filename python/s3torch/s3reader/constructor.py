"""S3ReaderConstructor: named constructors for the reader strategies."""

from __future__ import annotations

from typing import Dict, List, Optional, Union

from .. import _crt
from .._checks import is_int, is_number
from .dcp_optimized import DEFAULT_MAX_GAP_SIZE, FALLBACK_GUIDANCE, DCPOptimizedS3Reader, ItemRange
from .protocol import DCPS3ReaderConstructorProtocol, S3ReaderConstructorProtocol
from .ranged import RangedS3Reader
from .s3reader import GetObjectInfo, S3Reader
from .sequential import SequentialS3Reader

__all__ = [
    "S3ReaderConstructor",
    "DCPOptimizedConstructor",
    "S3ReaderConstructorProtocol",
    "DCPS3ReaderConstructorProtocol",
    "FALLBACK_GUIDANCE",
]


class ReaderConstructor:
    """Makes one reader per object. ``kind`` is "sequential", "range_based" or "dcp_optimized"."""

    kind = "sequential"

    def __call__(
        self,
        bucket: str,
        key: str,
        native: "_crt.NativeClient",
        get_object_info: GetObjectInfo,
        object_info: Optional["_crt.ObjectInfo"] = None,
    ) -> S3Reader:
        return SequentialS3Reader(bucket, key, get_object_info, native, object_info)

    def __repr__(self) -> str:
        return f"S3ReaderConstructor.{self.kind}()"


class RangeBasedConstructor(ReaderConstructor):
    """Makes RangedS3Readers: ranged GETs on demand, through a buffer of ``buffer_size``."""

    kind = "range_based"

    def __init__(self, buffer_size: Optional[int] = None) -> None:
        if buffer_size is not None and (not is_int(buffer_size) or buffer_size < 0):
            raise ValueError(f"buffer_size must be None or a non-negative int, got {buffer_size!r}")
        self.buffer_size = buffer_size

    def __call__(
        self,
        bucket: str,
        key: str,
        native: "_crt.NativeClient",
        get_object_info: GetObjectInfo,
        object_info: Optional["_crt.ObjectInfo"] = None,
    ) -> S3Reader:
        return RangedS3Reader(bucket, key, get_object_info, native, self.buffer_size, object_info)


class DCPOptimizedConstructor(ReaderConstructor):
    """Readers over the item ranges a DCP load plan needs (set by S3StorageReader)."""

    kind = "dcp_optimized"

    def __init__(self, max_gap_size: Union[int, float] = DEFAULT_MAX_GAP_SIZE) -> None:
        if not is_number(max_gap_size) or max_gap_size < 0:
            raise ValueError(f"max_gap_size must be a non-negative number, got {max_gap_size!r}")
        self.max_gap_size = max_gap_size
        self._ranges: Dict[str, List[ItemRange]] = {}

    def set_item_ranges_by_file(self, ranges: Dict[str, List[ItemRange]]) -> None:
        """Sorted item ranges per object key (keys are the objects' S3 keys)."""
        self._ranges = {k: sorted(v, key=lambda r: r.start) for k, v in ranges.items()}

    def __call__(
        self,
        bucket: str,
        key: str,
        native: "_crt.NativeClient",
        get_object_info: GetObjectInfo,
        object_info: Optional["_crt.ObjectInfo"] = None,
    ) -> S3Reader:
        ranges = self._ranges.get(key)
        if ranges is None:
            # Not planned (e.g. the .metadata file): the generic reader serves it.
            return SequentialS3Reader(bucket, key, get_object_info, native, object_info)
        return DCPOptimizedS3Reader(bucket, key, get_object_info, native, ranges, self.max_gap_size)


class S3ReaderConstructor:
    """Factory of reader strategies, passed as ``reader_constructor=`` to clients, datasets,
    checkpoints and the DCP storage reader."""

    @staticmethod
    def sequential() -> ReaderConstructor:
        """Fetch the whole object once (parallel ranged GETs into one buffer)."""
        return ReaderConstructor()

    @staticmethod
    def range_based(buffer_size: Optional[int] = None) -> ReaderConstructor:
        """Byte-range GETs on demand; reads smaller than ``buffer_size`` (default 8 MiB) are
        buffered, larger ones go straight into the caller's memory. 0 disables buffering."""
        return RangeBasedConstructor(buffer_size)

    @staticmethod
    def dcp_optimized(max_gap_size: Union[int, float] = DEFAULT_MAX_GAP_SIZE) -> ReaderConstructor:
        """For DCP loads: planned item ranges, coalesced within ``max_gap_size``, zero-copy views."""
        return DCPOptimizedConstructor(max_gap_size)

    @staticmethod
    def default() -> ReaderConstructor:
        """The generic reader (sequential)."""
        return ReaderConstructor()

    @staticmethod
    def get_reader_type_string(constructor: Optional[ReaderConstructor]) -> str:
        """The reader kind a constructor makes ('sequential' for None), as s3torchconnector names it."""
        return "sequential" if constructor is None else constructor.kind
