"""``s3torch uploads``: list, or abort, the incomplete multipart uploads under a prefix."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from typing import Optional

from .._text import shown as text
from ._common import FAILED, OK, USAGE, CLIError, add_connection_arguments, make_client, s3_uri

HELP = "list or abort incomplete multipart uploads under an S3 prefix"
DESCRIPTION = """List the incomplete multipart uploads under s3://bucket/prefix: uploads that were
started and never completed or aborted (a writer killed mid-save, or an abort that an outage
kept from reaching the server). Their parts take storage until they are aborted. Prints
"INITIATED  KEY  UPLOAD_ID" per upload. --abort aborts them (with --older-than, only those
started before then, so uploads still in progress elsewhere are left alone), many at once, and
says on each line what became of that upload: aborted, refused (the server's reason), or not
answered (the wait ends after 15 s without progress); the exit code is 4 unless all went. A
bucket lifecycle rule (AbortIncompleteMultipartUpload) does the same on S3 without this
command."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this verb\'s arguments and options to ``p``."""
    p.add_argument("uri", metavar="s3://BUCKET[/PREFIX]", help="bucket and key prefix to look under")
    p.add_argument("--abort", action="store_true", help="abort the uploads listed")
    p.add_argument(
        "--older-than",
        metavar="DURATION",
        default=None,
        help="only uploads started longer ago than this: e.g. 30m, 6h, 2d (default: all)",
    )
    add_connection_arguments(p)


def _duration(text: str) -> timedelta:
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    try:
        value, unit = float(text[:-1]), units[text[-1]]
        if value < 0:
            raise ValueError
    except (ValueError, KeyError, IndexError):
        raise CLIError(f"--older-than: expected a duration such as 30m, 6h or 2d, got {text!r}", USAGE) from None
    return timedelta(**{unit: value})


def _initiated(text: str) -> Optional[datetime]:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def run(args: argparse.Namespace) -> int:
    """Run the verb with the parsed ``args``; returns the exit code."""
    bucket, prefix = s3_uri(args.uri)
    cutoff = None
    if args.older_than is not None:
        cutoff = datetime.now(timezone.utc) - _duration(args.older_than)
    client = make_client(args)
    uploads = []
    for key, upload_id, initiated in client.list_multipart_uploads(bucket, prefix):
        when = _initiated(initiated)
        if cutoff is not None and (when is None or when > cutoff):
            continue  # too recent (or undated): may still be in progress
        uploads.append((key, upload_id, initiated))
    statuses = [""] * len(uploads)
    left = 0
    if args.abort:  # all at once; an outage costs one wait, not one per upload
        results = client.abort_multipart_uploads(bucket, [(key, upload_id) for key, upload_id, _ in uploads])
        for i, result in enumerate(results):
            if isinstance(result, BaseException):
                statuses[i] = f"  NOT aborted: {result}"  # the error's text is shown escaped
            else:
                statuses[i] = "  aborted" if result else "  NOT aborted (the server did not answer)"
            left += result is not True
    for (key, upload_id, initiated), status in zip(uploads, statuses):
        print(f"{text(initiated)}  s3://{bucket}/{text(key)}  {text(upload_id)}{status}")  # outside text: shown
    counted, verb = (len(uploads) - left, "aborted") if args.abort else (len(uploads), "found")
    print(f"{counted} incomplete upload(s) {verb} under s3://{bucket}/{prefix}")
    return FAILED if left else OK
