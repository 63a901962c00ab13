"""Client configuration: the fields and defaults of s3torchconnector's ``S3ClientConfig``,
plus s3torch's own (endpoint, credentials, memory limit, CA file, ...)."""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, List, Optional, Tuple

from . import _crt

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's smallest part but the last


class PartSizeWarning(UserWarning):
    """An ``S3ClientConfig.part_size`` below S3's 5 MiB minimum: 5 MiB is used instead."""


class ThroughputTargetWarning(UserWarning):
    """An ``S3ClientConfig.throughput_target_gbps`` above s3torch's ceiling: the ceiling is used."""


SECRET_FIELDS = ("secret_access_key", "session_token", "sse_customer_key")
"""Fields that ``repr``/``str`` show as ``***`` (pickling and ``as_dict`` carry them)."""


@dataclass(frozen=True, repr=False)
class S3ClientConfig:
    """How an :class:`~s3torch.S3Client` talks to S3. Validated on construction, by the native
    ``ClientConfig`` (csrc/s3torch/config.h), which defines every field's limits once.

    Attributes:
        throughput_target_gbps: aws-c-s3 sizes its connection pool for this (default 10; any
            positive number, as s3torchconnector takes). Above 1000, 1000 is used (with a
            warning): aws-c-s3 opens a connection per fraction of a Gbps of target, and thousands
            of connections to one endpoint add refusals, not throughput.
        part_size: part size in bytes for multipart uploads and ranged GETs (1..5 GiB, default
            8 MiB). Below S3's 5 MiB minimum part, 5 MiB is used (with a warning) and this field
            keeps the value given. s3torchconnector accepts such a value as well; its uploads
            use 5 MiB parts (aws-c-s3 raises the part size), but its GETs use the small ranges
            as given, which s3torch does not do (tiny ranged GETs multiply requests for nothing).
            S3 takes at most 10,000 parts per upload (78.1 GiB at 8 MiB): an upload given its
            size (``size_hint``) gets larger parts when it needs them; one without is refused
            at the write that would need part 10,001.
        unsigned: send unsigned requests (public buckets).
        force_path_style: address buckets as ``endpoint/bucket/key`` instead of
            ``bucket.endpoint/key``. IP-address and localhost endpoints always use path style.
        max_attempts: attempts per request, first try included (1..64, default 10), when
            ``retry_timeout_s`` is 0; 1 turns retries off altogether.
        profile: named profile from ``~/.aws/credentials`` / ``~/.aws/config``.
        requester_pays: send ``x-amz-request-payer: requester`` with every request (the name and
            place of s3torchconnector's field; boto3's ``RequestPayer="requester"``): requests to
            a Requester Pays bucket, whose owner refuses (403) those that do not accept the
            charges (default False). Not with ``unsigned``: S3 charges the signer's account.
        memory_limit_bytes: cap on aws-c-s3's part-buffer pool (0: automatic; else >= 1 GiB).
        access_key_id, secret_access_key, session_token: static credentials.
        ca_file: PEM bundle to trust for a private TLS endpoint, in place of the system's
            (default: ``$AWS_CA_BUNDLE``, else the profile's ``ca_bundle`` in ``~/.aws/config``,
            as boto3 and the AWS CLI read them, else the system's).
        proxy_from_env: connect through the proxy named by ``$HTTPS_PROXY`` (https endpoints)
            or ``$HTTP_PROXY`` (http endpoints), lowercase names first, except to hosts listed in
            ``$NO_PROXY``, as boto3 does (default True). ``http://user:password@host:port``
            sends basic authentication; an ``https://`` proxy is reached over TLS. Loopback
            endpoints (``localhost``, ``127.0.0.0/8``, ``::1``) never go through a proxy.
        s3express: enable S3 Express One Zone (directory buckets).
        stream_read_ahead_bytes: read-ahead window of streaming GETs (0: 4 x part size).
        connect_timeout_ms: TCP connect timeout (0: the CRT's default).
        stall_timeout_s: how long a request may go with no byte moving on its connection, the
            wait for the server's answer included, before the connection is closed and the
            request retried (1..3600, default 10). It ends transfers on a connection that went
            silent mid-request: a server or middlebox gone without closing it, a network path
            that dropped. The CRT's own default, which s3torchconnector keeps, is 30 s. A
            reader that stops reading does not count: s3torch holds no connection open for it.
            Raised above 10 for a server slow to answer, it is also how long the first answer
            of a process that has not reached the endpoint yet may take (else 8 s).
        retry_timeout_s: once the endpoint is known to be right, how long a request that keeps
            failing transiently (connections refused or reset, timeouts, 5xx, SlowDown, truncated
            bodies) is retried, counted from when it was issued or from the first failure of the
            endpoint's current streak of failures, whichever is earlier (0..86400, default 120;
            0: retry ``max_attempts`` times instead). Until the endpoint is known to be right,
            failures give up 8 s after the request was issued (a wrong endpoint, a server not
            running). See ``known_endpoint`` and docs/retries.md.
        known_endpoint: the endpoint is known to be right, so requests ride out outages for
            ``retry_timeout_s`` from the very first request, before it has answered in this
            process (default False: an endpoint becomes known when it answers in this process,
            or in the process an s3torch object was pickled in, e.g. the parent of a DataLoader
            worker). Set it for processes whose first requests may meet an outage: a restarted
            rank, a CLI command in a job script.
        checksums: the checksum uploads carry for the server to verify, ``"crc32c"``,
            ``"crc32"``, or ``"off"`` for servers that reject checksum headers. Default None: as
            boto3 decides, from ``$AWS_REQUEST_CHECKSUM_CALCULATION``, else the profile's
            ``request_checksum_calculation`` (``when_required``: ``"off"``; ``when_supported``,
            boto3's default: ``"crc32c"``), so a server that boto3 was set up for this way takes
            s3torch's uploads too.
        checksum_type: what the checksum a multipart upload leaves on the object covers:
            ``"full_object"`` (default: one CRC of the whole object, as a single PUT's is, which
            reads can check end to end, e.g. ``s3torch.safetensors``) or ``"composite"`` (a CRC
            of the parts' CRCs, for servers without full-object checksums). See docs/retries.md.
        sse: server-side encryption of the objects this client writes (uploads, checkpoints,
            copies): ``"AES256"`` (SSE-S3), ``"aws:kms"`` (SSE-KMS) or ``"aws:kms:dsse"``
            (DSSE-KMS), sent as boto3's ``ServerSideEncryption`` is (default None: the bucket's
            default encryption). Reads need nothing: S3 decrypts for whoever may read.
        sse_kms_key_id: with ``sse="aws:kms"`` or ``"aws:kms:dsse"``, the KMS key to encrypt
            with (key id, key ARN or alias ARN), boto3's ``SSEKMSKeyId`` (default None: the
            account's ``aws/s3`` key).
        sse_customer_key: SSE-C, boto3's ``SSECustomerKey``: a 256-bit key you keep, as base64
            (44 characters: ``base64.b64encode(os.urandom(32)).decode()``). Every object this
            client writes is encrypted with it, and every read and HEAD presents it; S3 stores
            only its MD5, so an object written with it cannot be read without it. Not with
            ``sse``. ``copy_object`` refuses it (aws-c-s3 sizes a copy with a HEAD that cannot
            carry the key).
        expected_bucket_owner: the 12-digit AWS account id that must own every bucket this
            client touches, boto3's ``ExpectedBucketOwner``, sent with every request: S3 refuses
            (403) a request to a bucket of any other account, so that a checkpoint is never
            written to, or a model read from, a bucket of the same name that someone else
            created after yours was deleted (default None: not checked).

    ``repr`` and ``str`` show ``secret_access_key``, ``session_token`` and ``sse_customer_key``
    as ``***``, so a config printed in a log, a traceback or a hyperparameter dump holds no
    secret. Pickling (a DataLoader worker, ``dcp.async_save``'s process) and :meth:`as_dict`
    carry them.
    """

    throughput_target_gbps: float = 10.0
    part_size: int = 8 * MiB
    unsigned: bool = False
    force_path_style: bool = False
    max_attempts: int = 10
    profile: Optional[str] = None
    requester_pays: bool = False  # s3torchconnector's 7th field: s3torch's own come after it
    memory_limit_bytes: int = 0
    access_key_id: Optional[str] = None
    secret_access_key: Optional[str] = None
    session_token: Optional[str] = None
    ca_file: Optional[str] = None
    proxy_from_env: bool = True
    s3express: bool = False
    stream_read_ahead_bytes: int = 0
    connect_timeout_ms: int = 0
    retry_timeout_s: int = 120
    checksums: Optional[str] = None
    checksum_type: str = "full_object"
    known_endpoint: bool = False
    stall_timeout_s: int = 10
    sse: Optional[str] = None
    sse_kms_key_id: Optional[str] = None
    sse_customer_key: Optional[str] = None
    expected_bucket_owner: Optional[str] = None

    def __post_init__(self) -> None:
        # One set of limits: the native ClientConfig's (TypeError for a wrong type,
        # S3InvalidArgumentError, a ValueError, for a value out of its limits).
        self.native_config().validate()
        if self.part_size < MIN_PART_SIZE:
            warnings.warn(
                f"S3ClientConfig: part_size {self.part_size} is below S3's minimum part size of 5 MiB; "
                "5 MiB parts are used",
                PartSizeWarning,
                stacklevel=3,
            )
        if self.throughput_target_gbps > _crt.MAX_THROUGHPUT_GBPS:
            warnings.warn(
                f"S3ClientConfig: throughput_target_gbps {self.throughput_target_gbps:g} is above s3torch's "
                f"ceiling; {_crt.MAX_THROUGHPUT_GBPS:g} is used",
                ThroughputTargetWarning,
                stacklevel=3,
            )

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown.append(f"{f.name}={'***' if f.name in SECRET_FIELDS and value is not None else repr(value)}")
        return f"S3ClientConfig({', '.join(shown)})"

    def native_config(self, region: str = "us-east-1", endpoint: str = "", user_agent: str = "") -> _crt.ClientConfig:
        """This configuration as the native ``ClientConfig`` (same field names; None is "")."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return _crt.ClientConfig(
            region=region,
            endpoint=endpoint,
            user_agent=user_agent,
            **{k: "" if v is None else v for k, v in values.items()},
        )

    def __reduce__(self) -> Tuple[Any, ...]:
        # The endpoints that answered in this process travel with the configuration, so that a
        # spawned or forkserver worker rides out an outage from its first request as this
        # process would (docs/retries.md).
        return (_unpickle_config, (self.as_dict(), _crt.answered_endpoints()))

    def as_dict(self) -> Dict[str, Any]:
        """The configuration as a plain dict of its fields."""
        return asdict(self)


def default_region(profile: Optional[str] = None) -> str:
    """The region where boto3 finds it, for what makes a client without one: ``$AWS_REGION``,
    ``$AWS_DEFAULT_REGION``, the profile's ``region`` in ``~/.aws/config`` (``profile``, else
    ``$AWS_DEFAULT_PROFILE``, else ``$AWS_PROFILE``, else default), else us-east-1."""
    return region_and_source(profile)[0]


def region_and_source(profile: Optional[str] = None) -> Tuple[str, str]:
    """:func:`default_region` and where it came from: ``$AWS_REGION``, ``$AWS_DEFAULT_REGION``,
    ``profile 'NAME'`` or ``default``."""
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        if os.environ.get(var):
            return os.environ[var], f"${var}"
    in_use = _crt.profile_in_use(profile or "")  # the config file, read once
    if in_use["region"]:
        return in_use["region"], f"profile '{in_use['name']}'"
    return "us-east-1", "default"


def _unpickle_config(values: Dict[str, Any], answered: List[str]) -> S3ClientConfig:
    _crt.mark_answered(answered)
    return S3ClientConfig(**values)
