"""Reader strategies over S3 objects (see S3ReaderConstructor)."""

from .constructor import DCPOptimizedConstructor, S3ReaderConstructor
from .dcp_optimized import DCPOptimizedS3Reader, ItemRange, RangeGroup
from .protocol import DCPS3ReaderConstructorProtocol, GetStreamCallable, S3ReaderConstructorProtocol
from .ranged import RangedS3Reader
from .s3reader import S3Reader
from .sequential import SequentialS3Reader

__all__ = [
    "S3Reader",
    "S3ReaderConstructor",
    "SequentialS3Reader",
    "RangedS3Reader",
    "DCPOptimizedS3Reader",
    "ItemRange",
    "RangeGroup",
    "DCPOptimizedConstructor",
    "S3ReaderConstructorProtocol",
    "DCPS3ReaderConstructorProtocol",
    "GetStreamCallable",
]
