"""The pieces a distributed Hugging Face save wrote (``sharded/``, each file saying where its
pieces lie) put together into full tensors, on S3: torch's ``consolidate_safetensors_files``,
which reads and writes local files.

The pieces are found as :class:`~.s3_hf_storage_reader.S3HuggingFaceStorageReader` finds them
(every header at once, validated). Each output file is streamed: its header from the full
shapes and dtypes of the checkpoint's metadata, then each tensor, assembled in host memory
from its pieces (ranged GETs straight into the tensor where a piece is whole rows, the others
copied in; ``safetensors/_into.py``) and uploaded before the next is read: the host holds one
full tensor at a time per file being written (``thread_count_consolidation`` files at once).
Then ``model.safetensors.index.json``.
"""

from __future__ import annotations

import functools
import json
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, TensorStorageMetadata

from .._batch_writes import BatchWrite
from .._config import S3ClientConfig
from .._progress import Progress
from .s3_hf_storage_reader import DEFAULT_BATCH_BYTES, S3HuggingFaceStorageReader


def consolidate(
    region: Optional[str],
    config: Optional[S3ClientConfig],
    endpoint: Optional[str],
    bucket: str,
    pieces_folder: str,
    out_folder: str,
    metadata: Metadata,
    mapping: Dict[str, int],
    progress: Progress,
    exclusive: bool = False,
    threads: int = 1,
) -> None:
    """Write the full tensors of ``metadata`` into the files ``mapping`` numbers under
    ``out_folder``, from the pieces under ``pieces_folder``, ``threads`` files at a time (each
    holding one full tensor in host memory at a time); then the index. A failure deletes the
    files written, and no index is written."""
    from .s3_hf_storage_writer import INDEX_NAME, file_name

    reader = S3HuggingFaceStorageReader(
        region, f"s3://{bucket}/{pieces_folder}", s3client_config=config, endpoint=endpoint, verify_checksums=False
    )
    saved = reader._read_metadata()  # the pieces as written (the planner's metadata says the same)
    native = reader.client._get_native()
    largest = max(mapping.values())
    files: Dict[str, List[Tuple[str, TensorStorageMetadata]]] = {}
    for fqn, md in metadata.state_dict_metadata.items():
        if not isinstance(md, TensorStorageMetadata):
            raise ValueError(f"{fqn!r} is not a tensor: a Hugging Face checkpoint (safetensors) holds tensors only")
        if fqn not in mapping:
            raise ValueError(f"tensor {fqn!r} has no file in fqn_to_index_mapping")
        if fqn not in saved.state_dict_metadata:
            raise ValueError(f"tensor {fqn!r}: no piece of it under s3://{bucket}/{pieces_folder}")
        files.setdefault(file_name(mapping[fqn], largest), []).append((fqn, md))

    weight_map = {fqn: name for name, tensors in sorted(files.items()) for fqn, _ in tensors}
    total = sum(_nbytes(md) for tensors in files.values() for _, md in tensors)
    progress.set_total(total)
    # A failure deletes the files written, and writes no index (BatchWrite).
    with progress, BatchWrite(reader.client, bucket, "s3torch-hf-cons") as batch:
        batch.run(
            [
                (
                    out_folder + name,
                    functools.partial(
                        _write_file, reader, saved, native, bucket, out_folder + name, files[name], progress, exclusive
                    ),
                )
                for name in sorted(files)
            ],
            threads,
        )
        body = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2).encode()
        reader.client.put(bucket, out_folder + INDEX_NAME, body, exclusive=exclusive)


def _write_file(
    reader: S3HuggingFaceStorageReader,
    saved: Metadata,
    native: Any,
    bucket: str,
    key: str,
    tensors: List[Tuple[str, TensorStorageMetadata]],
    progress: Progress,
    exclusive: bool,
) -> None:
    """One output file: its header, then each tensor put together from its pieces and written."""
    from ..safetensors._dtypes import BY_TORCH
    from ..safetensors._header import build_header, layout
    from ..safetensors._into import Loaders, Placement, read_into
    from ..safetensors._save import tensor_bytes

    entries = []
    by_name = dict(tensors)
    for fqn, md in tensors:
        dtype = BY_TORCH.get(md.properties.dtype)
        if dtype is None:
            raise ValueError(f"tensor {fqn!r}: safetensors has no dtype for {md.properties.dtype}")
        entries.append((fqn, dtype, tuple(md.size)))
    placed = layout(entries)
    header = build_header(placed, {"format": "pt"})
    size = len(header) + (placed[-1][4] if placed else 0)  # the last tensor's end
    with reader.client.put_object(bucket, key, exclusive=exclusive, size_hint=size) as out:
        out.write(header)
        for fqn, _dtype, shape, _begin, _end in placed:
            full = torch.empty(shape, dtype=by_name[fqn].properties.dtype)
            pieces = saved.state_dict_metadata[fqn]
            assert isinstance(pieces, TensorStorageMetadata)
            placements = []
            for chunk in pieces.chunks:
                info = reader.storage_data[MetadataIndex(fqn=fqn, offset=chunk.offsets)]
                f, t = reader._pieces[(info.key, info.name)]
                cut = tuple(slice(o, o + n) for o, n in zip(chunk.offsets, chunk.sizes))
                placements.append(Placement(f, t, full[cut] if cut else full))
            covered = sum(math.prod(c.sizes) for c in pieces.chunks)
            if covered != full.numel():
                raise ValueError(f"tensor {fqn!r}: its pieces cover {covered} of its {full.numel()} elements")
            read_into(Loaders(native, bucket), placements, DEFAULT_BATCH_BYTES)
            data = tensor_bytes(full)
            if data is not None:
                out.write(data)
                progress.add(data.numel())


def _nbytes(md: TensorStorageMetadata) -> int:
    return math.prod(md.size) * md.properties.dtype.itemsize
