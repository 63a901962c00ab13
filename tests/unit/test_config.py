"""Configuration is validated before any request, with messages that say what to do."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from s3torch import S3Client, S3ClientConfig, S3Exception, S3InvalidArgumentError, S3PermissionError, _crt
from s3torch._config import PartSizeWarning, ThroughputTargetWarning


@pytest.mark.parametrize(
    "endpoint, fragment",
    [
        ("ftp://127.0.0.1:9000", "scheme"),
        ("127.0.0.1:9000", "scheme"),
        ("http://", "no host"),
        ("http://host:99999", "port"),
        ("http://host:abc", "port"),
        ("http://host:9000/some/path", "path"),
        ("http://ho st:9000", "invalid character"),
        ("http://user@host", "user info"),
    ],
)
def test_malformed_endpoint(endpoint: str, fragment: str) -> None:
    with pytest.raises(S3InvalidArgumentError, match=fragment) as ei:
        S3Client("us-east-1", endpoint=endpoint)
    assert isinstance(ei.value, ValueError)
    assert endpoint in str(ei.value)


@pytest.mark.parametrize("region", ["", "US-EAST-1", "us east 1", "us--east-1", "-us", "us_east_1"])
def test_bad_region(region: str) -> None:
    with pytest.raises(S3InvalidArgumentError, match="region"):
        S3Client(region, endpoint="http://127.0.0.1:1")


def test_good_endpoints_and_regions() -> None:
    for ep in ["http://127.0.0.1:9000", "https://s3.example.com", "http://[::1]:9000", "http://localhost:80/"]:
        S3Client("us-east-1", endpoint=ep)
    for region in ["us-east-1", "eu-central-2", "us-gov-west-1", "auto"]:
        S3Client(region, endpoint="http://127.0.0.1:1")


@pytest.mark.parametrize("part_size", [0, 5 * 1024**3 + 1])
def test_part_size_out_of_range(part_size: int) -> None:
    with pytest.raises(ValueError, match="part_size"):
        S3ClientConfig(part_size=part_size)
    # The native layer refuses too, for callers that bypass the dataclass.
    with pytest.raises(S3InvalidArgumentError, match="part_size"):
        _crt.NativeClient(_crt.ClientConfig(endpoint="http://127.0.0.1:1", part_size=part_size))


def test_part_size_below_5_mib_is_accepted_and_raised_to_5_mib() -> None:
    # As s3torchconnector accepts it (S3 refuses smaller parts but the last): 5 MiB is used.
    with pytest.warns(PartSizeWarning):
        cfg = S3ClientConfig(part_size=5 * 1024 * 1024 - 1)
    assert cfg.part_size == 5 * 1024 * 1024 - 1
    native = _crt.NativeClient(cfg.native_config(endpoint="http://127.0.0.1:1"))
    assert native.part_size == 5 * 1024 * 1024


def test_throughput_target_above_the_ceiling_is_accepted_and_lowered() -> None:
    # s3torchconnector takes any positive target; s3torch uses its ceiling, with a warning.
    with pytest.warns(ThroughputTargetWarning, match="throughput_target_gbps 2000"):
        cfg = S3ClientConfig(throughput_target_gbps=2000)
    assert cfg.throughput_target_gbps == 2000
    _crt.NativeClient(cfg.native_config(endpoint="http://127.0.0.1:1"))


@pytest.mark.parametrize("gbps", [0.0, -1.0, float("nan"), float("inf")])
def test_throughput_target_must_be_a_positive_number(gbps: float) -> None:
    with pytest.raises(ValueError, match="throughput_target_gbps"):
        S3ClientConfig(throughput_target_gbps=gbps)


@pytest.mark.parametrize("attempts", [0, 65])
def test_max_attempts_out_of_range(attempts: int) -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        S3ClientConfig(max_attempts=attempts)
    with pytest.raises(S3InvalidArgumentError, match="max_attempts"):
        _crt.NativeClient(_crt.ClientConfig(endpoint="http://127.0.0.1:1", max_attempts=attempts))


def test_config_type_errors() -> None:
    with pytest.raises(TypeError):
        S3ClientConfig(part_size=8.5 * 1024 * 1024)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="max_attempts"):
        S3ClientConfig(max_attempts=True)
    with pytest.raises(TypeError, match="profile"):
        S3ClientConfig(profile=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stream_read_ahead_bytes"):
        S3ClientConfig(stream_read_ahead_bytes=-1)
    with pytest.raises(ValueError, match="connect_timeout_ms"):
        S3ClientConfig(connect_timeout_ms=1 << 40)
    for stall in (0, 3601):
        with pytest.raises(ValueError, match="stall_timeout_s must be between 1 and 3600"):
            S3ClientConfig(stall_timeout_s=stall)
    with pytest.raises(ValueError, match="unsigned"):
        S3ClientConfig(unsigned=True, access_key_id="a", secret_access_key="b")
    with pytest.raises(ValueError, match="throughput"):
        S3ClientConfig(throughput_target_gbps=0)
    with pytest.raises(ValueError, match="both"):
        S3ClientConfig(access_key_id="x")
    with pytest.raises(ValueError, match="memory_limit"):
        S3ClientConfig(memory_limit_bytes=1024)


def test_defaults_match_s3torchconnector() -> None:
    c = S3ClientConfig()
    assert c.throughput_target_gbps == 10.0
    assert c.part_size == 8 * 1024 * 1024
    assert c.unsigned is False and c.force_path_style is False
    assert c.max_attempts == 10 and c.profile is None and c.requester_pays is False
    # The same fields in the same places: a config built positionally means the same.
    peer = ["throughput_target_gbps", "part_size", "unsigned", "force_path_style", "max_attempts", "profile"]
    assert [f.name for f in dataclasses.fields(S3ClientConfig)][:7] == peer + ["requester_pays"]
    assert S3ClientConfig(10.0, 8 << 20, False, False, 10, None, True).requester_pays is True
    with pytest.raises(ValueError, match="requester_pays needs signed requests"):
        S3ClientConfig(unsigned=True, requester_pays=True)


def test_one_field_list() -> None:
    """S3ClientConfig spells every native field but those S3Client fills in, and the native
    class holds the same defaults (None in Python is "" natively)."""
    native = _crt.ClientConfig()
    ours = {f.name for f in dataclasses.fields(S3ClientConfig)}
    assert set(_crt.ClientConfig.fields()) == ours | {"region", "endpoint", "credentials", "user_agent"}
    for f in dataclasses.fields(S3ClientConfig):
        assert getattr(native, f.name) == ("" if f.default is None else f.default), f.name
    # Values out of range are refused by the native class alone, with the same message.
    with pytest.raises(S3InvalidArgumentError, match="max_attempts must be between 1 and 64, got 65"):
        _crt.ClientConfig(max_attempts=65).validate()
    with pytest.raises(S3InvalidArgumentError, match="max_attempts must be between 1 and 64, got 65"):
        S3ClientConfig(max_attempts=65)


def test_unknown_credentials_kind() -> None:
    with pytest.raises(S3InvalidArgumentError, match="credentials"):
        _crt.NativeClient(_crt.ClientConfig(endpoint="http://127.0.0.1:1", credentials="magic"))


def test_missing_profile_is_reported(aws_home) -> None:  # type: ignore[no-untyped-def]
    client = S3Client(
        "us-east-1", endpoint="http://127.0.0.1:1", s3client_config=S3ClientConfig(profile="does-not-exist")
    )
    with pytest.raises(S3InvalidArgumentError, match="does-not-exist"):
        client.head_object("b", "k")


def test_a_client_that_failed_to_start_lets_a_fork_shut_the_crt_down(aws_home) -> None:  # type: ignore[no-untyped-def]
    # It held the CRT runtime after its start failed: every later fork() (a DataLoader's
    # workers) waited 5 s for it to let go, then left the CRT threads running. In a process of
    # its own, so no client of another test can be what holds the CRT.
    script = """
from s3torch import S3Client, S3ClientConfig, S3InvalidArgumentError, _crt
client = S3Client("us-east-1", endpoint="http://127.0.0.1:1", s3client_config=S3ClientConfig(profile="does-not-exist"))
for _ in range(2):  # each failed start lets go of what it took
    try:
        client.head_object("b", "k")
    except S3InvalidArgumentError as e:
        assert "does-not-exist" in str(e), e
    else:
        raise AssertionError("started without its profile")
print(_crt.prepare_fork(), client is not None)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True"], done.stdout


SSO_CONFIG = """
[profile dev]
sso_session = corp
sso_account_id = 111122223333
sso_role_name = ML
region = us-east-1

[profile legacy]
sso_start_url = https://corp.awsapps.com/start
sso_region = us-east-1
sso_account_id = 111122223333
sso_role_name = ML

[profile plain]
region = us-east-1

[sso-session corp]
sso_start_url = https://corp.awsapps.com/start
sso_region = us-east-1
"""


@pytest.mark.parametrize("how", ["profile", "AWS_PROFILE", "legacy"])
def test_an_sso_profile_says_how_to_get_its_credentials(aws_home, monkeypatch, how: str) -> None:  # type: ignore[no-untyped-def]
    """A profile that signs in through IAM Identity Center (SSO), as `aws sso login` users have,
    with no sign-in token cached (never signed in, or expired): the error says to sign in again.
    (With a token, the role's credentials are fetched: tests/integration/test_credentials.py.)"""
    (aws_home / "config").write_text(SSO_CONFIG)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("HOME", str(aws_home))  # no ~/.aws/sso/cache
    name = "legacy" if how == "legacy" else "dev"
    if how == "AWS_PROFILE":
        monkeypatch.setenv("AWS_PROFILE", name)
        config = S3ClientConfig(max_attempts=1)
    else:
        config = S3ClientConfig(profile=name, max_attempts=1)
    client = S3Client("us-east-1", endpoint="http://127.0.0.1:1", s3client_config=config)
    with pytest.raises(S3PermissionError) as ei:
        client.head_object("b", "k")
    assert f"profile '{name}' signs in through AWS IAM Identity Center (SSO)" in str(ei.value)
    assert f"sign in again: aws sso login --profile {name}" in str(ei.value)
    # A profile without SSO settings and without keys: the plain hint, no word of SSO.
    plain = S3Client("us-east-1", endpoint="http://127.0.0.1:1", s3client_config=S3ClientConfig(profile="plain"))
    with pytest.raises(S3Exception) as ei:
        plain.head_object("b", "k")
    assert "SSO" not in str(ei.value)


def test_endpoint_from_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:4567")
    native = _crt.NativeClient(_crt.ClientConfig())
    assert native.endpoint == "http://127.0.0.1:4567"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "not a url")
    with pytest.raises(S3InvalidArgumentError, match="not a url"):
        _crt.NativeClient(_crt.ClientConfig())


def test_exception_hierarchy() -> None:
    assert issubclass(_crt.S3NotFoundError, FileNotFoundError)
    assert issubclass(_crt.S3NotFoundError, _crt.S3Exception)
    assert issubclass(_crt.S3PermissionError, PermissionError)
    assert issubclass(_crt.S3TimeoutError, TimeoutError)
    assert issubclass(_crt.S3InvalidArgumentError, ValueError)
