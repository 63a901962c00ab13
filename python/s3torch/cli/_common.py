"""What every verb shares: connection options, the client, exit codes, listing."""

from __future__ import annotations

import argparse
import base64
import binascii
import sys
from typing import Any, Dict, Iterator, Optional, Tuple

from .. import _crt
from .._client import S3Client
from .._config import S3ClientConfig, default_region
from .._progress import Progress
from .._uri import parse_s3_uri

OK, CORRUPT, USAGE, NOT_FOUND, FAILED = 0, 1, 2, 3, 4

EXIT_CODES = """exit codes:
  0  success
  1  verify: the checkpoint is corrupt (tensor bytes fail their CRC32, truncated records);
     cp down: a file does not match the checksum S3 stores for it
  2  usage: bad arguments, or a destination that exists without --overwrite
  3  not found: no such bucket, prefix, object or checkpoint
  4  any other failure: access denied, network or server errors, a failed transfer,
     a checkpoint whose .metadata is refused as unsafe (see --trust-checkpoint)"""


class CLIError(Exception):
    """A failure the user can act on: printed as one line, exits with ``code``."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(e: BaseException) -> Optional[int]:
    """The exit code of an error raised by the library (None: a bug, let it raise)."""
    from ..dcp._errors import CheckpointCorruptError

    if isinstance(e, CheckpointCorruptError):
        return CORRUPT
    if isinstance(e, (FileNotFoundError, _crt.S3NotFoundError)):
        return NOT_FOUND
    if isinstance(e, (_crt.S3InvalidArgumentError, ValueError)):
        return USAGE
    if isinstance(e, (_crt.S3Exception, OSError)):
        return FAILED
    return None


def add_connection_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection (as the library takes them)")
    g.add_argument(
        "--endpoint",
        metavar="URL",
        help="S3 endpoint, http(s)://host[:port] (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, the profile's "
        "endpoint_url in ~/.aws/config, as boto3 resolves it; else AWS's endpoint for the region)",
    )
    g.add_argument(
        "--region",
        help="region (default: $AWS_REGION, $AWS_DEFAULT_REGION, the profile's region in ~/.aws/config, "
        "else us-east-1)",
    )
    g.add_argument(
        "--profile",
        help="named profile from ~/.aws/credentials and ~/.aws/config (default: the usual credential chain: "
        "$AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY, $AWS_DEFAULT_PROFILE or $AWS_PROFILE, the config files, "
        "instance roles)",
    )
    g.add_argument(
        "--throughput-gbps",
        metavar="GBPS",
        type=_gbps,
        help="the throughput the client opens connections for (S3ClientConfig.throughput_target_gbps, default "
        "10): lower it for a server that shares this machine's cores, which more connections slow down "
        "(SeaweedFS on the same 2 cores took uploads 20%% faster at 2)",
    )
    g.add_argument(
        "--sse",
        choices=("AES256", "aws:kms", "aws:kms:dsse"),
        help="server-side encryption of the objects cp writes (S3ClientConfig.sse; default: the bucket's)",
    )
    g.add_argument(
        "--sse-kms-key-id",
        metavar="KEY",
        help="with --sse aws:kms or aws:kms:dsse: the KMS key id, ARN or alias ARN (default: aws/s3)",
    )
    g.add_argument(
        "--sse-c-key-file",
        metavar="PATH",
        help="SSE-C: a file holding the 256-bit customer key, as 32 bytes or their base64 (`openssl rand 32`); "
        "objects are written with it and read with it (S3ClientConfig.sse_customer_key). A file, not the key, "
        "so that the key is not in the process list",
    )
    g.add_argument(
        "--expected-bucket-owner",
        metavar="ACCOUNT",
        help="the 12-digit AWS account that must own the bucket; S3 refuses a bucket of another account "
        "(S3ClientConfig.expected_bucket_owner)",
    )
    g.add_argument(
        "--request-payer",
        choices=("requester",),
        help="requester: accept the charges of a Requester Pays bucket (S3ClientConfig.requester_pays)",
    )


def _customer_key(path: str) -> str:
    """The base64 SSE-C key held in ``path``: 32 raw bytes, or their base64 text."""
    try:
        with open(path, "rb") as f:
            raw = f.read(1024)
    except OSError as e:
        raise CLIError(f"--sse-c-key-file: cannot read {path!r}: {e.strerror or e}", USAGE) from e
    text = raw.strip()
    try:
        if len(text) == 44 and len(base64.b64decode(text, validate=True)) == 32:
            return text.decode("ascii")
    except (binascii.Error, ValueError):
        pass
    if len(raw) == 32:
        return base64.b64encode(raw).decode("ascii")
    raise CLIError(
        f"--sse-c-key-file {path!r}: not a 256-bit key (32 bytes, or their base64 in 44 characters; "
        f"the file holds {len(raw)} bytes)",
        USAGE,
    )


def _gbps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of Gbps, got {text!r}")
    return value


def region_of(args: argparse.Namespace) -> str:
    return str(args.region or default_region(args.profile))


def make_client(args: argparse.Namespace) -> S3Client:
    return S3Client(region_of(args), endpoint=args.endpoint or None, s3client_config=client_config(args))


def client_config(args: argparse.Namespace) -> S3ClientConfig:
    gbps = getattr(args, "throughput_gbps", None)
    extra: Dict[str, Any] = {} if gbps is None else {"throughput_target_gbps": gbps}
    key_file = getattr(args, "sse_c_key_file", None)
    if key_file:
        extra["sse_customer_key"] = _customer_key(key_file)
    return S3ClientConfig(
        profile=args.profile or None,
        sse=getattr(args, "sse", None),
        sse_kms_key_id=getattr(args, "sse_kms_key_id", None),
        requester_pays=getattr(args, "request_payer", None) == "requester",
        expected_bucket_owner=getattr(args, "expected_bucket_owner", None),
        **extra,
    )


def s3_uri(uri: str) -> Tuple[str, str]:
    """``(bucket, key)`` of an s3:// argument; a usage error otherwise."""
    if not uri.startswith("s3://"):
        raise CLIError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)", USAGE)
    try:
        return parse_s3_uri(uri)
    except ValueError as e:
        raise CLIError(str(e), USAGE) from e


def list_all(
    client: S3Client, bucket: str, prefix: str, progress: Optional[Progress] = None
) -> Iterator[_crt.ObjectInfo]:
    """Every object under ``prefix`` (no delimiter), counting them on ``progress``."""
    for page in client.list_objects(bucket, prefix):
        if progress is not None:
            progress.add(len(page.object_info))
        yield from page.object_info


def progress_for(what: str, target: str, *, unit: str = "B", total: Optional[int] = None) -> Progress:
    """The command line's progress: a bar on stderr while stdout is a terminal, else silent."""
    return Progress(
        what,
        target,
        enabled=sys.stdout.isatty(),
        total=total,
        unit=unit,
        stream=sys.stderr,
        mode="bar",
        summary=False,
    )
