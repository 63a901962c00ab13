"""A state dict saved as a folder of safetensors shards and their index, replacing what an
earlier save with the same file-name pattern left there.

Order of writes, so that the folder loads as the earlier save or the new one, never a mix:

1. Every file's header is planned (every tensor checked) before anything is written.
2. The folder is listed once: the names this pattern writes (any shard count), which the save
   replaces. With ``overwrite=False`` any such name is a ``FileExistsError``, and every write
   is create-only (``If-None-Match: *``).
3. The shards are uploaded, ``FILE_THREADS`` at a time; then the index. The earlier save's
   index still names its own shards until the new index replaces it in one PUT.
   A sharded save whose shard names are the earlier save's (the same shard count) would
   replace them one by one, so the earlier files (index first) are deleted before, as
   huggingface_hub deletes them: a failure then leaves neither, not a mix.
4. Then (``is_main_process`` only) the earlier save's other files are deleted, its index first.

A failure before the index is written deletes the shards this save wrote, so the folder holds
the earlier save (or, in the case above, nothing of either), and raises.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Optional, Tuple

import torch

from .._batch_writes import BatchWrite, delete_keys
from .._client import S3Client
from .._progress import Progress
from ..dcp._staged_save import caller_streams
from ._save import file_size, plan, write
from ._shards import Split, index_name, written_by
from ._source import _list

FILE_THREADS = 4  # files uploaded at once (each a multipart upload, its parts concurrent)


def save_folder(
    s3: S3Client,
    bucket: str,
    folder: str,
    state: Dict[str, torch.Tensor],
    layout: Split,
    pattern: str,
    metadata: Dict[str, str],
    overwrite: bool,
    is_main_process: bool,
    progress: Progress,
) -> List[str]:
    """Write ``layout``'s files (and its index when sharded) under ``folder`` (a prefix
    ending in ``/``, or ""); the keys written."""
    per_file = {"format": "pt"} if layout.sharded else {"format": "pt", **metadata}
    shards = {folder + name: {n: state[n] for n in names} for name, names in layout.files.items()}
    planned = {key: (tensors, plan(tensors, per_file)) for key, tensors in shards.items()}
    index: Optional[Tuple[str, bytes]] = None
    if layout.sharded:
        index = (folder + index_name(pattern), layout.index_bytes(metadata))
    where = f"s3://{bucket}/{folder}"
    replaces = written_by(pattern)
    earlier = [k for k in _list(s3._get_native(), bucket, folder) if replaces.fullmatch(k[len(folder) :])]
    if earlier and not overwrite:
        raise FileExistsError(
            f"{where} holds a save already ({', '.join(k[len(folder) :] for k in earlier[:5])}); "
            "pass overwrite=True to replace it, or save to another folder"
        )
    earlier.sort(key=lambda k: not k.endswith(".index.json"))  # an index before its shards
    new = set(planned) | ({index[0]} if index else set())
    if is_main_process and layout.sharded and any(k in planned for k in earlier):
        delete_keys(s3, bucket, earlier, "an earlier save's file this save's shards replace")
        earlier = []

    streams = caller_streams()  # the pool's threads have current CUDA streams of their own
    progress.set_total(sum(file_size(p, t) for t, p in planned.values()) + (len(index[1]) if index else 0))
    # A failure before the index is written deletes the shards written (BatchWrite).
    with progress, BatchWrite(s3, bucket, "s3torch-save") as batch:
        batch.run(
            [
                (key, functools.partial(write, s3, bucket, key, tensors, p, not overwrite, progress.add, streams))
                for key, (tensors, p) in planned.items()
            ],
            FILE_THREADS,
        )
        if index is not None:
            with s3.put_object(bucket, index[0], exclusive=not overwrite) as w:
                w.write(index[1])
            progress.add(len(index[1]))
    if is_main_process:
        delete_keys(
            s3, bucket, [k for k in earlier if k not in new], "an earlier save's file, not replaced by this save"
        )
    return sorted(new)
