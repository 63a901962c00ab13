"""Types for annotating reader constructors, at s3torchconnector's paths and names.

s3torch's reader constructors are called with the native client itself rather than a stream
factory: ``constructor(bucket, key, native, get_object_info, object_info=None)``. These
protocols describe that call, so code annotated with the peer's names type-checks against
s3torch's constructors (``S3ReaderConstructor.sequential()``, ``.range_based()``,
``.dcp_optimized()``). Both are ``runtime_checkable``: ``isinstance(c, S3ReaderConstructorProtocol)``
holds for any callable, as with the peer's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Protocol, runtime_checkable

from .dcp_optimized import ItemRange
from .s3reader import GetObjectInfo, S3Reader

if TYPE_CHECKING:
    from .. import _crt

__all__ = ["GetStreamCallable", "S3ReaderConstructorProtocol", "DCPS3ReaderConstructorProtocol"]


class GetStreamCallable(Protocol):
    """``get_stream(start=None, end=None)``: a stream of the object's bytes [start, end). s3torch's
    readers fetch through the native client and never take one; the name is here for code
    annotated with s3torchconnector's types (a ``NativeClient.get_stream`` bound to a bucket and
    key fits it)."""

    def __call__(self, start: Optional[int] = None, end: Optional[int] = None) -> "_crt.GetStream": ...


@runtime_checkable
class S3ReaderConstructorProtocol(Protocol):
    """Makes the reader of one object: what ``reader_constructor=`` takes everywhere."""

    def __call__(
        self,
        bucket: str,
        key: str,
        native: "_crt.NativeClient",
        get_object_info: GetObjectInfo,
        object_info: Optional["_crt.ObjectInfo"] = None,
    ) -> S3Reader: ...


@runtime_checkable
class DCPS3ReaderConstructorProtocol(S3ReaderConstructorProtocol, Protocol):
    """A constructor that S3StorageReader tells the item ranges of its load plan
    (``S3ReaderConstructor.dcp_optimized()``): sorted ``ItemRange`` lists keyed by object key."""

    def set_item_ranges_by_file(self, ranges: Dict[str, List[ItemRange]]) -> None:
        """Sorted item ranges per object key, from the load plan."""
        ...
