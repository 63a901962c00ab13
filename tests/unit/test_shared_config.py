"""The endpoint settings of the AWS shared config file (``~/.aws/config``, ``$AWS_CONFIG_FILE``)
and the environment, resolved as boto3 resolves them: each case asks botocore (a test
dependency, through moto) for the endpoint it would use and s3torch for the one it uses.

Before, s3torch read only ``$AWS_ENDPOINT_URL_S3`` / ``$AWS_ENDPOINT_URL``: a user whose
``aws s3 ls`` reaches MinIO through a profile's ``endpoint_url`` got AWS's endpoint instead
(and an InvalidAccessKeyId from AWS), and ``$AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`` was not
honoured."""

from __future__ import annotations

from typing import Dict

import boto3
import pytest

from s3torch import S3ClientConfig, S3InvalidArgumentError, _crt
from s3torch._config import default_region

CONFIG = """
[default]
endpoint_url = http://10.0.0.1:9000

[profile services]
endpoint_url = http://10.0.0.2:9000
services = local

[profile other-service]
endpoint_url = http://10.0.0.3:9000
services = dynamo-only

[profile ignoring]
endpoint_url = http://10.0.0.4:9000
ignore_configured_endpoint_urls = true

[profile plain]
region = eu-west-1

[profile fips]
use_fips_endpoint = true

[profile dualstack]
use_dualstack_endpoint = true

[profile dualstack-s3]
s3 =
  use_dualstack_endpoint = true

[services local]
s3 =
  endpoint_url = https://minio.example.com:9443

[services dynamo-only]
dynamodb =
  endpoint_url = http://10.9.9.9:8000
"""

CASES = {
    "the default profile's endpoint_url": ("", {}),
    "a profile without endpoint settings": ("plain", {}),
    "a services section beats the profile's endpoint_url": ("services", {}),
    "another service's section is not s3's": ("other-service", {}),
    "$AWS_ENDPOINT_URL beats the file": ("services", {"AWS_ENDPOINT_URL": "http://10.1.1.1:1"}),
    "$AWS_ENDPOINT_URL_S3 beats $AWS_ENDPOINT_URL": (
        "",
        {"AWS_ENDPOINT_URL": "http://10.1.1.1:1", "AWS_ENDPOINT_URL_S3": "http://10.1.1.2:2"},
    ),
    "the profile ignores configured endpoints": ("ignoring", {"AWS_ENDPOINT_URL": "http://10.1.1.1:1"}),
    "$AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": ("services", {"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "true"}),
    "the variable's false beats the profile's true": ("ignoring", {"AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "false"}),
    "the profile's use_fips_endpoint": ("fips", {}),
    "$AWS_USE_FIPS_ENDPOINT=false beats the profile": ("fips", {"AWS_USE_FIPS_ENDPOINT": "false"}),
    "the profile's use_dualstack_endpoint": ("dualstack", {}),
    "the profile's s3 use_dualstack_endpoint": ("dualstack-s3", {}),
    "a profile the file lacks": ("absent", {}),
}


def _env(monkeypatch: pytest.MonkeyPatch, env: Dict[str, str]) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)


def _boto3(profile: str, region: str) -> str:
    session = boto3.session.Session(profile_name=profile or None, region_name=region)
    url: str = session.client("s3", aws_access_key_id="a", aws_secret_access_key="b").meta.endpoint_url
    return url


def _s3torch(profile: str, region: str, endpoint: str = "") -> str:
    # The profile through $AWS_PROFILE, as boto3's Session(profile_name=) takes it, and through
    # the config's own field: both name the profile of the file.
    cfg = _crt.ClientConfig(region=region, profile=profile, endpoint=endpoint, access_key_id="a", secret_access_key="b")
    url: str = _crt.NativeClient(cfg).endpoint
    return url


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("region", ["us-west-2", "cn-north-1"])
def test_endpoint_as_boto3_resolves_it(aws_home, monkeypatch, case: str, region: str) -> None:  # type: ignore[no-untyped-def]
    profile, env = CASES[case]
    (aws_home / "config").write_text(CONFIG)
    _env(monkeypatch, env)
    if profile == "absent":  # boto3 raises ProfileNotFound; s3torch reads nothing from the file
        assert _s3torch(profile, region) == f"https://s3.{region}.amazonaws.com" + (
            ".cn" if region[:3] == "cn-" else ""
        )
        return
    want = _boto3(profile, region)
    if region.startswith("cn-") and "fips" in want:
        # AWS's rules have no FIPS endpoint in China: boto3 names one for the client, then refuses
        # every request by the rules; s3torch refuses the client, by the same rules.
        with pytest.raises(S3InvalidArgumentError, match="Partition does not support FIPS"):
            _s3torch(profile, region)
        session = boto3.session.Session(profile_name=profile or None, region_name=region)
        with pytest.raises(Exception, match="Partition does not support FIPS"):
            session.client("s3", aws_access_key_id="a", aws_secret_access_key="b").head_object(Bucket="b", Key="k")
        return
    assert _s3torch(profile, region) == want
    if profile:  # the same profile named by $AWS_PROFILE instead of the config
        monkeypatch.setenv("AWS_PROFILE", profile)
        assert _s3torch("", region) == want
        # ... and by $AWS_DEFAULT_PROFILE, which botocore reads before $AWS_PROFILE
        monkeypatch.setenv("AWS_PROFILE", "absent")
        monkeypatch.setenv("AWS_DEFAULT_PROFILE", profile)
        assert _s3torch("", region) == _boto3("", region) == want


def test_an_endpoint_given_beats_every_configured_one(aws_home, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (aws_home / "config").write_text(CONFIG)
    _env(monkeypatch, {"AWS_ENDPOINT_URL_S3": "http://10.1.1.2:2"})
    assert _s3torch("services", "us-west-2", "http://127.0.0.1:7") == "http://127.0.0.1:7"


def test_a_malformed_configured_endpoint_names_where_it_came_from(aws_home, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (aws_home / "config").write_text("[profile bad]\nendpoint_url = minio:9000\n")
    with pytest.raises(
        S3InvalidArgumentError, match=r"'minio:9000' \(from the endpoint_url of profile 'bad' of .*config\)"
    ):
        _s3torch("bad", "us-west-2")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "not a url")
    with pytest.raises(S3InvalidArgumentError, match=r"'not a url' \(from \$AWS_ENDPOINT_URL\)"):
        _s3torch("bad", "us-west-2")


def test_no_config_file_is_aws_for_the_region(aws_home) -> None:  # type: ignore[no-untyped-def]
    assert _s3torch("", "eu-central-1") == _boto3("", "eu-central-1") == "https://s3.eu-central-1.amazonaws.com"


REGION_CONFIG = """
[default]
region = eu-north-1

[profile tokyo]
region = ap-northeast-1

[profile none]
output = json
"""


@pytest.mark.parametrize(
    "profile, env",
    [
        ("", {}),
        ("tokyo", {}),
        ("tokyo", {"AWS_DEFAULT_REGION": "sa-east-1"}),
        ("none", {}),
        ("", {"AWS_DEFAULT_PROFILE": "tokyo", "AWS_PROFILE": "none"}),
    ],
)
def test_default_region_as_boto3_finds_it(aws_home, monkeypatch, profile: str, env: Dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """What makes a client without a region (the CLI, ``safetensors.open``, an MSC profile or
    ``s3://`` path) takes the profile's ``region`` too, as boto3 does; before, only the
    environment, else us-east-1."""
    import argparse

    from s3torch.cli._common import region_of
    from s3torch.safetensors._open import client_of

    (aws_home / "config").write_text(REGION_CONFIG)
    _env(monkeypatch, env)
    want = boto3.session.Session(profile_name=profile or None).region_name or "us-east-1"
    assert default_region(profile) == want
    assert region_of(argparse.Namespace(region=None, profile=profile or None)) == want
    assert client_of(None, None, None, S3ClientConfig(profile=profile or None)).region == want
    # Every class that takes a region takes None for it, resolved once, at construction.
    from s3torch import S3Checkpoint, S3Client, S3IterableDataset, S3MapDataset
    from s3torch.dcp import S3StorageReader, S3StorageWriter

    cfg = S3ClientConfig(profile=profile or None, access_key_id="a", secret_access_key="b")
    ep = "http://127.0.0.1:9"
    made = [
        S3Client(None, ep, cfg),
        S3Client(s3client_config=cfg, endpoint=ep),
        S3Checkpoint(endpoint=ep, s3client_config=cfg),
        S3IterableDataset.from_prefix("s3://b/p/", endpoint=ep, s3client_config=cfg),
        S3MapDataset.from_objects(["s3://b/k"], endpoint=ep, s3client_config=cfg),
        S3StorageWriter(None, "s3://b/ckpt", s3client_config=cfg, endpoint=ep),
        S3StorageReader(None, "s3://b/ckpt", s3client_config=cfg, endpoint=ep),
    ]
    assert [m.region for m in made] == [want] * len(made)
    monkeypatch.setenv("AWS_REGION", "af-south-1")  # not boto3's, but the AWS SDKs' standard: first
    assert default_region(profile) == "af-south-1"
