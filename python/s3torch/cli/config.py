"""``s3torch config``: what a client made with these options would use, and where each setting
came from (as ``aws configure list`` shows it); with an S3 URI, one signed request to check it."""

from __future__ import annotations

import argparse
import os
import time
from typing import List, Optional, Tuple
from urllib.parse import urlsplit, urlunsplit

from .. import _crt
from .._config import region_and_source
from .._text import shown
from ._common import OK, add_connection_arguments, client_config, make_client, s3_uri

HELP = "show the region, endpoint, profile, credentials and headers a client would use, and check them"
DESCRIPTION = """Show what a client made with these options (and this environment, and
~/.aws/config) would use, and where each setting came from: the profile, the region, the
endpoint, where credentials are looked for, the CA file, the proxy, the upload checksums and the
headers it adds (encryption, Requester Pays, the expected bucket owner). Secrets are never shown: an access key
id only by its first and last 4 characters, a proxy's password as ***, an SSE-C key as "set".
With s3://BUCKET[/PREFIX], also show where that bucket's requests go and how they are signed
(an access point's ARN names its own host and region), then list one key there: a signed
request that checks the whole setup (credentials, endpoint, region, bucket policy) and exits as
any verb does."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add this verb's arguments and options to ``p``."""
    p.add_argument("uri", metavar="s3://BUCKET[/PREFIX]", nargs="?", help="a bucket (and prefix) to check")
    add_connection_arguments(p)


def _masked_key_id(key_id: str) -> str:
    return f"{key_id[:4]}...{key_id[-4:]}" if len(key_id) > 12 else "***"


def _masked_url(url: str) -> str:
    """``url`` without the password of its user info."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparsable)"
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _proxy(native: _crt.NativeClient, from_env: bool) -> Tuple[str, str]:
    if not from_env:
        return "none", "proxy_from_env=False"
    if not native.env_proxy:
        return "none", "loopback endpoints are reached directly"
    endpoint = native.endpoint
    scheme = "https" if endpoint.startswith("https://") else "http"
    for var in (f"{scheme}_proxy", f"{scheme.upper()}_PROXY"):
        if os.environ.get(var):
            no_proxy = os.environ.get("no_proxy") or os.environ.get("NO_PROXY")
            unless = f" (not for the hosts $NO_PROXY lists: {no_proxy})" if no_proxy else ""
            return _masked_url(os.environ[var]), f"${var}{unless}"
    return "none", f"no ${scheme.upper()}_PROXY"


def _ca_file(given: Optional[str], profile: Optional[str]) -> Tuple[str, str]:
    if given:
        return given, "ca_file"
    path, source = _crt.ca_bundle(profile or "")  # what the client resolves, by the same function
    return (path, source) if path else ("the system's", "")


def _credentials(profile: str, profile_source: str, given_profile: Optional[str], sso: bool) -> Tuple[str, str]:
    if sso and (given_profile or not os.environ.get("AWS_ACCESS_KEY_ID")):
        how = "--profile" if given_profile else profile_source
        return f"IAM Identity Center (SSO) of profile '{profile}'", f"{how}; the token `aws sso login` cached"
    if given_profile:
        return f"profile '{profile}'", "--profile: its keys, credential_process or role, only"
    key_id, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key_id and secret:
        return f"access key id {_masked_key_id(key_id)}", "$AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY"
    named = "" if profile_source == "default" else f" ({profile_source})"
    return ("the default chain", f"profile '{profile}'{named}, then web identity, container and instance credentials")


def rows(args: argparse.Namespace) -> List[Tuple[str, str, str]]:
    """(setting, value, where it came from) for the client ``args`` describe."""
    cfg = client_config(args)
    profile = _crt.profile_in_use(cfg.profile or "")
    if args.region:
        region, region_from = args.region, "--region"
    else:
        region, region_from = region_and_source(cfg.profile)
    native = _crt.NativeClient(cfg.native_config(region, args.endpoint or ""))
    endpoint_from = "--endpoint" if native.endpoint_source == "given" else native.endpoint_source
    out = [
        ("profile", profile["name"], "--profile" if profile["source"] == "given" else profile["source"]),
        ("region", region, region_from),
        ("endpoint", native.endpoint, endpoint_from),
        ("credentials", *_credentials(profile["name"], profile["source"], cfg.profile, bool(profile["sso"]))),
        ("config file", profile["config_file"], "$AWS_CONFIG_FILE" if os.environ.get("AWS_CONFIG_FILE") else ""),
        (
            "credentials file",
            profile["credentials_file"],
            "$AWS_SHARED_CREDENTIALS_FILE" if os.environ.get("AWS_SHARED_CREDENTIALS_FILE") else "",
        ),
        ("ca file", *_ca_file(cfg.ca_file, cfg.profile)),
        ("proxy", *_proxy(native, cfg.proxy_from_env)),
    ]
    if cfg.checksums:
        out.append(("checksums", cfg.checksums, "checksums"))
    else:
        out.append(("checksums", *_crt.upload_checksums(cfg.profile or "")))
    headers = [
        ("sse", cfg.sse or "", "--sse"),
        ("sse_kms_key_id", cfg.sse_kms_key_id or "", "--sse-kms-key-id"),
        ("sse_customer_key", "set" if cfg.sse_customer_key else "", "--sse-c-key-file"),
        ("requester_pays", "yes" if cfg.requester_pays else "", "--request-payer"),
        ("expected_bucket_owner", cfg.expected_bucket_owner or "", "--expected-bucket-owner"),
    ]
    out += [h for h in headers if h[1]] or [("headers", "none added", "")]
    if args.uri:  # where that bucket's requests go, by AWS's endpoint rules for an AWS endpoint or an ARN
        where = native.address(s3_uri(args.uri)[0])
        how = f"{where['signing']}, signed for {where['signing_name']} in {where['signing_region']}"
        out.append(("bucket url", where["url"], how))
    return out


def run(args: argparse.Namespace) -> int:
    """Run the verb with the parsed ``args``; returns the exit code."""
    table = rows(args)
    width = max(len(name) for name, _, _ in table)
    for name, value, source in table:
        print(f"{name:<{width}}  {shown(value)}" + (f"  ({shown(source)})" if source else ""))
    if args.uri:
        bucket, prefix = s3_uri(args.uri)
        t0 = time.monotonic()
        page = next(iter(make_client(args).list_objects(bucket, prefix, max_keys=1)))
        ms = (time.monotonic() - t0) * 1000
        found = "a key" if page.object_info else "no key"
        print(f"check: ListObjectsV2 s3://{shown(bucket)}/{shown(prefix)} answered in {ms:.0f} ms ({found} there)")
    return OK
