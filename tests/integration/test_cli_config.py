"""``s3torch config``: each setting a client would use and where it came from, no secret shown,
and a signed request that checks the setup."""

from __future__ import annotations

import base64
import os
from typing import Dict

import pytest

from s3torch.cli import main
from tests.conftest import BUCKET

CONFIG = """
[profile dev]
region = eu-north-1
endpoint_url = http://s3.internal.example:9000

[profile other]
region = ap-south-1
"""


def shown(capsys: pytest.CaptureFixture, *argv: str) -> Dict[str, str]:
    """The verb's rows, by setting: "value  (source)"; "" is the whole output."""
    assert main(["config", *argv]) == 0
    out = capsys.readouterr().out
    rows: Dict[str, str] = {"": out}
    for line in out.splitlines():
        name, _, rest = line.partition("  ")
        rows[name.strip()] = rest.strip()
    return rows


def test_each_setting_and_where_it_came_from(aws_home, monkeypatch, capsys, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (aws_home / "config").write_text(CONFIG)
    monkeypatch.setenv("AWS_PROFILE", "dev")
    monkeypatch.setenv("HTTP_PROXY", "http://alice:pa55word@proxy.example:3128")
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    rows = shown(capsys)
    assert rows["profile"] == "dev  ($AWS_PROFILE)"
    assert rows["region"] == "eu-north-1  (profile 'dev')"
    assert (
        rows["endpoint"]
        == f"http://s3.internal.example:9000  (the endpoint_url of profile 'dev' of {aws_home / 'config'})"
    )
    assert rows["credentials"].startswith("the default chain  (profile 'dev' ($AWS_PROFILE), then web identity")
    assert rows["config file"] == f"{aws_home / 'config'}  ($AWS_CONFIG_FILE)"
    assert rows["proxy"] == "http://alice:***@proxy.example:3128  ($HTTP_PROXY)"
    assert rows["ca file"] == "the system's"
    assert rows["headers"] == "none added"
    assert rows["checksums"] == "crc32c  (boto3's default, when_supported)"
    (aws_home / "config").write_text(
        CONFIG.replace("[profile dev]\n", f"[profile dev]\nca_bundle = {tmp_path}/ca.pem\n")
    )
    (tmp_path / "ca.pem").write_text("not read: the endpoint is http")
    assert shown(capsys)["ca file"] == f"{tmp_path}/ca.pem  (the ca_bundle of profile 'dev')"
    (aws_home / "config").write_text(CONFIG)

    # The variables win, as boto3 reads them; $AWS_DEFAULT_PROFILE before $AWS_PROFILE.
    monkeypatch.setenv("AWS_DEFAULT_PROFILE", "other")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    rows = shown(capsys)
    assert rows["profile"] == "other  ($AWS_DEFAULT_PROFILE)" and rows["region"] == "ap-south-1  (profile 'other')"
    assert rows["endpoint"] == "https://s3.ap-south-1.amazonaws.com  (AWS's for the region)"
    assert rows["credentials"] == "access key id AKIA...MPLE  ($AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY)"
    assert rows["proxy"] == "none  (no $HTTPS_PROXY)"
    monkeypatch.setenv("AWS_REGION", "us-west-2")
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    rows = shown(capsys)
    assert rows["checksums"] == "off  ($AWS_REQUEST_CHECKSUM_CALCULATION)"
    assert rows["region"] == "us-west-2  ($AWS_REGION)"
    assert rows["endpoint"] == "https://s3-fips.us-west-2.amazonaws.com  (AWS's for the region, FIPS)"

    # Options, and the headers they add; no secret in anything printed.
    key = tmp_path / "c.key"
    key.write_bytes(os.urandom(32))
    argv = ["--profile", "dev", "--region", "eu-west-3", "--endpoint", "http://127.0.0.1:9"]
    argv += ["--sse-c-key-file", str(key), "--expected-bucket-owner", "111122223333", "--request-payer", "requester"]
    rows = shown(capsys, *argv)
    assert rows["profile"] == "dev  (--profile)" and rows["region"] == "eu-west-3  (--region)"
    assert rows["endpoint"] == "http://127.0.0.1:9  (--endpoint)"
    assert rows["credentials"].startswith("profile 'dev'  (--profile")
    assert rows["proxy"] == "none  (loopback endpoints are reached directly)"
    assert rows["sse_customer_key"] == "set  (--sse-c-key-file)" and "headers" not in rows
    assert rows["expected_bucket_owner"] == "111122223333  (--expected-bucket-owner)"
    assert rows["requester_pays"] == "yes  (--request-payer)"
    for secret in ("pa55word", "wJalrXUtnFEMI", "AKIAIOSFODNN7EXAMPLE", base64.b64encode(key.read_bytes()).decode()):
        assert secret not in rows[""], secret


def test_a_uri_is_checked_with_one_signed_request(seaweed_env, prefix, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    assert main(["config", f"s3://{BUCKET}/{prefix}"]) == 0
    out = capsys.readouterr().out
    assert f"check: ListObjectsV2 s3://{BUCKET}/{prefix} answered in" in out and "(no key there)" in out
    assert main(["config", "s3://no-such-bucket-s3torch/"]) == 3
    assert "NoSuchBucket" in capsys.readouterr().err
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert main(["config", f"s3://{BUCKET}/{prefix}"]) == 4
    err = capsys.readouterr().err
    assert "SignatureDoesNotMatch" in err and "not-the-secret" not in err


def test_an_sso_profile_is_named_as_such(aws_home, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    (aws_home / "config").write_text(
        "[profile dev]\nsso_session = corp\nsso_account_id = 111122223333\nsso_role_name = ML\nregion = us-east-1\n"
        "[sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\nsso_region = us-east-1\n"
    )
    monkeypatch.setenv("AWS_PROFILE", "dev")
    assert shown(capsys)["credentials"] == (
        "IAM Identity Center (SSO) of profile 'dev'  ($AWS_PROFILE; the token `aws sso login` cached)"
    )
    assert shown(capsys, "--profile", "dev")["credentials"].endswith("(--profile; the token `aws sso login` cached)")
