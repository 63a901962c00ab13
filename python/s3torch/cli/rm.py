"""``s3torch rm``: remove a DCP checkpoint, or a folder of safetensors model weights, from S3
(``s3torch.dcp.remove_checkpoint``: what is removed and in which order)."""

from __future__ import annotations

import argparse

from .._progress import human
from .._remove import listed, plan_pruning, plan_removal, removal_prefix, remove_objects
from .._text import shown as text
from ._common import OK, USAGE, CLIError, add_connection_arguments, make_client, progress_for, s3_uri

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
prefix meanwhile: remove a checkpoint once nothing writes to it.

--keep N (a run's prefix): remove every complete DCP checkpoint in a folder directly under
it (step100/, step200/, ...) but the N newest (by when each .metadata was written, as ls
--checkpoints orders them), oldest first, each as above. Checkpoints in deeper folders
(other runs' under a prefix of runs) are not counted or removed, nor are incomplete saves (a
save that failed, or one still being written) and model folders. If any of the checkpoints
to remove would be refused, nothing is removed."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this verb\'s arguments and options to ``p``."""
    p.add_argument("uri", metavar="s3://BUCKET/PREFIX", help="the checkpoint or model folder to remove")
    p.add_argument(
        "--recursive",
        action="store_true",
        help="also remove the objects in folders below the prefix (checkpoints among them)",
    )
    p.add_argument(
        "--keep",
        type=int,
        metavar="N",
        help="remove every complete DCP checkpoint under the prefix but the N newest",
    )
    p.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    add_connection_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Run the verb with the parsed ``args``; returns the exit code."""
    bucket, key = s3_uri(args.uri)
    if args.keep is not None:
        if args.recursive:
            raise CLIError("--keep and --recursive: name one (--keep leaves the newest checkpoints)", USAGE)
        return _prune(args, bucket, removal_prefix(args.uri, key))
    prefix = removal_prefix(args.uri, key)
    src = f"s3://{bucket}/{prefix}"
    client = make_client(args)
    sizes = listed(client, bucket, prefix)
    markers, data = plan_removal(src, list(sizes), args.recursive)
    count, total = len(markers) + len(data), sum(sizes[n] for n in markers + data)
    if args.dry_run:
        for n in markers + data:
            print(f"would remove {text(src + n)}")  # keys are outside text: printed shown
        print(f"would remove {count} objects, {human(total)} ({total:,} bytes): {src}")
        return OK
    with progress_for("rm", src, unit="objects", total=count) as progress:
        remove_objects(client, bucket, prefix, markers, data, progress.add)
    print(f"removed {count} objects, {human(total)} ({total:,} bytes): {src}")
    return OK


def _prune(args: argparse.Namespace, bucket: str, prefix: str) -> int:
    client = make_client(args)
    plans = plan_pruning(client, bucket, prefix, args.keep)
    count = sum(len(p.markers) + len(p.data) for p in plans)
    total = sum(sum(p.sizes.values()) for p in plans)
    where = f"s3://{bucket}/{prefix}"
    verb = "would remove" if args.dry_run else "removed"
    if args.dry_run:
        for p in plans:
            print(f"would remove {text(f's3://{bucket}/{p.prefix}')} ({len(p.markers) + len(p.data)} objects)")
    else:
        with progress_for("rm", where, unit="objects", total=count) as progress:
            for p in plans:
                remove_objects(client, bucket, p.prefix, p.markers, p.data, progress.add)
                print(f"removed {text(f's3://{bucket}/{p.prefix}')}")
    print(
        f"{verb} {len(plans)} checkpoint{'' if len(plans) == 1 else 's'}, {count} objects, {human(total)} "
        f"({total:,} bytes), keeping the {args.keep} newest: {text(where)}"
    )
    return OK
