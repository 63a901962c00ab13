"""Model weights in the safetensors format, straight between S3 and CPU, pinned or GPU memory.

Named after the ``safetensors`` package so code switches by its import::

    from s3torch.safetensors import load_file, safe_open, save_file

    state = load_file("s3://bucket/llama/model.safetensors.index.json", device="cuda:0")
    save_file(state, "s3://bucket/out/model.safetensors", metadata={"format": "pt"})

Headers are validated before any tensor memory is allocated; CPU tensors land by ranged GETs
straight into their storage; CUDA tensors stream through the bounded, page-locked staging
ring; files are byte-identical to the safetensors package's, both ways.
"""

from __future__ import annotations

import os
from typing import Dict, Iterable, Optional, Union

import torch

from .._client import S3Client
from .._config import S3ClientConfig
from .._uri import parse_s3_uri, s3_path
from ._errors import (
    FileChangedError,
    HeaderError,
    MissingShardError,
    SafetensorsError,
    SafetensorsReadError,
    TruncatedFileError,
    UnsupportedDtypeError,
)
from ._header import PREFIX, header_length, parse_header
from ._model import (
    IncompatibleKeys,
    load_model,
    load_torch_model,
    save_model,
    save_torch_model,
    save_torch_state_dict,
)
from ._open import Device, TensorSlice, client_of, safe_open
from ._save import plan, tensor_bytes, write
from ._verify import ChecksumMismatchError


def load_file(
    uri: Union[str, "os.PathLike[str]"],
    device: Device = "cpu",
    *,
    dtype: Optional[torch.dtype] = None,
    pin_memory: bool = False,
    keys: Optional[Iterable[str]] = None,
    client: Optional[S3Client] = None,
    region: Optional[str] = None,
    endpoint: Optional[str] = None,
    s3client_config: Optional[S3ClientConfig] = None,
    staging_bytes: Optional[int] = None,
    staging_slot_bytes: Optional[int] = None,
    verify_checksums: bool = True,
) -> Dict[str, torch.Tensor]:
    """Load safetensors weights from S3 into a dict of tensors, like
    ``safetensors.torch.load_file``.

    Args:
        uri: a file, an index (``...safetensors.index.json``: every shard concurrently) or a
            prefix ``s3://bucket/dir/`` (see :class:`safe_open`).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or an int.
        dtype: cast floating-point tensors to this dtype (on the device).
        pin_memory: CPU tensors in page-locked memory.
        keys: load only these tensors (default: all); only their bytes are read.
        client: an :class:`~s3torch.S3Client` (see :class:`safe_open`).
        region: for a client made here (see :class:`safe_open`).
        endpoint: for a client made here.
        s3client_config: for a client made here.
        staging_bytes: size of the staging ring (CUDA destinations, casts; see :class:`safe_open`).
        staging_slot_bytes: the ring's slot size.
        verify_checksums: check each file read whole against the checksum S3 stores with it
            (CRC32, CRC32C or CRC64NVME of the whole object: what s3torch's uploads and single
            PUTs write); default True. See docs/safetensors.md.

    Returns:
        The tensors by name, in the order their bytes lie.

    Raises:
        ChecksumMismatchError: the bytes read differ from the object's stored checksum.
    """
    with safe_open(
        uri,
        "pt",
        device,
        dtype=dtype,
        pin_memory=pin_memory,
        client=client,
        region=region,
        endpoint=endpoint,
        s3client_config=s3client_config,
        staging_bytes=staging_bytes,
        staging_slot_bytes=staging_slot_bytes,
        verify_checksums=verify_checksums,
    ) as f:
        return f._load(f.offset_keys() if keys is None else list(keys))


def save_file(
    tensors: Dict[str, torch.Tensor],
    uri: Union[str, "os.PathLike[str]"],
    metadata: Optional[Dict[str, str]] = None,
    *,
    client: Optional[S3Client] = None,
    region: Optional[str] = None,
    endpoint: Optional[str] = None,
    s3client_config: Optional[S3ClientConfig] = None,
) -> None:
    """Save tensors as a safetensors object, like ``safetensors.torch.save_file``: the header,
    then each tensor's bytes from its own memory, streamed into a multipart upload (the file
    is never built in memory; a CUDA tensor's bytes go through a 64 MiB pinned staging ring,
    8 MiB at a time). The object appears when complete; on an error the upload is aborted and
    nothing is written (a failed device-to-host copy raises ``s3torch.dcp.StagingError`` naming the tensor).

    The bytes are those ``safetensors.torch.save`` writes for the same tensors and metadata
    (with two or more metadata keys, the package writes them in an arbitrary order; here
    they are in the dict's order).

    Args:
        tensors: name -> contiguous dense tensor; no two may overlap in memory.
        uri: ``s3://bucket/key``.
        metadata: str -> str, stored as the header's ``__metadata__``.
        client: an :class:`~s3torch.S3Client` (see :class:`safe_open`).
        region: for a client made here (see :class:`safe_open`).
        endpoint: for a client made here.
        s3client_config: for a client made here.
    """
    planned = plan(tensors, metadata)
    bucket, key = parse_s3_uri(s3_path(uri), need_key=True)
    write(client_of(client, region, endpoint, s3client_config), bucket, key, tensors, planned)


def save(tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None) -> bytes:
    """The safetensors bytes of ``tensors`` in memory, like ``safetensors.torch.save``."""
    header, order = plan(tensors, metadata)
    parts = [header]
    for name in order:
        data = tensor_bytes(tensors[name])
        if data is not None:
            parts.append(data.numpy().tobytes())
    return b"".join(parts)


def load(data: bytes) -> Dict[str, torch.Tensor]:
    """Tensors from safetensors bytes in memory, like ``safetensors.torch.load`` (validated
    the same way as files on S3; each tensor gets its own copy of its bytes)."""
    where = "<bytes>"
    view = memoryview(data).cast("B")
    n = header_length(bytes(view[:PREFIX]), where, len(view))
    header = parse_header(bytes(view[PREFIX : PREFIX + n]), where, len(view))
    out: Dict[str, torch.Tensor] = {}
    for name, t in header.tensors.items():
        dt, shape = t.torch_dtype(where), t.torch_shape(where)
        tensor = torch.empty(shape, dtype=dt)
        if tensor.numel():
            a = header.data_start + t.begin
            tensor.reshape(-1).view(torch.uint8).numpy()[:] = view[a : a + t.nbytes]
        out[name] = tensor
    return out


__all__ = [
    "load_file",
    "save_file",
    "load",
    "save",
    "load_model",
    "save_model",
    "save_torch_state_dict",
    "save_torch_model",
    "load_torch_model",
    "IncompatibleKeys",
    "safe_open",
    "TensorSlice",
    "SafetensorsError",
    "HeaderError",
    "TruncatedFileError",
    "UnsupportedDtypeError",
    "MissingShardError",
    "SafetensorsReadError",
    "FileChangedError",
    "ChecksumMismatchError",
]
