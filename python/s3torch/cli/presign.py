"""``s3torch presign``: a URL that downloads (or uploads) one object without credentials, for a while."""

from __future__ import annotations

import argparse

from ._common import OK, USAGE, CLIError, add_connection_arguments, make_client, s3_uri

HELP = "print a presigned URL that downloads (or uploads) an object"
DESCRIPTION = """Print a URL that GETs s3://bucket/key without credentials until it expires
(--expires-in seconds, default 3600, at most 604800: 7 days), as `aws s3 presign` makes it
(SigV4 in the query string); with --method PUT, a URL that uploads it (`curl -T FILE URL`).
It is signed here, with the credentials the client would use: nothing is sent to S3, and the
object need not exist yet. Anyone holding the URL can read (or write) the object until it
expires: share it as you would the object. A URL signed with temporary credentials (a role,
SSO) stops working when they expire, and carries their session token."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this verb\'s arguments and options to ``p``."""
    p.add_argument("uri", metavar="s3://BUCKET/KEY", help="the object to share")
    p.add_argument(
        "--expires-in",
        type=int,
        default=3600,
        metavar="SECONDS",
        help="how long the URL works, 1 to 604800 (default: 3600)",
    )
    p.add_argument("--method", choices=("GET", "PUT"), default="GET", help="what the URL does (default: GET)")
    add_connection_arguments(p)


def run(args: argparse.Namespace) -> int:
    """Run the verb with the parsed ``args``; returns the exit code."""
    bucket, key = s3_uri(args.uri)
    if not key:
        raise CLIError(f"presign needs an object, s3://bucket/key, not {args.uri!r}", USAGE)
    print(make_client(args).presign(bucket, key, args.expires_in, args.method))
    return OK
