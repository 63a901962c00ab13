"""save_file: a safetensors file streamed into a multipart upload.

The header is computed from the tensors' dtypes and shapes alone, then written, then each
tensor's bytes: a host tensor's straight from its memory; a CUDA tensor's through a pinned
staging ring (``dcp._staged_save``: slot-sized device-to-host copies on a side stream, each
handed to the upload as it lands), so a save from GPU memory holds the ring and the upload
window whatever the tensors' sizes; a tensor on another device is copied to the host one at
a time. The file is never built in memory. The bytes are exactly those of
``safetensors.torch.save`` for the same tensors and metadata (the crate writes metadata in
its hash map's order, so with two or more metadata keys only the order of those keys can
differ).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

from ..dcp._staged_save import DEFAULT_SAVE_RING_BYTES, DEFAULT_SAVE_SLOT_BYTES, StagedSave, plain_strided
from ..dcp._staging import borrow_ring
from ._dtypes import BY_TORCH, PACKED, Dtype
from ._header import METADATA, build_header, layout

if TYPE_CHECKING:
    from .._client import S3Client


def _format_dtype(name: str, t: torch.Tensor) -> Tuple[Dtype, Tuple[int, ...]]:
    dtype = BY_TORCH.get(t.dtype)
    if dtype is None:
        raise ValueError(f"tensor {name!r}: safetensors has no dtype for {t.dtype}")
    shape = tuple(t.shape)
    if dtype.name == PACKED:  # two 4-bit elements a byte: the format counts elements
        if not shape:
            raise ValueError(f"tensor {name!r}: a 0-dim {t.dtype} has no safetensors shape")
        shape = (*shape[:-1], shape[-1] * 2)
    return dtype, shape


def check_tensors(tensors: Any, metadata: Any) -> None:
    """The checks ``safetensors.torch.save`` makes, with its error types."""
    if not isinstance(tensors, dict):
        raise ValueError(f"Expected a dict of [str, torch.Tensor] but received {type(tensors)}")
    if metadata is not None and (
        not isinstance(metadata, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())
    ):
        raise ValueError("metadata must be a dict of str -> str")
    spans: Dict[Tuple[str, int], List[Tuple[int, int, str]]] = {}
    for name, t in tensors.items():
        if not isinstance(name, str) or name == METADATA:
            raise ValueError(f"tensor names must be str other than {METADATA!r}, got {name!r}")
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"Key `{name}` is invalid, expected torch.Tensor but received {type(t)}")
        if t.layout != torch.strided:
            raise ValueError(f"tensor {name!r} is sparse: save it dense (`.to_dense()`)")
        if not t.is_contiguous():
            raise ValueError(f"tensor {name!r} is not contiguous: call `.contiguous()` on it before saving")
        n = t.numel() * t.element_size()
        if n:
            start = t.data_ptr()
            spans.setdefault((str(t.device), t.untyped_storage().data_ptr()), []).append((start, start + n, name))
    shared = []
    for group in spans.values():
        group.sort()
        for (_, end, a), (start, _, b) in zip(group, group[1:]):
            if start < end:
                shared.append((a, b))
    if shared:
        raise RuntimeError(
            f"Some tensors share memory: {shared}; save each once (or clone them), as safetensors requires"
        )


def plan(tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]]) -> Tuple[bytes, List[str]]:
    """The header bytes and the tensor names in the order their bytes follow it."""
    check_tensors(tensors, metadata)
    entries = []
    for name, t in tensors.items():
        dtype, shape = _format_dtype(name, t)
        entries.append((name, dtype, shape))
    placed = layout(entries)
    return build_header(placed, metadata), [p[0] for p in placed]


def tensor_bytes(t: torch.Tensor) -> Optional[torch.Tensor]:
    """The tensor's bytes as a flat uint8 host tensor (no copy for a CPU tensor), None if empty."""
    if t.numel() == 0:
        return None
    return _host_bytes(t.detach())


def _host_bytes(t: torch.Tensor) -> torch.Tensor:
    if t.device.type != "cpu":
        t = t.cpu()
    return t.reshape(-1).view(torch.uint8)


# Tests: host tensors through the (unpinned) ring as CUDA tensors go, so that CI, without a
# GPU, runs the same pipeline.
FORCE_STAGING = False


def _through_ring(t: torch.Tensor) -> bool:
    return (t.device.type == "cuda" or (FORCE_STAGING and t.device.type == "cpu")) and plain_strided(t)


def write(
    s3: "S3Client",
    bucket: str,
    key: str,
    tensors: Dict[str, torch.Tensor],
    planned: Tuple[bytes, List[str]],
    exclusive: bool = False,
    on_bytes: Optional[Callable[[int], None]] = None,
    streams: Optional[Dict[torch.device, Any]] = None,
) -> None:
    """Stream a file :func:`plan` planned into one upload (``exclusive``: create-only); the
    object appears when it completes, and a failed upload is aborted. ``on_bytes`` is told
    the size of each piece handed to the upload. ``streams``: the CUDA streams the save's
    caller was on (``caller_streams()``, taken on the caller's thread), which the copies of
    CUDA tensors wait for."""
    header, order = planned
    # Exits in reverse: the ring gets every slot back (StagedSave), goes back to the pool,
    # then the upload completes, or is aborted after an error.
    with contextlib.ExitStack() as stack:
        size = file_size(planned, tensors)  # parts sized for it: past 78 GiB, larger than 8 MiB
        writer = stack.enter_context(s3.put_object(bucket, key, exclusive=exclusive, size_hint=size))
        writer.write(header)
        if on_bytes is not None:
            on_bytes(len(header))
        staged: Optional[StagedSave] = None
        for i, name in enumerate(order):
            t = tensors[name].detach()
            if t.numel() == 0:
                continue
            if _through_ring(t):
                if staged is None:  # the file's first staged tensor: borrow a ring
                    ring = stack.enter_context(
                        borrow_ring(DEFAULT_SAVE_RING_BYTES, DEFAULT_SAVE_SLOT_BYTES, t.device.type == "cuda")
                    )
                    ring.prepare(sum(_nbytes(tensors[n]) for n in order[i:] if _through_ring(tensors[n])))
                    staged = stack.enter_context(StagedSave(ring, streams))
                pieces: Iterator[torch.Tensor] = staged.chunks(
                    t.reshape(-1).view(torch.uint8), f"s3://{bucket}/{key} tensor {name!r}"
                )
            else:
                pieces = iter([_host_bytes(t)])
            for data in pieces:
                writer.write(data)
                if on_bytes is not None:
                    on_bytes(data.numel())


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def file_size(planned: Tuple[bytes, List[str]], tensors: Dict[str, torch.Tensor]) -> int:
    """The bytes of the file :func:`plan` planned."""
    return len(planned[0]) + sum(_nbytes(tensors[n]) for n in planned[1])
