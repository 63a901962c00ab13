"""s3torch.msc, multi-storage-client's DCP classes on s3torch's engine: round trips through
msc:// profiles and path_mapping on SeaweedFS, interchange both ways with
multi-storage-client 1.3.1's own classes on the same config file, MultiStorageFileSystem's
operations against MSC's, and construction-time errors."""

from __future__ import annotations

import json
import pickle
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest
import torch
import torch.distributed.checkpoint as dcp
from multistorageclient.contrib.torch import filesystem as msc_torch
from torch.distributed.checkpoint.api import CheckpointException

from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch.dcp import S3StorageReader, S3StorageWriter, _save_mark
from s3torch.msc import (
    MSCConfigError,
    MultiStorageFileSystem,
    MultiStorageFileSystemReader,
    MultiStorageFileSystemWriter,
)
from tests.conftest import BUCKET, make_client
from tests.integration.test_dcp import assert_same, empty_like_sd, state_dict


def s3_profile(server: Any, base_path: str, **options: Any) -> Dict[str, Any]:
    return {
        "storage_provider": {
            "type": "s3",
            "options": {"base_path": base_path, "endpoint_url": server.endpoint, "region_name": REGION, **options},
        },
        "credentials_provider": {
            "type": "S3Credentials",
            "options": {"access_key": ACCESS_KEY, "secret_key": SECRET_KEY},
        },
    }


class Msc:
    """An MSC config file written for one test, selected by $MSC_CONFIG. Profile names are
    unique per test: MSC caches its storage clients by profile name for the process."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: Any, prefix: str) -> None:
        self.dir, self.server, self.prefix = tmp_path, server, prefix
        self.monkeypatch = monkeypatch
        self.profile = "p" + uuid.uuid4().hex[:8]
        self.write({self.profile: s3_profile(server, f"{BUCKET}/{prefix}base")})

    def write(self, profiles: Dict[str, Any], path_mapping: Optional[Dict[str, str]] = None) -> Path:
        f = self.dir / "msc.json"
        data: Dict[str, Any] = {"profiles": profiles}
        if path_mapping:
            data["path_mapping"] = path_mapping
        f.write_text(json.dumps(data))
        self.monkeypatch.setenv("MSC_CONFIG", str(f))
        return f

    def keys(self, under: str = "") -> list:
        client = make_client(self.server)
        return sorted(o.key for p in client.list_objects(BUCKET, self.prefix + under) for o in p.object_info)


@pytest.fixture
def msc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seaweed: Any, prefix: str) -> Iterator[Msc]:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    yield Msc(tmp_path, monkeypatch, seaweed, prefix)


def test_round_trip_through_a_profile(msc: Msc) -> None:
    sd = state_dict()
    url = f"msc://{msc.profile}/run7/step100"
    w = MultiStorageFileSystemWriter(url, thread_count=2)
    assert w.path == f"s3://{BUCKET}/{msc.prefix}base/run7/step100" and w.msc_path == url
    dcp.save(sd, storage_writer=w)
    # The profile's base_path places the objects; thread_count files per rank, as torch and MSC.
    assert msc.keys() == [
        f"{msc.prefix}base/run7/step100/.metadata",
        f"{msc.prefix}base/run7/step100/__0_0.distcp",
        f"{msc.prefix}base/run7/step100/__0_1.distcp",
    ]
    out = empty_like_sd(sd)
    r = MultiStorageFileSystemReader(url, thread_count=8)
    dcp.load(out, storage_reader=r)
    assert_same(sd, out)
    assert r.last_load_stats["direct"] >= 2, r.last_load_stats  # the parallel zero-copy loader ran


@pytest.mark.parametrize("thread_count", [1, 3])
def test_msc_writes_s3torch_reads(msc: Msc, thread_count: int) -> None:
    sd = state_dict()
    url = f"msc://{msc.profile}/from-msc"
    dcp.save(sd, storage_writer=msc_torch.MultiStorageFileSystemWriter(url, thread_count=thread_count))
    out = empty_like_sd(sd)
    dcp.load(out, storage_reader=MultiStorageFileSystemReader(url))
    assert_same(sd, out)


@pytest.mark.parametrize("thread_count", [1, 3])
def test_s3torch_writes_msc_reads(msc: Msc, thread_count: int) -> None:
    sd = state_dict()
    url = f"msc://{msc.profile}/from-s3torch"
    dcp.save(sd, storage_writer=MultiStorageFileSystemWriter(url, thread_count=thread_count))
    out = empty_like_sd(sd)
    dcp.load(out, storage_reader=msc_torch.MultiStorageFileSystemReader(url, thread_count=2))
    assert_same(sd, out)


def test_same_files_as_msc_writes(msc: Msc) -> None:
    """Same state dict, same thread_count: the same objects, byte for byte (but .metadata,
    which carries a save id, and the save mark that ends each of s3torch's files)."""
    sd = state_dict()
    client = make_client(msc.server)
    dcp.save(sd, storage_writer=msc_torch.MultiStorageFileSystemWriter(f"msc://{msc.profile}/a", thread_count=2))
    dcp.save(sd, storage_writer=MultiStorageFileSystemWriter(f"msc://{msc.profile}/b", thread_count=2))
    names = [k.rsplit("/", 1)[1] for k in msc.keys("base/a/")]
    assert names == [k.rsplit("/", 1)[1] for k in msc.keys("base/b/")] == [".metadata", "__0_0.distcp", "__0_1.distcp"]
    for name in names[1:]:
        a = client.get_object(BUCKET, f"{msc.prefix}base/a/{name}").read()
        b = client.get_object(BUCKET, f"{msc.prefix}base/b/{name}").read()
        records, save_id = _save_mark.split(b)
        assert a == records and save_id, name


def test_interchange_with_s3_storage_reader_and_writer(msc: Msc) -> None:
    sd = state_dict()
    cfg = make_client(msc.server).s3client_config
    s3url = f"s3://{BUCKET}/{msc.prefix}base/x"
    dcp.save(sd, storage_writer=MultiStorageFileSystemWriter(f"msc://{msc.profile}/x"))
    out = empty_like_sd(sd)
    dcp.load(out, storage_reader=S3StorageReader(REGION, s3url, s3client_config=cfg, endpoint=msc.server.endpoint))
    assert_same(sd, out)
    s3url2 = f"s3://{BUCKET}/{msc.prefix}base/y"
    dcp.save(sd, storage_writer=S3StorageWriter(REGION, s3url2, s3client_config=cfg, endpoint=msc.server.endpoint))
    out = empty_like_sd(sd)
    dcp.load(out, storage_reader=MultiStorageFileSystemReader(f"msc://{msc.profile}/y"))
    assert_same(sd, out)


def test_path_mapping_sends_s3_urls_through_a_profile(msc: Msc) -> None:
    """s3://virtual/... is mapped to profiles: their endpoint, credentials and base_path are
    used (bucket "virtual" does not exist; no credentials are in the environment)."""
    models = "m" + uuid.uuid4().hex[:8]
    msc.write(
        {
            msc.profile: s3_profile(msc.server, f"{BUCKET}/{msc.prefix}real"),
            models: s3_profile(msc.server, f"{BUCKET}/{msc.prefix}real/m"),
        },
        path_mapping={"s3://virtual/models/": f"msc://{models}/", "s3://virtual/": f"msc://{msc.profile}/"},
    )
    sd = {"w": torch.arange(1000.0)}
    w = MultiStorageFileSystemWriter("s3://virtual/models/run1")
    assert w.path == f"s3://{BUCKET}/{msc.prefix}real/m/run1"  # the longest source prefix wins
    dcp.save(sd, storage_writer=w)
    assert msc.keys() == [f"{msc.prefix}real/m/run1/.metadata", f"{msc.prefix}real/m/run1/__0_0.distcp"]
    out = {"w": torch.zeros(1000)}
    dcp.load(out, storage_reader=MultiStorageFileSystemReader(f"msc://{models}/run1"))
    assert torch.equal(out["w"], sd["w"])
    out = {"w": torch.zeros(1000)}
    dcp.load(out, storage_reader=MultiStorageFileSystemReader("s3://virtual/m/run1"))  # through the other profile
    assert torch.equal(out["w"], sd["w"])
    # MSC's own reader follows the same mapping to the same objects.
    out = {"w": torch.zeros(1000)}
    dcp.load(out, storage_reader=msc_torch.MultiStorageFileSystemReader("s3://virtual/models/run1"))
    assert torch.equal(out["w"], sd["w"])


def test_unmapped_s3_url_uses_the_environment(msc: Msc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", msc.server.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    url = f"s3://{BUCKET}/{msc.prefix}env/ckpt"
    sd = {"w": torch.arange(100.0)}
    dcp.save(sd, storage_writer=MultiStorageFileSystemWriter(url))
    out = {"w": torch.zeros(100)}
    dcp.load(out, storage_reader=MultiStorageFileSystemReader(url))
    assert torch.equal(out["w"], sd["w"])
    assert msc.keys("env/") == [f"{msc.prefix}env/ckpt/.metadata", f"{msc.prefix}env/ckpt/__0_0.distcp"]


def test_checkpoint_id_of_another_profile_rebinds(msc: Msc) -> None:
    """dcp.save/load(checkpoint_id=...) resets the writer/reader to the new path, through the
    new profile's endpoint and credentials."""
    other = "q" + uuid.uuid4().hex[:8]
    msc.write(
        {
            msc.profile: s3_profile(msc.server, f"{BUCKET}/{msc.prefix}one"),
            other: s3_profile(msc.server, f"{BUCKET}/{msc.prefix}two", s3={"addressing_style": "path"}),
        }
    )
    sd = {"w": torch.arange(10.0)}
    w = MultiStorageFileSystemWriter(f"msc://{msc.profile}/c")
    dcp.save(sd, storage_writer=w, checkpoint_id=f"msc://{other}/c")
    assert w.path == f"s3://{BUCKET}/{msc.prefix}two/c" and w.fs.client.s3client_config.force_path_style
    assert msc.keys() == [f"{msc.prefix}two/c/.metadata", f"{msc.prefix}two/c/__0_0.distcp"]
    out = {"w": torch.zeros(10)}
    dcp.load(
        out, storage_reader=MultiStorageFileSystemReader(f"msc://{msc.profile}/x"), checkpoint_id=f"msc://{other}/c"
    )
    assert torch.equal(out["w"], sd["w"])


def test_pickled_writer_and_reader_and_async_save(msc: Msc) -> None:
    """They pickle their paths, not their clients (as a checkpoint process receives them)."""
    sd = state_dict()
    url = f"msc://{msc.profile}/pickled"
    w = pickle.loads(pickle.dumps(MultiStorageFileSystemWriter(url, thread_count=2)))
    expected = state_dict()
    fut = dcp.async_save(sd, storage_writer=w, no_dist=True)
    sd["fp32"].add_(1)  # training goes on: the staged copy is what gets saved
    fut.result(timeout=120)
    out = empty_like_sd(sd)
    dcp.load(out, storage_reader=pickle.loads(pickle.dumps(MultiStorageFileSystemReader(url))))
    assert_same(expected, out)


def test_overwrite_false_refuses_an_existing_checkpoint(msc: Msc) -> None:
    url = f"msc://{msc.profile}/c"
    dcp.save({"w": torch.ones(3)}, storage_writer=MultiStorageFileSystemWriter(url))
    with pytest.raises(CheckpointException, match="already exists"):
        dcp.save({"w": torch.ones(3)}, storage_writer=MultiStorageFileSystemWriter(url, overwrite=False))


def test_file_system_operations_match_msc(msc: Msc) -> None:
    ours, theirs = MultiStorageFileSystem(), msc_torch.MultiStorageFileSystem()
    root = f"msc://{msc.profile}/fs"
    client = make_client(msc.server)
    for key in ("fs/a.bin", "fs/b.bin", "fs/sub/c.bin", "fs/sub/deeper/d.bin"):
        client.put(BUCKET, f"{msc.prefix}base/{key}", b"x" * 10)
    assert ours.ls(root) == sorted(theirs.ls(root)) == [f"{root}/a.bin", f"{root}/b.bin", f"{root}/sub"]
    assert ours.ls(root + "/sub") == sorted(theirs.ls(root + "/sub"))
    for p in (root, root + "/a.bin", root + "/sub", root + "/sub/", root + "/nope", root + "/su"):
        assert ours.exists(p) == theirs.exists(p), p
    assert ours.concat_path(root, "x/y") == str(theirs.concat_path(root, "x/y")) == f"{root}/x/y"
    with ours.create_stream(ours.concat_path(root, "e.bin"), "wb") as s:
        s.write(b"hello")
    with theirs.create_stream(theirs.concat_path(root, "e.bin"), "rb") as s:
        assert s.read() == b"hello"
    ours.rename(root + "/e.bin", root + "/f.bin")
    assert not ours.exists(root + "/e.bin") and ours.exists(root + "/f.bin")
    with ours.create_stream(root + "/f.bin", "rb") as s:
        assert s.read() == b"hello"
    ours.mkdir(root + "/newdir")  # no-op on object storage, as MSC's
    assert not ours.exists(root + "/newdir")
    ours.rm_file(root + "/f.bin")
    assert not ours.exists(root + "/f.bin")
    for fs in (ours, theirs):
        with pytest.raises(FileNotFoundError):
            fs.rm_file(root + "/f.bin")
    for cid in (root, "s3://bucket/x", "msc://p/"):
        assert MultiStorageFileSystemReader.validate_checkpoint_id(cid)
        assert MultiStorageFileSystemWriter.validate_checkpoint_id(cid)
    for cid in ("msc:///x", "s3:///x", "/local/path", "gs://b/x", 42):
        assert not MultiStorageFileSystemReader.validate_checkpoint_id(cid)


def test_missing_checkpoint_names_the_path(msc: Msc) -> None:
    with pytest.raises(CheckpointException, match=f"no DCP checkpoint at s3://{BUCKET}/{msc.prefix}base/none"):
        dcp.load({"w": torch.zeros(1)}, storage_reader=MultiStorageFileSystemReader(f"msc://{msc.profile}/none"))


# --- bad input: a typed error at construction, before any transfer --------------------------


@pytest.mark.parametrize("cls", [MultiStorageFileSystemReader, MultiStorageFileSystemWriter])
def test_bad_profiles_fail_at_construction(msc: Msc, cls: Any) -> None:
    f = msc.write(
        {
            msc.profile: s3_profile(msc.server, BUCKET),
            "nobucket": {"storage_provider": {"type": "s3", "options": {"endpoint_url": msc.server.endpoint}}},
            "posix": {"storage_provider": {"type": "file", "options": {"base_path": "/tmp"}}},
            "az": {"storage_provider": {"type": "azure", "options": {"base_path": "c"}}},
        }
    )
    cases = {
        "msc://nosuch/x": ("nosuch", "no such profile"),
        "msc://nobucket/x": ("nobucket", "base_path names no bucket"),
        "msc://posix/x": ("posix", "POSIX"),
        "msc://az/x": ("az", "'azure'"),
    }
    for url, (profile, what) in cases.items():
        with pytest.raises(MSCConfigError, match=what) as e:
            cls(url)
        assert e.value.config_file == str(f) and e.value.profile == profile
        assert str(f) in str(e.value) and repr(profile) in str(e.value)
    with pytest.raises(MSCConfigError, match="names no profile"):
        cls("msc:///x")
    with pytest.raises(MSCConfigError, match="neither msc://"):
        cls("/local/ckpt")
    with pytest.raises(ValueError, match="thread_count"):
        cls(f"msc://{msc.profile}/x", thread_count=0)
