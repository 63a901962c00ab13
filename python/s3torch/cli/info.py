"""``s3torch info``: what a DCP checkpoint holds and what is known about who wrote it."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Any, Dict, List

from .._progress import human
from .._text import shown as text
from . import _weights
from ._checkpoint import Checkpoint, add_trust_argument, open_any
from ._common import OK, add_connection_arguments, make_client

HELP = "describe a DCP checkpoint (files, tensors, bytes, writer), or safetensors model weights"
DESCRIPTION = """Describe the DCP checkpoint at s3://bucket/prefix (or a local directory): its
files with their sizes and item counts, every tensor (fqn, dtype, shape, chunks, bytes),
byte items, totals, and what its .metadata records about the save (torch's storage_meta:
the path it was written to, save id, modules; the DCP format version). Reads .metadata
and one listing, no tensor data.

"written by" says only what can be told: files that end with save marks were written by
s3torch (S3StorageWriter, or s3torch.msc's writer for msc://); otherwise a save to an s3://
path was made by an S3 storage writer (s3torchconnector's, or s3torch's generic write loop),
a save to msc:// by multi-storage-client's writer, a save to a local path by torch's
FileSystemWriter (or another local writer); a checkpoint whose recorded path is not where it
now lies was copied there (for example by s3torch cp). "save marks" counts the files that
carry one (s3torch verify checks them).

Model weights in the safetensors format (s3://bucket/model.safetensors, an index
s3://bucket/llama/model.safetensors.index.json, or a folder of either with no DCP .metadata):
their files (size, tensors, the checksum S3 stores with each), every tensor (name, dtype,
shape, bytes) and the metadata, from the headers alone (one GET and one HEAD a file). A
folder of a distributed save's pieces (torch's save_distributed=True files, no index) shows
each tensor whole with its pieces, and exits 1 when they do not tile it (a rank's file
missing: the rows no file holds are named)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this verb\'s arguments and options to ``p``."""
    p.add_argument(
        "location",
        metavar="CHECKPOINT",
        help="s3://bucket/prefix of the checkpoint, or a local directory; or of safetensors weights on S3",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--tensors", type=int, default=50, metavar="N", help="list at most N tensors in text (default 50)")
    add_trust_argument(p)
    add_connection_arguments(p)


def writer_of(ckpt: Checkpoint) -> Dict[str, Any]:
    """What the checkpoint says about who wrote it (storage_meta, DCP version, kind of writer)."""
    md = ckpt.metadata
    sm = getattr(md, "storage_meta", None)
    recorded = str(sm.checkpoint_id) if sm is not None and sm.checkpoint_id is not None else None
    from ..dcp import _save_mark

    marked = {i.relative_path for i in md.storage_data.values() if getattr(i, _save_mark.ATTR, None) is not None}
    if marked:
        said = "s3torch" + (
            " (s3torch.msc's writer)" if (recorded or "").startswith("msc://") else " (S3StorageWriter)"
        )
    elif recorded is None:
        said = "not recorded (no storage_meta: a writer that does not set it, or torch older than 2.4)"
    elif recorded.startswith("s3://"):
        said = (
            "an S3 storage writer (s3torchconnector's S3StorageWriter, or s3torch's generic write loop: no save marks)"
        )
    elif recorded.startswith("msc://"):
        said = "multi-storage-client's MultiStorageFileSystemWriter"
    elif "://" in recorded:
        said = f"a writer for {recorded.split('://', 1)[0]}:// paths"
    else:
        said = "torch's FileSystemWriter (or another writer to a local path)"
    here = ckpt.where.rstrip("/")
    copied = recorded is not None and recorded.rstrip("/") != here
    return {
        "written_by": said,
        "written_to": recorded,
        "copied_since": copied,
        "save_marks": len(marked),
        "save_id": getattr(sm, "save_id", None),
        "modules": list(getattr(sm, "modules", None) or []),
        "dcp_version": getattr(md, "version", None),
    }


def describe(ckpt: Checkpoint) -> Dict[str, Any]:
    """Files, tensors, byte items and totals of ``ckpt``, as a JSON-ready dict."""
    records = ckpt.records()
    files: Dict[str, Dict[str, Any]] = defaultdict(lambda: {"items": 0, "record_bytes": 0})
    for r in records:
        files[r.file]["items"] += 1
        files[r.file]["record_bytes"] += r.length
    file_rows = []
    for name in sorted(set(files) | set(ckpt.files)):
        row = dict(files.get(name, {"items": 0, "record_bytes": 0}))
        row.update(name=name, size=ckpt.files.get(name))  # None: referenced but missing
        file_rows.append(row)
    tensors: Dict[str, Dict[str, Any]] = {}
    byte_items: List[Dict[str, Any]] = []
    for fqn, meta in ckpt.metadata.state_dict_metadata.items():
        if hasattr(meta, "chunks"):
            dtype = meta.properties.dtype
            numel = 1
            for s in meta.size:
                numel *= int(s)
            tensors[fqn] = {
                "fqn": fqn,
                "dtype": str(dtype).replace("torch.", ""),
                "shape": [int(s) for s in meta.size],
                "chunks": len(meta.chunks),
                "bytes": numel * dtype.itemsize,
            }
    for r in records:
        if r.dtype is None:
            byte_items.append({"fqn": r.fqn, "file": r.file, "offset": r.offset, "bytes": r.length})
    present = sum(s for s in ckpt.files.values())
    return {
        "checkpoint": ckpt.where,
        **writer_of(ckpt),
        "files": file_rows,
        "tensors": list(tensors.values()),
        "byte_items": byte_items,
        "totals": {
            "files": len(file_rows),
            "missing_files": [f["name"] for f in file_rows if f["size"] is None],
            "tensors": len(tensors),
            "tensor_bytes": sum(t["bytes"] for t in tensors.values()),
            "byte_items": len(byte_items),
            "record_bytes": sum(r.length for r in records),
            "file_bytes": present,
        },
    }


def run(args: argparse.Namespace) -> int:
    """Run the verb with the parsed ``args``; returns the exit code."""
    if args.location.startswith("s3://"):
        weights = _weights.open_weights(make_client(args), args.location)
        if weights is not None:
            w = _weights.describe(weights)
            if args.json:
                print(json.dumps(w, indent=2))
            else:
                _weights.print_description(w, args.tensors)
            return OK
    d = describe(open_any(lambda: make_client(args), args.location, args.trust_checkpoint))
    if args.json:
        print(json.dumps(d, indent=2))
        return OK
    t = d["totals"]
    # What the checkpoint names (paths, tensor names, its writer's words) is outside text:
    # each field printed shown (--json escapes it as JSON does).
    print(f"checkpoint   {text(d['checkpoint'])}")
    print(f"written by   {text(str(d['written_by']))}")
    if d["written_to"] is not None:
        print(f"written to   {text(str(d['written_to']))}" + ("  (copied here since)" if d["copied_since"] else ""))
    print(f"save id      {text(str(d['save_id']))}")
    files = sum(1 for f in d["files"] if f["items"])
    print(f"save marks   {d['save_marks']} of {files} files" + ("" if d["save_marks"] else " (not an s3torch save)"))
    if d["modules"]:
        print(f"modules      {', '.join(text(m) for m in d['modules'])}")
    print(f"DCP version  {d['dcp_version']}")
    print(
        f"total        {t['tensors']} tensors ({human(t['tensor_bytes'])}), {t['byte_items']} byte items, "
        f"{t['files']} files, {human(t['file_bytes'])} ({t['file_bytes']:,} bytes) on storage"
    )
    if t["missing_files"]:
        missing = ", ".join(text(n) for n in t["missing_files"])
        print(f"MISSING      {len(t['missing_files'])} files the metadata refers to: {missing}")
    print("\nfiles:")
    for f in d["files"]:
        size = "MISSING" if f["size"] is None else f"{f['size']:,} bytes"
        print(f"  {text(f['name']):<30} {size:>20}  {f['items']} items")
    print("\ntensors:")
    width = max([len(text(x["fqn"])) for x in d["tensors"][: args.tensors]] + [3])
    for x in d["tensors"][: args.tensors]:
        chunks = f"  {x['chunks']} chunks" if x["chunks"] != 1 else ""
        print(
            f"  {text(x['fqn']):<{width}}  {x['dtype']:<9} {str(tuple(x['shape'])):<20} {human(x['bytes']):>10}{chunks}"
        )
    if len(d["tensors"]) > args.tensors:
        print(f"  ... {len(d['tensors']) - args.tensors} more (--tensors N, or --json)")
    if d["byte_items"]:
        print("\nbyte items:")
        for b in d["byte_items"]:
            print(f"  {text(b['fqn'])}  {b['bytes']:,} bytes in {text(b['file'])}")
    return OK
