"""``s3torch du``: how many objects and bytes lie under a prefix."""

from __future__ import annotations

import argparse

from .._progress import human
from ._common import NOT_FOUND, OK, CLIError, add_connection_arguments, list_all, make_client, progress_for, s3_uri

HELP = "count objects and bytes under an S3 prefix"
DESCRIPTION = """Count the objects and bytes under s3://bucket/prefix (every key that starts
with the prefix, at any depth). Prints "OBJECTS  SIZE  s3://bucket/prefix", the size in
kB/MB/GB (powers of 1000; --bytes for the exact count). Shows the count so far while
stdout is a terminal."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this verb\'s arguments and options to ``p``."""
    p.add_argument("uri", metavar="s3://BUCKET[/PREFIX]", help="bucket and key prefix to measure")
    p.add_argument("--bytes", action="store_true", help="print the size in bytes instead of human units")
    add_connection_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Run the verb with the parsed ``args``; returns the exit code."""
    bucket, prefix = s3_uri(args.uri)
    client = make_client(args)
    count = total = 0
    with progress_for("du", f"s3://{bucket}/{prefix}", unit="objects") as progress:
        for o in list_all(client, bucket, prefix, progress):
            count += 1
            total += o.size
    if not count:
        raise CLIError(f"nothing under s3://{bucket}/{prefix}", NOT_FOUND)
    size = f"{total}" if args.bytes else f"{human(total)} ({total:,} bytes)"
    print(f"{count} objects  {size}  s3://{bucket}/{prefix}")
    return OK
