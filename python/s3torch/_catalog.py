"""The checkpoints under a prefix on S3: which folders hold one, whether it is complete, when it
was saved. One listing of the prefix, grouped by folder; nothing is read.

A folder is a DCP checkpoint when it holds a ``.metadata`` (a save writes it last, so a save
that died part way has none), and a safetensors model when it holds an index or one weights
file that is not a shard ("-00001-of-00004"). A folder of ``*.distcp`` files that no
``.metadata`` at or above it claims is an incomplete save (one that failed, or is still being
written); a sharded model without its index, an incomplete model. The ``*.distcp`` files a
prefix strategy puts in folders below a checkpoint are that checkpoint's: its size and file
count are what ``remove_checkpoint`` would remove. (The data files of an incomplete save made
with a prefix strategy are found folder by folder, each its own incomplete entry.)

"When it was saved" is S3's LastModified of the marker (``.metadata``, the index, the single
weights file), which S3 sets when the write completed; for an incomplete one, of its newest
file. Keys are outside text: they are only joined into URIs here, never opened or run.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Dict, List, Optional, Tuple

from ._client import S3Client
from ._config import S3ClientConfig
from ._kinds import DATA_SUFFIX, INDEX_SUFFIX, METADATA, WEIGHTS_SUFFIX
from ._uri import as_dir, parse_s3_uri

KINDS = ("dcp", "safetensors")
_SHARD = re.compile(r"-\d+-of-\d+\.safetensors$")
_NUMBER = re.compile(r"(\d+)")


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint (or model folder) under the prefix listed.

    ``path``: its s3:// folder, ending in "/" (what ``dcp.load`` takes as ``checkpoint_id``);
    ``kind``: ``"dcp"`` or ``"safetensors"``; ``complete``: False for a save without its
    ``.metadata`` (or index), which nothing can load; ``saved``: when its marker was written
    (S3's LastModified, UTC; for an incomplete one, its newest file's), None when the server
    sent no date; ``files`` and ``bytes``: its objects (those ``remove_checkpoint`` removes)."""

    path: str
    kind: str
    complete: bool
    saved: Optional[datetime]
    files: int
    bytes: int


def _when(last_modified: str) -> Optional[datetime]:
    try:
        t = datetime.fromisoformat(last_modified.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=timezone.utc)  # S3's dates are UTC


def _natural(path: str) -> Tuple[object, ...]:
    """``step9`` before ``step10``: digits compared as numbers."""
    return tuple(int(p) if p.isdigit() else p for p in _NUMBER.split(path))


def order_key(c: CheckpointInfo) -> Tuple[object, ...]:
    """Oldest first: by when it was saved (undated first), then by the numbers in its name."""
    return (c.saved is not None, c.saved or datetime.min, _natural(c.path))


@dataclass
class _Folder:
    kind: str = ""
    complete: bool = False
    saved: str = ""  # LastModified of the marker (complete) or the newest file (incomplete)
    files: int = 0
    bytes: int = 0


def catalog(where: str, objects: Dict[str, Tuple[int, str]]) -> List[CheckpointInfo]:
    """The checkpoints among ``objects`` (relative name -> (size, LastModified)) of the prefix
    ``where`` (``s3://bucket/prefix/``), oldest first (:func:`order_key`)."""
    by_dir: Dict[str, List[str]] = {}
    for name in objects:
        by_dir.setdefault(posixpath.dirname(name), []).append(name)
    found: Dict[str, _Folder] = {}
    for d, names in by_dir.items():
        bases = [posixpath.basename(n) for n in names]
        weights = [b for b in bases if b.endswith(WEIGHTS_SUFFIX)]
        if METADATA in bases:
            found[d] = _Folder("dcp", True, objects[posixpath.join(d, METADATA)][1])
        elif any(b.endswith(INDEX_SUFFIX) for b in bases):
            index = min(n for n in names if n.endswith(INDEX_SUFFIX))
            found[d] = _Folder("safetensors", True, objects[index][1])
        elif len(weights) == 1 and not _SHARD.search(weights[0]):
            found[d] = _Folder("safetensors", True, objects[posixpath.join(d, weights[0])][1])
        elif weights:
            found[d] = _Folder("safetensors", False)
    for d, names in by_dir.items():
        owner = _dcp_above(d, found)
        for n in names:
            size, modified = objects[n]
            if d in found:
                f = found[d]
            elif owner is not None and n.endswith(DATA_SUFFIX):
                f = found[owner]  # a prefix strategy's data file
            elif owner is None and n.endswith(DATA_SUFFIX):
                f = found.setdefault(d, _Folder("dcp", False))
            else:
                continue
            f.files, f.bytes = f.files + 1, f.bytes + size
            if not f.complete and modified > f.saved:
                f.saved = modified
    out = [
        CheckpointInfo(where + as_dir(d), f.kind, f.complete, _when(f.saved) if f.saved else None, f.files, f.bytes)
        for d, f in found.items()
    ]
    return sorted(out, key=order_key)


def _dcp_above(d: str, found: Dict[str, _Folder]) -> Optional[str]:
    """The nearest folder at or above ``d`` that holds a complete DCP checkpoint."""
    while True:
        f = found.get(d)
        if f is not None and f.kind == "dcp" and f.complete:
            return d
        if not d:
            return None
        d = posixpath.dirname(d)


def list_checkpoints(
    path: str,
    region: Optional[str] = None,
    *,
    endpoint: Optional[str] = None,
    s3client_config: Optional[S3ClientConfig] = None,
) -> List[CheckpointInfo]:
    """Every DCP checkpoint and safetensors model folder under the s3:// ``path`` (at any
    depth, ``path`` itself included), oldest first: by when its ``.metadata`` (or index) was
    written, ties by the numbers in its name. One listing of the prefix; no object is read.

    Incomplete ones are listed too (``complete=False``): ``*.distcp`` files that no
    ``.metadata`` claims, shards of a model without its index. That is a save that failed, or
    one still being written. (Keeping the last three of a run: ``prune_checkpoints``.)

    Raises ``S3InvalidArgumentError`` for a path that is not an s3:// URI, and what the
    listing raises (``S3NotFoundError`` for a bucket that does not exist). A prefix with no
    checkpoint gives an empty list."""
    bucket, key = parse_s3_uri(path)
    return checkpoints_under(S3Client(region, endpoint=endpoint, s3client_config=s3client_config), bucket, key)


class _PastBound(Exception):
    """A listing ran past the pages it was allowed."""


def dated_listing(
    client: S3Client, bucket: str, prefix: str, max_pages: Optional[int] = None
) -> Dict[str, Tuple[int, str]]:
    """Relative name -> (size, LastModified) of every object under ``prefix``; ``_PastBound``
    when the listing runs past ``max_pages`` pages."""
    objects: Dict[str, Tuple[int, str]] = {}
    for n, page in enumerate(client.list_objects(bucket, prefix), 1):
        if max_pages is not None and n > max_pages:
            raise _PastBound(f"s3://{bucket}/{prefix} lists more than {max_pages} pages")
        objects.update((o.key[len(prefix) :], (o.size, o.last_modified)) for o in page.object_info)
    return objects


def checkpoints_under(client: S3Client, bucket: str, key: str) -> List[CheckpointInfo]:
    """:func:`catalog` of one listing of ``bucket``'s ``key`` as a folder."""
    prefix = as_dir(key)
    return catalog(f"s3://{bucket}/{prefix}", dated_listing(client, bucket, prefix))


def _check_kind(kind: Optional[str]) -> None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")


def latest(found: List[CheckpointInfo], kind: Optional[str]) -> Optional[CheckpointInfo]:
    """The newest complete one of ``found`` (of ``kind``, unless None) by :func:`order_key`."""
    _check_kind(kind)
    done = [c for c in found if c.complete and (kind is None or c.kind == kind)]
    return max(done, key=order_key) if done else None


def latest_checkpoint(
    path: str,
    region: Optional[str] = None,
    *,
    endpoint: Optional[str] = None,
    s3client_config: Optional[S3ClientConfig] = None,
    kind: Optional[str] = "dcp",
) -> Optional[str]:
    """The s3:// path of the newest complete DCP checkpoint under ``path`` (at any depth, by
    when its ``.metadata`` was written: :func:`list_checkpoints`), or None when there is none.
    A save that died before its ``.metadata`` is never chosen. ``kind="safetensors"`` picks
    among model folders instead, ``None`` among both. Resuming a run::

        ckpt = latest_checkpoint("s3://bucket/run7/")
        if ckpt is not None:
            dcp.load(state_dict, storage_reader=S3StorageReader(region, ckpt))

    Newest by write time, not by the step in its name: a run rolled back to step 1000 whose
    next save is step 1100 resumes from 1100, not from the step 2000 the abandoned run left.
    Every checkpoint under ``path`` counts, in deeper folders too (``run7/eval/best/``): name
    the folder that holds only the run's own."""
    _check_kind(kind)  # before the listing
    found = latest(list_checkpoints(path, region, endpoint=endpoint, s3client_config=s3client_config), kind)
    return found.path if found is not None else None


def what_is_there(where: str, objects: Dict[str, Tuple[int, str]]) -> str:
    """For a message that found no DCP checkpoint at ``where`` (``s3://bucket/prefix/``), what
    the listing ``objects`` of it shows instead, as a clause to append ("; ..."), or "": a save
    that did not finish there, or the checkpoints in folders below it."""
    found = catalog(where, objects)
    if any(c.path == where and c.kind == "dcp" and not c.complete for c in found):
        return "; its *.distcp files without a .metadata are a save that did not finish, or is still being written"
    below = [c for c in found if c.kind == "dcp" and c.complete]
    newest = latest(below, "dcp")
    if newest is None:
        return ""
    if len(below) == 1:
        return f"; a checkpoint in a folder below it: {newest.path}"
    return (
        f"; {len(below)} checkpoints in folders below it, the newest {newest.path}: "
        f"`s3torch ls --checkpoints {where}` lists them"
    )


HINT_PAGES = 10  # pages (1,000 keys each) an error's hint lists before it gives up


def what_is_there_now(client: S3Client, bucket: str, key: str) -> str:
    """:func:`what_is_there` of a listing of ``key`` as a folder, for an error message: ""
    when the listing fails or runs past ``HINT_PAGES`` pages (a hint must not cost more than
    the error, nor hide it)."""
    prefix = as_dir(key)
    try:
        objects = dated_listing(client, bucket, prefix, HINT_PAGES)
    except Exception:  # noqa: BLE001 - the error being explained is the one to raise (_PastBound too)
        return ""
    return what_is_there(f"s3://{bucket}/{prefix}", objects)
