"""Removing a checkpoint from S3: a DCP checkpoint, or a folder of safetensors model weights.

The order is the reverse of a save's: the markers (``Kind``: every ``.metadata``, a sharded
model's index) go first, all of them, and only then the data files, so a removal that stops
part way never leaves a ``.metadata`` beside data files that are gone: what remains is no
checkpoint at all, and removing again takes it.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

from . import _crt
from ._carried import carry_request
from ._catalog import catalog, dated_listing
from ._client import S3Client
from ._config import S3ClientConfig
from ._kinds import DATA_SUFFIX, DCP, MODEL, WEIGHTS_SUFFIX
from ._uri import as_dir, parse_s3_uri


class CheckpointRemovalError(_crt.S3Exception):
    """``remove_checkpoint`` could not remove every object: ``remaining`` lists the s3:// URIs
    still there. Every ``.metadata`` and index file went first, or, when one of them is among
    ``remaining``, no data file was removed. The S3Exception that stopped it is its
    ``__cause__``; its ``code``, ``http_status`` and ``request_id`` are carried over."""

    def __init__(self, msg: str, remaining: List[str]) -> None:
        super().__init__(msg)
        self.remaining = remaining


def _is_marker(name: str) -> bool:
    """A file that makes a checkpoint or a model loadable (removed first)."""
    return DCP.is_marker(name) or MODEL.is_marker(name)


def _of_a_checkpoint(name: str) -> bool:
    """A file of a checkpoint or a model: a marker, a DCP data file (what a removal that
    stopped part way leaves) or weights."""
    return _is_marker(name) or posixpath.basename(name).endswith((DATA_SUFFIX, WEIGHTS_SUFFIX))


def plan_removal(where: str, names: List[str], recursive: bool) -> Tuple[List[str], List[str]]:
    """Of the relative ``names`` of the objects under the prefix ``where`` (``s3://b/p/``), the
    markers and the data files to remove, in that order. Raises ``S3NotFoundError`` when no
    checkpoint or model lies directly under it (at any depth, with ``recursive``), and
    ``S3InvalidArgumentError`` when other objects than a prefix strategy's ``*.distcp`` files
    lie in folders below it (unless ``recursive``)."""
    top = [n for n in names if "/" not in n]
    below = sorted(n for n in names if "/" in n)
    if recursive:
        if not any(_of_a_checkpoint(n) for n in names):
            raise _crt.S3NotFoundError(f"no DCP checkpoint or safetensors model under {where}, at any depth")
        chosen = sorted(names)
    elif not any(_of_a_checkpoint(n) for n in top):
        nested = next((n for n in below if _of_a_checkpoint(n)), None)
        raise _crt.S3NotFoundError(
            f"no DCP checkpoint or safetensors model directly at {where}"
            + (
                f", but {where}{nested} is in a folder below it; name that folder, or recursive removal "
                "(--recursive) takes everything under the prefix"
                if nested is not None
                else ": it holds no .metadata, *.distcp or *.safetensors file"
            )
        )
    else:
        # A prefix strategy (RoundRobinPrefixStrategy, ...) puts a checkpoint's data files in
        # folders below its .metadata: those are the checkpoint's. Anything else there is not.
        others = [n for n in below if not n.endswith(DATA_SUFFIX)]
        if others:
            raise _crt.S3InvalidArgumentError(
                f"{where} holds objects in folders below the checkpoint ({where}{others[0]}"
                + (f" and {len(others) - 1} more" if len(others) > 1 else "")
                + "); nothing was removed. Recursive removal (--recursive) takes those too"
            )
        chosen = sorted(top + below)
    return [n for n in chosen if _is_marker(n)], [n for n in chosen if not _is_marker(n)]


def _delete_all(
    client: S3Client, bucket: str, prefix: str, names: List[str], removed: Callable[[int], None]
) -> List[Tuple[str, BaseException]]:
    """Delete ``prefix + name`` for each name (DeleteObjects, S3Client.delete_objects); the
    (name, error) of each that failed."""
    if not names:
        return []
    failed = client.delete_objects(bucket, [prefix + n for n in names], removed)
    return [(key[len(prefix) :], e) for key, e in failed]


def _failure(where: str, failed: List[Tuple[str, BaseException]], what: str, remaining: List[str]) -> None:
    name, e = failed[0]
    out = CheckpointRemovalError(f"{where}{name}: not removed ({e}); {what}", [where + n for n in remaining])
    carry_request(out, e)
    raise out from e


def remove_objects(
    client: S3Client,
    bucket: str,
    prefix: str,
    markers: List[str],
    data: List[str],
    removed: Callable[[int], None] = lambda n: None,
) -> None:
    """Delete ``markers`` (all of them), then ``data``, under ``prefix``; ``removed(1)`` after
    each. Raises CheckpointRemovalError, naming what remains, when any delete fails."""
    where = f"s3://{bucket}/{prefix}"
    failed = _delete_all(client, bucket, prefix, markers, removed)
    if failed:
        left = sorted(n for n, _ in failed)
        _failure(
            where,
            failed,
            f"{len(failed)} of the {len(markers)} .metadata and index files could not be removed, so no "
            "data file was. Remove it again",
            left + data,
        )
    failed = _delete_all(client, bucket, prefix, data, removed)
    if failed:
        _failure(
            where,
            failed,
            f"{len(failed)} of {len(markers) + len(data)} objects remain, none of them a .metadata or index "
            "file, so nothing loads them. Remove it again to take them",
            sorted(n for n, _ in failed),
        )


def removal_prefix(path: str, key: str) -> str:
    """The key prefix a removal of ``path`` (whose key is ``key``) takes, as a directory;
    ``S3InvalidArgumentError`` for a whole bucket."""
    prefix = as_dir(key)
    if not prefix:
        raise _crt.S3InvalidArgumentError(f"{path}: name the checkpoint's prefix, not a whole bucket")
    return prefix


@dataclass(frozen=True)
class Planned:
    """One checkpoint's removal: its key prefix, markers and data files (relative to it), sizes."""

    prefix: str
    markers: List[str]
    data: List[str]
    sizes: Dict[str, int]


def plan_pruning(client: S3Client, bucket: str, prefix: str, keep: int) -> List[Planned]:
    """The removal of every complete DCP checkpoint in a folder directly under ``prefix`` (a
    run's ``step100/``, ``step200/``, ...) but the ``keep`` newest (``list_checkpoints``'
    order), oldest first, each planned as ``remove_checkpoint`` plans it. Deeper folders are
    other runs' (``runs/a/step1/`` under ``runs/``), and incomplete saves and model folders
    are not among them either. Raises what ``plan_removal`` raises for any of them (before
    anything is removed)."""
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise _crt.S3InvalidArgumentError(f"keep must be at least 1 (the newest checkpoints kept), got {keep!r}")
    where = f"s3://{bucket}/{prefix}"
    objects = dated_listing(client, bucket, prefix)
    done = [
        c
        for c in catalog(where, objects)
        if c.kind == "dcp" and c.complete and c.path.count("/") == where.count("/") + 1
    ]
    out = []
    for c in done[: max(0, len(done) - keep)]:
        folder = c.path[len(where) :]  # each checkpoint's objects, from the one listing of the prefix
        sizes = {n[len(folder) :]: size for n, (size, _) in objects.items() if n.startswith(folder)}
        markers, data = plan_removal(c.path, list(sizes), recursive=False)
        out.append(Planned(prefix + folder, markers, data, sizes))
    return out


def listed(client: S3Client, bucket: str, prefix: str) -> Dict[str, int]:
    """Relative name -> size of every object under ``prefix``."""
    return {name: size for name, (size, _) in dated_listing(client, bucket, prefix).items()}


def remove_checkpoint(
    path: str,
    region: Optional[str] = None,
    *,
    endpoint: Optional[str] = None,
    s3client_config: Optional[S3ClientConfig] = None,
    recursive: bool = False,
) -> List[str]:
    """Remove the DCP checkpoint (or folder of safetensors model weights) at the s3:// ``path``:
    every object directly under it, and the ``*.distcp`` files a prefix strategy put in folders
    below it. Every ``.metadata`` (a sharded model's index) goes first, and the data files only
    once those are gone, so a removal that stops part way never leaves a ``.metadata`` beside
    missing data; calling it again removes what remains. Returns the s3:// URIs removed.

    ``recursive``: every object under ``path`` at any depth (every checkpoint of a run, say),
    every ``.metadata`` of them first.

    Raises ``S3NotFoundError`` when no checkpoint or model lies at ``path``,
    ``S3InvalidArgumentError`` for a whole bucket or, without ``recursive``, when other
    objects lie in folders below it (nothing is removed then), and
    ``CheckpointRemovalError`` (with ``.remaining``) when a delete fails. On a versioned
    bucket S3 keeps the old versions. Nothing stops a save writing to ``path`` meanwhile."""
    bucket, key = parse_s3_uri(path)
    prefix = removal_prefix(path, key)
    client = S3Client(region, endpoint=endpoint, s3client_config=s3client_config)
    where = f"s3://{bucket}/{prefix}"
    markers, data = plan_removal(where, list(listed(client, bucket, prefix)), recursive)
    remove_objects(client, bucket, prefix, markers, data)
    return [where + n for n in markers + data]


def prune_checkpoints(
    path: str,
    keep: int,
    region: Optional[str] = None,
    *,
    endpoint: Optional[str] = None,
    s3client_config: Optional[S3ClientConfig] = None,
) -> List[str]:
    """Remove every complete DCP checkpoint in a folder directly under the s3:// ``path`` (a
    run's ``step100/``, ``step200/``, ...) but the ``keep`` newest, by when each ``.metadata``
    was written (``list_checkpoints``' order); oldest first, each as ``remove_checkpoint``
    removes it (its ``.metadata`` first). Returns the s3:// paths of the checkpoints removed.

    Checkpoints in deeper folders (another run's, under a prefix of runs) are neither counted
    nor removed, nor are incomplete saves (one that failed, or is still being written) and
    model folders. Every removal is planned before any is made: if one would be refused
    (``S3InvalidArgumentError``: other objects in folders below it), nothing is removed.
    ``keep`` must be at least 1; a whole bucket is refused. ``s3torch rm --keep N`` runs this."""
    bucket, key = parse_s3_uri(path)
    client = S3Client(region, endpoint=endpoint, s3client_config=s3client_config)
    plans = plan_pruning(client, bucket, removal_prefix(path, key), keep)
    for p in plans:
        remove_objects(client, bucket, p.prefix, p.markers, p.data)
    return [f"s3://{bucket}/{p.prefix}" for p in plans]
