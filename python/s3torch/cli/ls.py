"""``s3torch ls``: list keys and sizes under a prefix, like ``aws s3 ls``."""

from __future__ import annotations

import argparse

from .._catalog import checkpoints_under, latest
from .._progress import human
from .._text import shown as text
from .._uri import as_dir
from ._common import FAILED, NOT_FOUND, OK, CLIError, add_connection_arguments, make_client, s3_uri

HELP = "list objects under an S3 prefix (like aws s3 ls)"
DESCRIPTION = """List objects under s3://bucket/prefix: date, size in bytes, name.

Without -r, as aws s3 ls: keys are grouped at the next "/" after the prefix (shown as
"PRE name/"), and names are shown relative to the prefix's last "/". With -r every key
under the prefix is listed, in full. The prefix is matched as given: s3://b/ckpt lists
ckpt/... and also ckpt2/...; add a trailing "/" for one directory.

With --checkpoints, one line per DCP checkpoint or safetensors model folder under the prefix
(a folder, at any depth), oldest first: when it was saved (its .metadata or index written),
size, files, kind, path. "incomplete" marks *.distcp files no .metadata claims, or a
sharded model without its index: a save that failed, or one still being written. --latest
prints only the path of the newest complete DCP checkpoint (exit 3 when there is none), for
a script that resumes from it (s3torch.dcp.latest_checkpoint)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this verb\'s arguments and options to ``p``."""
    p.add_argument("uri", metavar="s3://BUCKET[/PREFIX]", help="bucket and key prefix to list")
    p.add_argument("-r", "--recursive", action="store_true", help="list every key under the prefix, in full")
    p.add_argument("--human-readable", action="store_true", help="sizes in kB/MB/GB (powers of 1000)")
    p.add_argument("--summarize", action="store_true", help="end with the number of objects and their total size")
    p.add_argument(
        "--checkpoints",
        action="store_true",
        help="list the DCP checkpoints and safetensors model folders under the prefix, oldest first",
    )
    p.add_argument(
        "--latest",
        action="store_true",
        help="print only the path of the newest complete DCP checkpoint under the prefix",
    )
    add_connection_arguments(p)


def _when(last_modified: str) -> str:
    # ISO 8601 from the listing ("2026-11-22T04:56:01.000Z") shown as "2026-11-22 04:56:01".
    return last_modified.replace("T", " ")[:19] if last_modified else "-"


def _checkpoints(args: argparse.Namespace, bucket: str, prefix: str) -> int:
    found = checkpoints_under(make_client(args), bucket, prefix)
    where = f"s3://{bucket}/{as_dir(prefix)}"
    if args.latest:
        newest = latest(found, "dcp")
        if newest is None:
            raise CLIError(f"no complete DCP checkpoint under {where}", NOT_FOUND)
        if text(newest.path) != newest.path:  # a script would take the escaped form for the path
            raise CLIError(
                f"the newest checkpoint's path, {text(newest.path)}, holds characters that are not printed as "
                "they are: s3torch.dcp.latest_checkpoint returns it as it is",
                FAILED,
            )
        print(newest.path)
        return OK
    for c in found:
        saved = c.saved.strftime("%Y-%m-%d %H:%M:%S") if c.saved else "-"
        size = human(c.bytes) if args.human_readable else str(c.bytes)
        state = c.kind if c.complete else "incomplete"
        files = f"{c.files} file" + ("s" if c.files != 1 else "")
        print(f"{saved} {size:>10} {files:>12}  {state:<11} {text(c.path)}")
    if args.summarize:
        print(f"\nTotal: {len(found)} ({sum(not c.complete for c in found)} incomplete)")
    if not found:
        raise CLIError(f"no DCP checkpoint or safetensors model under {where}", NOT_FOUND)
    return OK


def run(args: argparse.Namespace) -> int:
    """Run the verb with the parsed ``args``; returns the exit code."""
    bucket, prefix = s3_uri(args.uri)
    if args.checkpoints or args.latest:
        return _checkpoints(args, bucket, prefix)
    client = make_client(args)
    shown = prefix[: prefix.rfind("/") + 1] if not args.recursive else ""
    count = total = entries = 0
    for page in client.list_objects(bucket, prefix, "" if args.recursive else "/"):
        for p in page.common_prefixes:  # keys and dates are outside text: printed shown
            print(f"{'PRE':>30} {text(p[len(shown) :])}")
            entries += 1
        for o in page.object_info:
            size = human(o.size) if args.human_readable else str(o.size)
            print(f"{text(_when(o.last_modified))} {size:>10} {text(o.key[len(shown) :])}")
            count, total, entries = count + 1, total + o.size, entries + 1
    if args.summarize:
        print(f"\nTotal Objects: {count}\n   Total Size: {human(total) if args.human_readable else total}")
    if not entries:
        raise CLIError(f"nothing under s3://{bucket}/{prefix}", NOT_FOUND)
    return OK
