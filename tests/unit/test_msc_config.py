"""s3torch.msc's reading of multi-storage-client configuration: the search order (checked
against multi-storage-client 1.3.1's own), what an S3 profile becomes, and the typed error
every bad input gets at construction. No server: nothing here transfers a byte."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict

import pytest
from multistorageclient.config import StorageClientConfig, _find_config_file_paths

from s3torch import S3ClientConfig
from s3torch.msc import MSCConfigError, MultiStorageFileSystemReader, MultiStorageFileSystemWriter, config_search_paths
from s3torch.msc._config import MSCConfig


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: HOME and the XDG directories under tmp_path, no MSC_CONFIG, no AWS
    region or credentials."""
    for var in ("MSC_CONFIG", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-home"))
    monkeypatch.setenv("XDG_CONFIG_DIRS", f"{tmp_path / 'xdg-a'}:{tmp_path / 'xdg-b'}")
    return tmp_path


def write(path: Path, profiles: Dict[str, Any], **top: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"profiles": profiles, **top}
    if path.suffix == ".json":
        path.write_text(json.dumps(data))
    else:
        import yaml

        path.write_text(yaml.safe_dump(data))
    return path


def s3(base_path: str = "bucket/base", **options: Any) -> Dict[str, Any]:
    return {"storage_provider": {"type": "s3", "options": {"base_path": base_path, **options}}}


def test_search_order_is_msc_s(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MSC_CONFIG", str(env / "explicit.yaml"))
    ours = config_search_paths()
    assert ours == [os.path.abspath(str(env / "explicit.yaml"))] + [
        os.path.abspath(p) for p in _find_config_file_paths()
    ]
    assert ours[:7] == [
        str(env / "explicit.yaml"),
        str(env / "xdg-home/msc/config.yaml"),
        str(env / "xdg-home/msc/config.json"),
        str(env / "home/.msc_config.yaml"),
        str(env / "home/.msc_config.json"),
        str(env / "home/.config/msc/config.yaml"),
        str(env / "home/.config/msc/config.json"),
    ]
    assert ours[7:] == [
        str(env / "xdg-a/msc/config.yaml"),
        str(env / "xdg-a/msc/config.json"),
        str(env / "xdg-b/msc/config.yaml"),
        str(env / "xdg-b/msc/config.json"),
        "/etc/msc_config.yaml",
        "/etc/msc_config.json",
    ]


def test_first_existing_file_wins_as_in_msc(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files in every place, each with the profile "p" on a different bucket; removing them
    from the front, s3torch and MSC pick the same file every time."""
    places = [
        env / "explicit.json",
        env / "xdg-home/msc/config.yaml",
        env / "xdg-home/msc/config.json",
        env / "home/.msc_config.yaml",
        env / "home/.msc_config.json",
        env / "home/.config/msc/config.yaml",
        env / "home/.config/msc/config.json",
        env / "xdg-a/msc/config.yaml",
        env / "xdg-b/msc/config.json",
    ]
    for i, f in enumerate(places):
        write(f, {"p": s3(f"bucket{i}")})
    monkeypatch.setenv("MSC_CONFIG", str(places[0]))
    for i, f in enumerate(places):
        if i == 1:
            monkeypatch.delenv("MSC_CONFIG")
        cfg = MSCConfig.load()
        assert cfg.file == str(f) == StorageClientConfig.read_msc_config()[1]
        assert MultiStorageFileSystemReader("msc://p/ckpt").path == f"s3://bucket{i}/ckpt"
        f.unlink()


def test_profile_becomes_bucket_prefix_endpoint_region_credentials(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_SECRET", "s3cr3t")
    f = write(
        env / "home/.msc_config.yaml",
        {
            "full": {
                **s3(
                    "/bucket/team/ckpts/",
                    endpoint_url="http://127.0.0.1:9",
                    region_name="eu-west-3",
                    s3={"addressing_style": "path"},
                    multipart_chunksize=16 * 2**20,
                    verify="/etc/ssl/my-ca.pem",
                    read_timeout=45,
                    connect_timeout=2.5,
                ),
                "credentials_provider": {
                    "type": "S3Credentials",
                    "options": {"access_key": "AK", "secret_key": "${MY_SECRET}", "session_token": "tok"},
                },
            },
            "bare": s3("bare-bucket"),
            "unsigned": s3("pub", signature_version="UNSIGNED"),
            "named": s3("b", profile_name="research"),
        },
    )
    w = MultiStorageFileSystemWriter("msc://full/run7/step100")
    assert w.path == "s3://bucket/team/ckpts/run7/step100" and w.region == "eu-west-3"
    assert w.fs.client.s3client_config == S3ClientConfig(
        force_path_style=True,
        part_size=16 * 2**20,
        ca_file="/etc/ssl/my-ca.pem",
        stall_timeout_s=45,
        connect_timeout_ms=2500,
        access_key_id="AK",
        secret_access_key="s3cr3t",
        session_token="tok",
    )
    assert w._target.endpoint == "http://127.0.0.1:9"
    r = MultiStorageFileSystemReader("msc://bare/x/")
    assert r.path == "s3://bare-bucket/x/" and r.region == "us-east-1"
    assert r.fs.client.s3client_config == S3ClientConfig() and r._target.endpoint is None
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert MultiStorageFileSystemReader("msc://bare/x").region == "ap-south-1"
    assert MultiStorageFileSystemReader("msc://unsigned/x").fs.client.s3client_config.unsigned
    assert MultiStorageFileSystemReader("msc://named/x").fs.client.s3client_config.profile == "research"
    # MSC's implicit profile for a bucket, and an s3:// URL no path_mapping entry matches.
    assert MultiStorageFileSystemReader("msc://_s3-other/k").path == "s3://other/k"
    assert MultiStorageFileSystemReader("s3://any/k").path == "s3://any/k"
    assert MSCConfig.load().file == str(f)


def test_retries_and_checksums_as_botocore_means_them(env: Path) -> None:
    """botocore's retries (max_attempts: retries after the first; total_max_attempts: all)
    become s3torch's attempt count, which then decides instead of its time budget; a
    checksum calculation of when_required sends none (servers that refuse the headers); a
    CRC32 or CRC32C checksum_algorithm is taken, others leave s3torch's default."""
    write(
        env / "home/.msc_config.yaml",
        {
            "retry": s3("b", retries={"max_attempts": 4, "mode": "standard"}),
            "total": s3("b", retries={"total_max_attempts": "3", "max_attempts": 9}),
            "required": s3("b", request_checksum_calculation="when_required"),
            "crc32": s3("b", request_checksum_calculation="WHEN_REQUIRED", checksum_algorithm="CRC32"),
            "sha": s3("b", checksum_algorithm="SHA256"),
        },
    )

    def cfg(profile: str) -> S3ClientConfig:
        return MultiStorageFileSystemReader(f"msc://{profile}/x").fs.client.s3client_config

    assert cfg("retry") == S3ClientConfig(max_attempts=5, retry_timeout_s=0)
    assert cfg("total") == S3ClientConfig(max_attempts=3, retry_timeout_s=0)
    assert cfg("required") == S3ClientConfig(checksums="off")
    assert cfg("crc32") == S3ClientConfig(checksums="crc32")
    assert cfg("sha") == S3ClientConfig()


def test_one_client_per_target() -> None:
    from s3torch.msc import MultiStorageFileSystem
    from s3torch.msc._config import S3Target

    fs = MultiStorageFileSystem()
    a = fs.s3_file_system(S3Target("us-east-1", None, S3ClientConfig()))
    assert fs.s3_file_system(S3Target("us-east-1", None, S3ClientConfig())) is a
    assert fs.s3_file_system(S3Target("us-east-1", "http://127.0.0.1:1", S3ClientConfig())) is not a


def test_path_mapping_longest_prefix_first(env: Path) -> None:
    write(
        env / "home/.msc_config.json",
        {"a": s3("bucket-a/pa"), "b": s3("bucket-b")},
        path_mapping={
            "s3://src/": "msc://a/",
            "s3://src/deep/er/": "msc://b/",
            "s3://nosuffix": "msc://b/",  # MSC skips sources without a trailing "/"
        },
    )
    assert MultiStorageFileSystemReader("s3://src/x/y").path == "s3://bucket-a/pa/x/y"
    assert MultiStorageFileSystemReader("s3://src/deep/er/z").path == "s3://bucket-b/z"
    assert MultiStorageFileSystemReader("s3://src/deep/z").path == "s3://bucket-a/pa/deep/z"
    assert MultiStorageFileSystemReader("s3://nosuffix/z").path == "s3://nosuffix/z"
    assert MultiStorageFileSystemReader("s3:/src/q").path == "s3://bucket-a/pa/q"  # as pathlib writes it


def bad_cases(env: Path) -> Dict[str, Any]:
    """name -> (file content (str) or profiles (dict) or None, url, expected profile, message)"""
    return {
        "unknown profile": ({"p": s3()}, "msc://nosuch/x", "nosuch", r"no such profile.*profiles in the file: p"),
        "no bucket": ({"p": s3("")}, "msc://p/x", "p", "base_path names no bucket"),
        "no storage provider": ({"p": {"credentials_provider": {}}}, "msc://p/x", "p", "no 'storage_provider'"),
        "profile not a mapping": ({"p": "s3://b"}, "msc://p/x", "p", "must be a mapping"),
        "posix": (
            {"p": {"storage_provider": {"type": "file", "options": {"base_path": "/ckpt"}}}},
            "msc://p/x",
            "p",
            "POSIX.*FileSystemReader/FileSystemWriter",
        ),
        "gcs": ({"p": {"storage_provider": {"type": "gcs", "options": {"base_path": "b"}}}}, "msc://p/x", "p", "'gcs'"),
        "credentials type": (
            {"p": {**s3(), "credentials_provider": {"type": "FileBasedCredentials", "options": {}}}},
            "msc://p/x",
            "p",
            "'FileBasedCredentials' is not supported",
        ),
        "credentials incomplete": (
            {"p": {**s3(), "credentials_provider": {"type": "S3Credentials", "options": {"access_key": "a"}}}},
            "msc://p/x",
            "p",
            "access_key and secret_key",
        ),
        "unset variable": ({"p": s3("${S3TORCH_UNSET_VAR}")}, "msc://p/x", "p", r"S3TORCH_UNSET_VAR.*not set"),
        "verify false": ({"p": s3(verify=False)}, "msc://p/x", "p", "verify: false"),
        "bad part size": ({"p": s3(multipart_chunksize=6 * 1024**3)}, "msc://p/x", "p", "not valid for S3"),
        "read timeout not a number": (
            {"p": s3(read_timeout="soon")},
            "msc://p/x",
            "p",
            "read_timeout must be a positive",
        ),
        "connect timeout zero": ({"p": s3(connect_timeout=0)}, "msc://p/x", "p", "connect_timeout must be a positive"),
        "retries not a mapping": ({"p": s3(retries=3)}, "msc://p/x", "p", "retries must be a mapping"),
        "retries negative": ({"p": s3(retries={"max_attempts": -1})}, "msc://p/x", "p", "at least 0, got -1"),
        "retries too many": ({"p": s3(retries={"total_max_attempts": 500})}, "msc://p/x", "p", "max_attempts must be"),
        "checksum calculation": (
            {"p": s3(request_checksum_calculation="always")},
            "msc://p/x",
            "p",
            "when_supported or when_required, got str",
        ),
        "read timeout too long": ({"p": s3(read_timeout=7200)}, "msc://p/x", "p", "stall_timeout_s must be between"),
        "no profile in url": ({"p": s3()}, "msc:///x", None, "names no profile"),
        "not msc or s3": ({"p": s3()}, "gs://b/x", None, "neither msc://"),
        "malformed yaml": ("profiles: [unclosed\n", "msc://p/x", None, "cannot be parsed"),
        "malformed json": ("{", "msc://p/x", None, "cannot be parsed"),
        "top level not a mapping": ("- a\n- b\n", "msc://p/x", None, "top level must be a mapping"),
        "profiles not a mapping": ("profiles: [a]\n", "msc://p/x", None, "'profiles' must be a mapping"),
        "include missing": ("include: [other.yaml]\nprofiles: {}\n", "msc://p/x", None, r"other\.yaml.*does not exist"),
        "mapping with a path": (
            json.dumps({"profiles": {"p": s3()}, "path_mapping": {"s3://a/": "msc://p/sub/"}}),
            "s3://a/x",
            None,
            r"must be msc://<profile>/",
        ),
    }


@pytest.mark.parametrize("cls", [MultiStorageFileSystemReader, MultiStorageFileSystemWriter])
@pytest.mark.parametrize("case", list(bad_cases(Path("."))))
def test_bad_input_raises_at_construction_naming_file_and_profile(env: Path, cls: Any, case: str) -> None:
    content, url, profile, message = bad_cases(env)[case]
    suffix = ".json" if case == "malformed json" or case == "mapping with a path" else ".yaml"
    f = env / f"home/.msc_config{suffix}"
    if isinstance(content, str):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(content)
    else:
        write(f, content)
    with pytest.raises(MSCConfigError, match=message) as e:
        cls(url)
    assert isinstance(e.value, ValueError)
    assert e.value.profile == profile
    if profile is not None:
        assert repr(profile) in str(e.value)
    if case != "not msc or s3":  # a URL that is neither is wrong whatever the config says
        assert e.value.config_file == str(f) and str(f) in str(e.value)


def test_missing_config(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MSCConfigError, match=r"no MSC config file found; searched .*\.msc_config\.yaml") as e:
        MultiStorageFileSystemReader("msc://p/x")
    assert e.value.profile == "p" and e.value.config_file is None
    assert MultiStorageFileSystemReader("s3://b/x").path == "s3://b/x"  # s3:// needs no config
    monkeypatch.setenv("MSC_CONFIG", str(env / "gone.yaml"))
    with pytest.raises(MSCConfigError, match="names a file that does not exist") as e:
        MultiStorageFileSystemWriter("s3://b/x")
    assert e.value.config_file == str(env / "gone.yaml")


def test_include_merges_profiles_and_path_mapping_as_msc(env: Path) -> None:
    main = write(
        env / "home/.msc_config.yaml",
        {"main": s3("bucket-main")},
        include=["parts/team.json", str(env / "abs.yaml")],
        path_mapping={"s3://m/": "msc://main/"},
    )
    team = write(
        env / "home/parts/team.json",
        {"team": s3("bucket-team"), "nob": s3("")},
        path_mapping={"s3://t/": "msc://team/"},
    )
    write(env / "abs.yaml", {"main": s3("bucket-main"), "third": s3("bucket-3/p")})  # the same "main": no conflict
    assert MultiStorageFileSystemReader("msc://team/x").path == "s3://bucket-team/x"
    assert MultiStorageFileSystemReader("msc://third/x").path == "s3://bucket-3/p/x"
    assert MultiStorageFileSystemReader("s3://t/y").path == "s3://bucket-team/y"
    assert MultiStorageFileSystemReader("s3://m/y").path == "s3://bucket-main/y"
    merged, file = StorageClientConfig.read_msc_config()
    assert file == str(main) and set(merged["profiles"]) == {"main", "team", "nob", "third"}
    with pytest.raises(MSCConfigError, match="names no bucket") as e:
        MultiStorageFileSystemReader("msc://nob/x")
    assert e.value.config_file == str(team)  # the file that defines the profile


def test_include_errors(env: Path) -> None:
    main = write(env / "home/.msc_config.yaml", {"p": s3("b1")}, include=["other.yaml"])
    other = write(env / "home/other.yaml", {"p": s3("b2")})
    with pytest.raises(MSCConfigError, match=r"profiles entry 'p' is defined differently") as e:
        MultiStorageFileSystemReader("msc://p/x")
    assert e.value.config_file == str(main)
    write(other, {"q": s3("b2")}, include=["third.yaml"])
    with pytest.raises(MSCConfigError, match="one level of includes") as e:
        MultiStorageFileSystemReader("msc://p/x")
    assert e.value.config_file == str(other)
