"""Which sso-session a profile signs in through, read from the config file as the AWS CLI
writes it, and the regions refused before a refresh token could be sent anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3torch._sso_refresh import _expiry, _session


def test_the_session_and_region_of_a_profile(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.write_text(
        "[default]\nsso_session = a\n"
        "[profile x]\nsso_session = b\ns3 =\n  addressing_style = path\n"
        "[profile legacy]\nsso_start_url = https://corp.awsapps.com/start\nsso_region = us-east-1\n"
        "[sso-session a]\nsso_region = us-west-2\n[sso-session b]\nsso_region = eu-west-1\n"
    )
    assert _session(str(config), "default") == ("a", "us-west-2")
    assert _session(str(config), "x") == ("b", "eu-west-1")
    assert _session(str(config), "legacy") is None  # no refresh token to refresh with, as in boto3
    config.write_text("[profile default]\nsso_session = a\n[sso-session a]\nsso_region = ap-south-1\n")
    assert _session(str(config), "default") == ("a", "ap-south-1")


@pytest.mark.parametrize("region", ["evil.example.com/x#", "us-east-1.evil.example", "", "a@b"])
def test_a_region_that_is_not_one_is_refused(tmp_path: Path, region: str) -> None:
    """The region names the OIDC host the client secret and refresh token go to."""
    config = tmp_path / "config"
    config.write_text(f"[profile p]\nsso_session = s\n[sso-session s]\nsso_region = {region}\n")
    with pytest.raises(ValueError, match="is not a region"):
        _session(str(config), "p")


def test_expiry_times_as_the_cli_writes_them() -> None:
    assert _expiry({"expiresAt": "2030-01-01T00:00:00Z"}) == 1893456000.0
    assert _expiry({"expiresAt": "2030-01-01T00:00:00+00:00"}) == 1893456000.0
    assert _expiry({"expiresAt": "not a time"}) == 0.0 and _expiry({}) == 0.0  # due: refreshed, or an error
