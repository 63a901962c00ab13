"""``s3torch verify``: read every tensor record of a DCP checkpoint on S3 and check its CRC32,
and every data file's save mark (dcp/_save_mark.py).

The reading is the DCP loader's (dcp/_parallel_load.py): the same probes, ranged GETs in
parallel and CRC32s on worker threads, into fresh CPU tensors shaped from the metadata
instead of a model's. Mismatches are collected instead of raised, so every failing item is
named; any other corruption (a truncated file, a record that does not parse) is pinned to
its item by reading that group's items again one at a time.
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Dict, List, Tuple

from .._progress import human
from .._text import shown as text
from . import _weights
from ._checkpoint import Record, add_trust_argument, open_s3
from ._common import CORRUPT, OK, CLIError, add_connection_arguments, make_client, progress_for

HELP = "check every tensor of a DCP checkpoint on S3 against its CRC32, or safetensors weights against S3's checksums"
DESCRIPTION = """Read every tensor record of the DCP checkpoint at s3://bucket/prefix and check
the tensor's bytes against the CRC32 its record carries, many reads in parallel, without a
model, and that each data file s3torch wrote ends with the mark of the save its .metadata
describes (a file another save wrote is named, and its items fail). Exits 0 with a summary
when all match; exits 1 naming every failing file and item (fqn, file, offset in the file)
when any does not, or is missing or truncated, or when the .metadata's chunks of a tensor do
not hold each of its elements once (a load would leave the rest as it was); exits 3 when
there is no checkpoint there. Memory: at most --group-bytes of tensors at a time (one
larger tensor is read alone).

Model weights in the safetensors format (s3://bucket/model.safetensors, an index and its
shards, or a folder of either with no DCP .metadata): every header is validated (a header
that lies exits 1), then every file is read whole, streamed (64 MiB ahead), and checked
against the checksum S3 stores with it (full-object or composite CRC32/CRC32C/CRC64NVME,
held to the version its header came from). A file with no stored checksum is named
UNCHECKED and does not fail the run; one that does not match, or changes or ends early
while read, is named CORRUPT and exits 1. A folder of a distributed save's pieces (no index)
exits 1 before any read when the pieces do not tile every tensor (a rank's file missing, or
pieces of two saves), naming the tensor, what is missing and the files."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this verb\'s arguments and options to ``p``."""
    p.add_argument("location", metavar="s3://BUCKET/PREFIX", help="where the checkpoint (or the weights) is")
    p.add_argument(
        "--group-bytes",
        type=int,
        default=1 << 30,
        metavar="N",
        help="read the tensors in groups of at most N bytes, each group fully in parallel (default 1 GiB)",
    )
    add_trust_argument(p)
    add_connection_arguments(p)


def _loader_class() -> Any:
    from ..dcp._parallel_load import ParallelLoader

    class Verifier(ParallelLoader):
        """The loader, recording CRC mismatches instead of raising the first."""

        mismatches: List[Tuple[Any, int, int]]

        def _check_crc_value(self, it: Any, got: int) -> None:
            assert it.layout is not None
            if got != it.layout.crc32:
                self.mismatches.append((it, it.layout.crc32, got))

    return Verifier


class _Planner:
    """What the loader asks of a LoadPlanner: a fresh tensor for each item; nothing kept."""

    def __init__(self, shapes: dict) -> None:
        self.shapes = shapes  # MetadataIndex -> (shape, dtype)

    def resolve_tensor(self, req: Any) -> Any:
        import torch

        shape, dtype = self.shapes[req.storage_index]
        return torch.empty(shape, dtype=dtype)

    def commit_tensor(self, req: Any, tensor: Any) -> None:
        pass

    def load_bytes(self, req: Any, value: Any) -> None:
        pass


def _check_marks(Verifier: Any, client: Any, ckpt: Any, planner: Any) -> Dict[str, str]:
    """The data files whose save mark is not the one the metadata names (or is unreadable),
    each with why: all marks in one batch, then one file at a time only if that failed."""
    from ..dcp import _save_mark
    from ..dcp._errors import CheckpointCorruptError

    try:
        marks = _save_mark.expected(ckpt.metadata.storage_data)
    except CheckpointCorruptError as e:
        return {e.file: str(e).split(": ", 1)[-1]}  # type: ignore[attr-defined]

    def check(files: List[str]) -> None:
        loader = Verifier(client._get_native(), ckpt.bucket, True, marks={ckpt.key(f): marks[f] for f in files})
        loader.load([], planner)

    try:
        check(list(marks))
        return {}
    except CheckpointCorruptError:
        pass
    bad = {}
    for f in marks:
        try:
            check([f])
        except CheckpointCorruptError as e:
            bad[f] = str(e).split(": ", 1)[-1]  # without the location, which the line names
    return bad


def _untiled(md: Any) -> List[Tuple[str, str]]:
    """(fqn, why) for each tensor whose chunks in the metadata do not hold each of its
    elements exactly once (``_tiling``): torch's planner loads what the chunks cover and
    leaves the rest of the destination as it was, with no error."""
    from .._tiling import find, shape_text

    out = []
    for fqn, tmd in md.state_dict_metadata.items():
        if getattr(tmd, "chunks", None) is None:  # a byte item
            continue
        size = list(tmd.size)
        boxes = [(list(c.offsets), list(c.sizes)) for c in tmd.chunks]
        if len(boxes) == 1 and boxes[0][1] == size and not any(boxes[0][0]):
            continue  # whole
        u = find(size, boxes)
        if u is not None:
            tail = " (a load would leave them as they were in its destination)" if u.kind == "missing" else ""
            chunks = f"{len(boxes)} chunk{'s' if len(boxes) > 1 else ''}"
            out.append(
                (fqn, f"tensor of {shape_text(size)} in {chunks} of the .metadata: {u.words(boxes, 'chunk')}{tail}")
            )
    return out


def _groups(items: List[Tuple[Any, str, int, int]], limit: int) -> List[List[Tuple[Any, str, int, int]]]:
    out: List[List[Tuple[Any, str, int, int]]] = []
    size = 0
    for item in items:
        if not out or size + item[3] > limit:
            out.append([])
            size = 0
        out[-1].append(item)
        size += item[3]
    return out


def run(args: argparse.Namespace) -> int:
    """Run the verb with the parsed ``args``; returns the exit code."""
    import torch
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import LoadItemType, ReadItem

    from ..dcp._errors import CheckpointCorruptError

    client = make_client(args)
    weights = _weights.open_weights(client, args.location)
    if weights is not None:
        return _weights.verify(client, weights)
    ckpt = open_s3(client, args.location, args.trust_checkpoint)
    md = ckpt.metadata
    transformed = [i.fqn for i, info in md.storage_data.items() if getattr(info, "transform_descriptors", None)]
    if transformed:
        raise CLIError(f"{ckpt.where}: items stored with stream transforms cannot be verified: {transformed[:5]}")
    shapes = {}
    items: List[Tuple[Any, str, int, int]] = []
    where_of = {}
    for r in ckpt.records():
        idx = MetadataIndex(r.fqn, r.chunk_offset or None)
        where_of[idx] = r
        if r.dtype is None:
            empty = torch.Size([])
            req = ReadItem(LoadItemType.BYTE_IO, idx, empty, idx, empty, empty)
        else:
            shapes[idx] = (r.shape, md.state_dict_metadata[r.fqn].properties.dtype)
            zeros = torch.Size([0] * len(r.shape or ()))
            req = ReadItem(LoadItemType.TENSOR, idx, zeros, idx, zeros, torch.Size(r.shape or ()))
        items.append((req, ckpt.key(r.file), r.offset, r.length))

    untiled = _untiled(md)
    for fqn, why in untiled:
        print(f"CORRUPT  {text(fqn)}: {text(why)}")
    Verifier = _loader_class()
    planner = _Planner(shapes)
    failures: List[Tuple[Record, str]] = []
    bad_files = _check_marks(Verifier, client, ckpt, planner)
    for file, why in sorted(bad_files.items()):
        print(f"CORRUPT  file {text(ckpt.location(file))}: {text(why)}")  # the checkpoint's names: shown
    failed_in_files = sum(1 for i in items if where_of[i[0].storage_index].file in bad_files)
    items_read = [i for i in items if where_of[i[0].storage_index].file not in bad_files]
    stats = {"direct": 0, "small": 0, "fallback": 0, "staged": 0, "shared": 0}
    total = sum(i[3] for i in items)
    t0 = time.perf_counter()

    def load(group: List[Tuple[Any, str, int, int]], progress: Any) -> None:
        loader = Verifier(client._get_native(), ckpt.bucket, True, progress=progress.add)
        loader.mismatches = []
        loader.load(group, planner)
        for it, stored, read in loader.mismatches:
            failures.append(
                (
                    where_of[it.req.storage_index],
                    f"tensor bytes fail their CRC32 (stored {stored:#010x}, read {read:#010x})",
                )
            )
        for k, v in loader.stats.items():
            stats[k] += v

    with progress_for("verify", ckpt.where, total=total) as progress:
        progress.add(total - sum(i[3] for i in items_read))  # the items of refused files
        for group in _groups(items_read, max(1, args.group_bytes)):
            try:
                load(group, progress)
            except CheckpointCorruptError:
                for item in group:  # which of them: one at a time
                    try:
                        load([item], progress)
                    except CheckpointCorruptError as e:
                        failures.append((where_of[item[0].storage_index], str(e)))
    secs = max(time.perf_counter() - t0, 1e-9)
    if failures or bad_files or untiled:
        for r, why in failures:
            print(f"CORRUPT  {text(r.fqn)}  file {text(ckpt.location(r.file))}  offset {r.offset}: {text(why)}")
        print(
            f"{ckpt.where}: {len(failures) + failed_in_files} of {len(items)} items failed verification"
            + (f"; {len(untiled)} of {len(shapes)} tensors are not held whole by their chunks" if untiled else "")
        )
        return CORRUPT
    tensors = len(shapes)
    unchecked = stats["fallback"]
    note = (
        f" ({unchecked} records torch.load could read but s3torch could not locate: no CRC checked)"
        if unchecked
        else ""
    )
    print(
        f"OK  {ckpt.where}: CRC32 of all {tensors - unchecked} tensors matches{note}; "
        f"{len(items) - tensors} byte items read; {human(total)} in {len(set(i[1] for i in items))} files, "
        f"{secs:.2f}s ({total / 1e9 / secs:.2f} GB/s)"
    )
    return OK
