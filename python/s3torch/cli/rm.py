"""``s3torch rm``: remove a DCP checkpoint, or a folder of safetensors model weights, from S3.

The order is the reverse of ``cp``'s: the markers (``Kind``: a checkpoint's ``.metadata``, a
model's index) go first, all of them, and only then the data files, so a removal that stops
part way never leaves a ``.metadata`` beside data files that are gone: what remains is no
checkpoint at all, and running the command again removes it.
"""

from __future__ import annotations

import argparse
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple

from .._client import S3Client
from .._progress import Progress, human
from ._common import (
    FAILED,
    NOT_FOUND,
    OK,
    USAGE,
    CLIError,
    add_connection_arguments,
    as_dir,
    list_all,
    make_client,
    progress_for,
    s3_uri,
)
from ._kinds import DCP, INDEX_SUFFIX, MODEL, WEIGHTS_SUFFIX, kind_of, nothing_at

HELP = "remove a DCP checkpoint or a safetensors model folder from S3, its metadata first"
DESCRIPTION = """Remove the DCP checkpoint (or folder of safetensors model weights) at
s3://bucket/prefix: every object directly under the prefix, and the *.distcp data files in
folders below it (where a prefix strategy puts them). The files that make it loadable
go first, all of them (a checkpoint's .metadata, a sharded model's *.safetensors.index.json),
and the data files only once they are gone, many at once: a removal that stops part way (an
outage, Ctrl-C) never leaves a .metadata beside data files that are gone, and running it again
removes what remains.

Refused with nothing removed: a whole bucket; a prefix with no checkpoint or model directly
under it (no .metadata, *.distcp or *.safetensors file: exit 3); one with other objects in
folders below it (exit 2, naming one), unless --recursive, which removes every object under the
prefix at any depth (every checkpoint of a run, say), the .metadata and index files of all of
them first. --dry-run lists what would be removed. Incomplete multipart uploads under the
prefix are not objects: `s3torch uploads --abort` removes those. On a versioned bucket S3
keeps the old versions (a delete adds a delete marker). Nothing stops a save writing to the
prefix meanwhile: remove a checkpoint once nothing writes to it."""

JOBS = 16  # deletes in flight at once
DATA_SUFFIX = ".distcp"  # a DCP data file


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this verb\'s arguments and options to ``p``."""
    p.add_argument("uri", metavar="s3://BUCKET/PREFIX", help="the checkpoint or model folder to remove")
    p.add_argument(
        "--recursive",
        action="store_true",
        help="also remove the objects in folders below the prefix (checkpoints among them)",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    add_connection_arguments(p)


def _is_marker(name: str) -> bool:
    """A file that makes a checkpoint or a model loadable (removed first)."""
    return DCP.is_marker(name) or MODEL.is_marker(name)


def _of_a_checkpoint(name: str) -> bool:
    """A file of a checkpoint or a model: a marker, a DCP data file (``*.distcp``, as torch's
    writers and s3torch's name them: what a removal that stopped part way leaves) or weights."""
    base = posixpath.basename(name)
    return _is_marker(name) or base.endswith((DATA_SUFFIX, WEIGHTS_SUFFIX, INDEX_SUFFIX))


def _chosen(src: str, sizes: Dict[str, int], recursive: bool) -> List[str]:
    """The relative names to remove, or the CLIError that refuses the removal."""
    top = [n for n in sizes if "/" not in n]
    below = sorted(n for n in sizes if "/" in n)
    if recursive:
        if not any(_of_a_checkpoint(n) for n in sizes):
            raise nothing_at(src, "the prefix (at any depth)")
        return sorted(sizes)
    if kind_of(top) is None and not any(_of_a_checkpoint(n) for n in top):
        nested = next((n for n in below if _of_a_checkpoint(n)), None)
        if nested is not None:
            raise CLIError(
                f"no DCP checkpoint or safetensors model directly at {src}, but {src}{nested} is in a folder "
                "below it; name that folder, or --recursive removes everything under the prefix",
                NOT_FOUND,
            )
        raise nothing_at(src, "the prefix")
    # A prefix strategy (RoundRobinPrefixStrategy, ...) puts a checkpoint's data files in
    # folders below its .metadata: those are the checkpoint's. Anything else there is not.
    others = [n for n in below if not n.endswith(DATA_SUFFIX)]
    if others:
        raise CLIError(
            f"{src} holds objects in folders below the checkpoint ({src}{others[0]}"
            + (f" and {len(others) - 1} more" if len(others) > 1 else "")
            + "); nothing was removed. --recursive removes those too",
            USAGE,
        )
    return sorted(top + below)


def _delete_all(
    client: S3Client, bucket: str, prefix: str, names: List[str], progress: Progress
) -> List[Tuple[str, BaseException]]:
    """Delete ``prefix + name`` for each name, JOBS at once; the (name, error) of each that failed."""

    def one(name: str) -> Optional[Tuple[str, BaseException]]:
        try:
            client.delete_object(bucket, prefix + name)
        except Exception as e:  # noqa: BLE001 - reported, with the others, by the caller
            return name, e
        progress.add(1)
        return None

    if not names:
        return []
    with ThreadPoolExecutor(min(JOBS, len(names)), thread_name_prefix="s3torch-rm") as pool:
        return [r for r in pool.map(one, names) if r is not None]


def run(args: argparse.Namespace) -> int:
    """Run the verb with the parsed ``args``; returns the exit code."""
    bucket, key = s3_uri(args.uri)
    prefix = as_dir(key)
    if not prefix:
        raise CLIError(f"{args.uri}: name the checkpoint's prefix, not a whole bucket", USAGE)
    src = f"s3://{bucket}/{prefix}"
    client = make_client(args)
    sizes = {o.key[len(prefix) :]: o.size for o in list_all(client, bucket, prefix)}
    names = _chosen(src, sizes, args.recursive)
    markers = [n for n in names if _is_marker(n)]
    data = [n for n in names if not _is_marker(n)]
    total = sum(sizes[n] for n in names)
    if args.dry_run:
        for n in markers + data:
            print(f"would remove {src}{n}")
        print(f"would remove {len(names)} objects, {human(total)} ({total:,} bytes): {src}")
        return OK
    with progress_for("rm", src, unit="objects", total=len(names)) as progress:
        failed = _delete_all(client, bucket, prefix, markers, progress)
        if failed:
            name, e = failed[0]
            raise CLIError(
                f"{src}{name}: not removed ({e}); {len(failed)} of the {len(markers)} .metadata and index "
                "files could not be removed, so no data file was. Run the command again"
            ) from e
        failed = _delete_all(client, bucket, prefix, data, progress)
    if failed:
        name, e = failed[0]
        raise CLIError(
            f"{src}{name}: not removed ({e}); {len(failed)} of {len(names)} objects remain, none of them a "
            ".metadata or index file, so nothing loads them. Run the command again to remove them",
            FAILED,
        ) from e
    print(f"removed {len(names)} objects, {human(total)} ({total:,} bytes): {src}")
    return OK
