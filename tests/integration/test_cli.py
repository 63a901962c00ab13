"""The command line (python -m s3torch <verb>) against SeaweedFS: ls, du, info, verify, cp.

Verbs run in-process through ``s3torch.cli.main`` with the endpoint and keys in the
environment, as a user's shell would have them."""

from __future__ import annotations

import filecmp
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import threading

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter

from s3torch._servers import REGION
from s3torch.cli import main
from s3torch.dcp import S3StorageReader, S3StorageWriter
from s3torch.dcp._record import HEAD_BYTES, TAIL_BYTES, locate
from tests.conftest import BUCKET, make_client
from tests.faults.proxy import Fault


@pytest.fixture
def env(seaweed_env):  # type: ignore[no-untyped-def]
    return seaweed_env


def cli(capsys, *argv: str):  # type: ignore[no-untyped-def]
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def state() -> dict:
    g = torch.Generator().manual_seed(3)
    return {
        "big": torch.randn(600, 1000, generator=g),  # 2.4 MB: direct GET
        "half": torch.randn(64, 33, generator=g).to(torch.bfloat16),  # small record: read whole
        "ids": torch.arange(5000),
        "scalar": torch.tensor(2.5),
        "extra": {"step": 11, "name": "run"},
    }


def assert_loaded(sd: dict, loaded: dict) -> None:
    for k in ("big", "half", "ids", "scalar"):
        assert torch.equal(sd[k], loaded[k]), k
    assert loaded["extra"] == sd["extra"]


def empty() -> dict:
    return {k: torch.zeros_like(v) for k, v in state().items() if isinstance(v, torch.Tensor)} | {
        "extra": {"step": 0, "name": ""}
    }


def test_cp_up_and_down_is_byte_exact_and_loads(env, tmp_path, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    sd = state()
    local = tmp_path / "fs"
    dcp.save(sd, storage_writer=FileSystemWriter(str(local)))
    uri = f"s3://{BUCKET}/{prefix}ckpt"

    code, out, err = cli(capsys, "cp", str(local), uri)
    assert code == 0, err
    assert "copied 2 files" in out
    loaded = empty()
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, uri, endpoint=env.endpoint))
    assert_loaded(sd, loaded)

    # An existing checkpoint is refused, then replaced with --overwrite.
    code, _, err = cli(capsys, "cp", str(local), uri)
    assert code == 2 and "already holds a checkpoint" in err and "--overwrite" in err
    code, _, err = cli(capsys, "cp", str(local), uri, "--overwrite")
    assert code == 0, err

    down = tmp_path / "down"
    code, out, err = cli(capsys, "cp", uri, str(down))
    assert code == 0, err
    names = sorted(os.listdir(local))
    assert sorted(os.listdir(down)) == names == [".metadata", "__0_0.distcp"]
    match, mismatch, errors = filecmp.cmpfiles(local, down, names, shallow=False)
    assert match == names and not mismatch and not errors
    loaded = empty()
    dcp.load(loaded, storage_reader=FileSystemReader(str(down)))
    assert_loaded(sd, loaded)
    code, _, err = cli(capsys, "cp", uri, str(down))
    assert code == 2 and "already holds a checkpoint" in err

    # Neither side on S3, a missing source: usage and not-found exits.
    assert cli(capsys, "cp", str(local), str(tmp_path / "x"))[0] == 2
    code, _, err = cli(capsys, "cp", f"s3://{BUCKET}/{prefix}nothing", str(tmp_path / "y"))
    assert code == 3 and "no DCP checkpoint" in err


def test_cp_down_of_a_checkpoint_saved_again_meanwhile_fails(env, proxy, tmp_path, prefix, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A save to the checkpoint's prefix while it is copied down: its data file replaced after
    the listing. Before, the copy completed with the new save's data file under the old save's
    .metadata (a checkpoint no save wrote); now every GET is held to the listed version."""
    sd = state()
    uri = f"s3://{BUCKET}/{prefix}ckpt"
    dcp.save(sd, storage_writer=S3StorageWriter(REGION, uri, endpoint=env.endpoint))
    client = make_client(env)
    key = f"{prefix}ckpt/__0_0.distcp"
    other = client.get_object(BUCKET, key).read()[::-1]  # same size, other bytes
    resave = proxy.replace_before_get(client, BUCKET, key, other, path=r"__0_0\.distcp")
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    down = tmp_path / "down"
    code, _, err = cli(capsys, "cp", uri, str(down))
    assert resave.injected == 1
    assert code == 4, err
    assert f"s3://{BUCKET}/{key}: replaced while it was copied" in err and "Copy again" in err
    assert not [n for n in os.listdir(down) if n.startswith(".metadata")]  # nothing loadable, no partial one


def _checkpoint_of(client, key_prefix: str, sizes: dict) -> dict:  # type: ignore[no-untyped-def]
    """Objects under ``key_prefix`` of the given sizes, plus a small ``.metadata``: what
    ``cp`` takes for a checkpoint (it copies bytes, it never reads them)."""
    files = {name: os.urandom(n) for name, n in sizes.items()} | {".metadata": b"m" * 100}
    for name, data in files.items():
        client.put(BUCKET, key_prefix + name, data)
    return files


def test_cp_down_that_cannot_fit_leaves_the_old_checkpoint(env, tmp_path, prefix, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A copy larger than the destination's free space (plus the files it replaces) is refused
    before anything is removed: with --overwrite too, the checkpoint already there stays whole."""
    import s3torch.cli.cp as cp

    uri = f"s3://{BUCKET}/{prefix}ckpt"
    _checkpoint_of(make_client(env), f"{prefix}ckpt/", {"a.bin": 3 << 20, "b.bin": 5 << 20})
    down = tmp_path / "down"
    down.mkdir()
    old = {".metadata": b"old metadata", "a.bin": b"old a" * 1000}
    for name, data in old.items():
        (down / name).write_bytes(data)
    free = (8 << 20) - len(old["a.bin"])  # short of the copy by the 100-byte .metadata, with a.bin's room
    monkeypatch.setattr(cp.shutil, "disk_usage", lambda path: shutil_usage(free))
    code, out, err = cli(capsys, "cp", uri, str(down), "--overwrite")
    assert code == 4, err
    assert "the checkpoint needs 8.39 MB and its filesystem has 8.38 MB free" in err
    assert "in files the copy would replace" in err and "nothing was copied" in err
    assert {n: (down / n).read_bytes() for n in os.listdir(down)} == old
    monkeypatch.setattr(cp.shutil, "disk_usage", lambda path: shutil_usage(free + 100))  # room enough
    code, out, err = cli(capsys, "cp", uri, str(down), "--overwrite")
    assert code == 0, err
    # A filesystem that reports no sizes at all (some FUSE ones) is not taken for a full one.
    monkeypatch.setattr(cp.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(0, 0, 0))  # type: ignore[attr-defined]
    code, out, err = cli(capsys, "cp", uri, str(tmp_path / "fuse"))
    assert code == 0, err


def shutil_usage(free: int):  # type: ignore[no-untyped-def]
    return shutil._ntuple_diskusage(free * 2, free, free)  # type: ignore[attr-defined]


_FULL_DISK_CHILD = """
import os, sys
import s3torch.cli.cp as cp
from s3torch.cli import main

check, dst, filler = cp._check_room, sys.argv[1], sys.argv[2]

def check_then_fill(*args):  # the free space is there when checked, then another writer takes it
    check(*args)
    if filler:
        with open(filler, "wb") as f:
            f.write(b"x" * (8 << 20))

cp._check_room = check_then_fill
sys.exit(main(["cp", sys.argv[3], dst]))
"""


def _small_filesystem_works() -> bool:
    """Whether this machine lets a test mount a tmpfs in a mount namespace of its own (root,
    or unprivileged user namespaces), so that nothing outside the test sees it."""
    cmd = ["unshare", "-m", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_cp_down_onto_a_filesystem_that_fills_fails_cleanly(env, tmp_path, prefix) -> None:  # type: ignore[no-untyped-def]
    """The destination's filesystem runs out of room between the free-space check and the
    files' allocation. Before, the files were sparse and the GETs wrote into their memory
    maps: the first page with no block to give killed the process with SIGBUS (exit -7, no
    message), leaving files of full size full of holes. Now every file is allocated before
    any GET: exit 4, one line that names the file, and the files this copy created removed.

    Where the machine lets the test mount one (a mount namespace of its own), the destination
    is a real 16 MiB tmpfs that another writer fills (ENOSPC); elsewhere the child's file size
    limit is below the larger file (EFBIG): the kernel refuses the allocation either way."""
    import resource

    uri = f"s3://{BUCKET}/{prefix}ckpt"
    _checkpoint_of(make_client(env), f"{prefix}ckpt/", {"a.bin": 3 << 20, "b.bin": 12 << 20})
    mnt = tmp_path / "small"
    mnt.mkdir()
    dst = mnt / "down"
    args = [sys.executable, "-c", _FULL_DISK_CHILD, str(dst)]
    if _small_filesystem_works():
        script = 'mount -t tmpfs -o size=16m tmpfs "$1" && shift && "$@"; rc=$?; ls -A "$0"/down 2>&1; exit $rc'
        cmd = ["unshare", "-m", "sh", "-c", script, str(mnt), str(mnt)] + args + [str(mnt / "filler"), uri]
        preexec, expect = None, "No space left on device"
    else:
        cmd = ["sh", "-c", '"$@"; rc=$?; ls -A "$0"/down 2>&1; exit $rc', str(mnt)] + args + ["", uri]
        preexec, expect = (lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))), "File too large"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=preexec)
    assert r.returncode == 4, (r.returncode, r.stderr[-2000:])
    assert f"{dst}/b.bin: {expect} (12.58 MB); the copy stopped before its .metadata" in r.stderr
    assert "removed the files it had only allocated" in r.stderr
    assert r.stdout.strip() == "", r.stdout  # the listing of down/, in the child's view: empty


def test_cp_down_syncs_the_data_before_the_metadata(env, tmp_path, prefix, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The copy is on disk in the order that keeps it safe across a power loss: every data
    file and its directory entry, then the .metadata (under its partial name), then its
    rename. Before, nothing was synced: a crash after success could leave the .metadata with
    data files that were never written."""
    uri = f"s3://{BUCKET}/{prefix}ckpt"
    _checkpoint_of(make_client(env), f"{prefix}ckpt/", {"a.bin": 3 << 20, "sub/b.bin": 1 << 20})
    down = tmp_path / "down"
    synced = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        real_fsync(fd)
        synced.append(os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), down))

    monkeypatch.setattr(os, "fsync", fsync)
    code, _, err = cli(capsys, "cp", uri, str(down))
    assert code == 0, err
    meta = ".metadata.s3torch-partial"
    assert sorted(synced[:2]) == ["a.bin", "sub/b.bin"] and sorted(synced[2:4]) == [".", "sub"]
    assert synced[4:] == [meta, "."], synced


@pytest.mark.parametrize("when", ["during", "after"])
def test_cp_up_of_a_checkpoint_saved_again_meanwhile_fails(env, proxy, tmp_path, prefix, when) -> None:  # type: ignore[no-untyped-def]
    """The local checkpoint is saved again while ``cp`` copies it up (the trainer writing the
    next step into the directory a sync job is copying):

    - ``during``: its data file is rewritten, shorter, when its first part reaches the server.
      Before, the file was read through a memory map, and the first read past the new end
      killed the copy with SIGBUS (exit -7, no message, the multipart upload left open);
    - ``after``: the data file is rewritten, same size, once its upload completes. Before,
      the second save's .metadata went up over the first save's data: a checkpoint no save
      wrote, loadable.

    Now both fail (exit 4) with one line naming the file, and no .metadata goes to S3. The
    copy runs as a process of its own, so a SIGBUS fails the test rather than the suite."""
    src = tmp_path / "ckpt"
    src.mkdir()
    data = src / "__0_0.distcp"
    # Multipart, and larger than the upload's window at --throughput-gbps 0.4 (8 parts of
    # 8 MiB): the copy cannot have read the whole file when its first part reaches the server.
    data.write_bytes(os.urandom(96 << 20))
    (src / ".metadata").write_bytes(b"m" * 100)

    def save_again() -> None:
        with open(data, "wb") as f:  # as torch's FileSystemWriter writes a file: truncate, write
            f.write(os.urandom(1 << 20) if when == "during" else os.urandom(96 << 20))

    rule = (
        Fault("call", method="PUT", path="partNumber=", times=1, call=save_again)
        if when == "during"
        else Fault("call", method="POST", path="uploadId=", times=1, call=save_again)
    )
    proxy.add(rule)
    uri = f"s3://{BUCKET}/{prefix}ckpt"
    env_vars = dict(os.environ, AWS_ENDPOINT_URL=proxy.endpoint)
    r = subprocess.run(
        [sys.executable, "-m", "s3torch", "cp", "--throughput-gbps", "0.4", str(src), uri],
        env=env_vars,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rule.injected == 1
    assert r.returncode == 4, (r.returncode, r.stderr[-2000:])
    assert f"{data}: changed while it was copied" in r.stderr and "Copy again" in r.stderr
    keys = [o.key for page in make_client(env).list_objects(BUCKET, prefix) for o in page.object_info]
    assert not [k for k in keys if k.endswith(".metadata")], keys
    if when == "during":
        assert keys == []  # the data file's upload was aborted


def test_cp_up_keeps_a_checkpoint_written_to_dst_meanwhile(env, proxy, tmp_path, prefix, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Without --overwrite, DST held no checkpoint when the copy began, and a save wrote one
    there before the copy's .metadata: that .metadata goes create-only (If-None-Match), so the
    save's stays and the copy fails (exit 2) saying so."""
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "__0_0.distcp").write_bytes(os.urandom(1000))
    (src / ".metadata").write_bytes(b"copied metadata")
    key = f"{prefix}ckpt/.metadata"
    direct = make_client(env)
    race = proxy.add(
        Fault("call", method="PUT", path=r"ckpt/\.metadata$", times=1, call=lambda: direct.put(BUCKET, key, b"saved"))
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    code, _, err = cli(capsys, "cp", str(src), f"s3://{BUCKET}/{prefix}ckpt")
    assert race.injected == 1
    assert code == 2, err
    assert f"s3://{BUCKET}/{key}: written by something else (a save or another copy) while this copy ran" in err
    assert direct.get_object(BUCKET, key).read() == b"saved"
    code, _, err = cli(capsys, "cp", str(src), f"s3://{BUCKET}/{prefix}ckpt", "--overwrite")
    assert code == 0, err
    assert direct.get_object(BUCKET, key).read() == b"copied metadata"


@pytest.mark.parametrize("path", ["direct", "mapped"])
def test_cp_down_of_more_files_than_the_process_may_open(env, tmp_path, prefix, capsys, monkeypatch, path) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint of more files than the process may hold open (a file a rank: 2,048 ranks
    against the common limit of 1,024). Before, the copy opened and mapped every file at once
    and failed ("Too many open files"); each file is now open only while a GET of it is in
    flight, written straight to disk, or (where there is no O_DIRECT) through its memory map."""
    import resource

    from s3torch import _direct_writes

    sizes = {f"__{r}_0.distcp": 1000 + r for r in range(300)} | {"sub/big.distcp": 3 << 20}
    files = _checkpoint_of(make_client(env), f"{prefix}ckpt/", sizes)
    down = tmp_path / "down"
    events = []
    real_fsync, real_open = os.fsync, os.open

    def where(fd: int) -> str:
        return os.path.relpath(os.readlink(f"/proc/self/fd/{fd}"), down)

    def fsync(fd: int) -> None:
        events.append(("fsync", where(fd)))
        real_fsync(fd)

    def opened(file: str, flags: int, *args: int) -> int:
        fd = real_open(file, flags, *args)
        if flags & getattr(os, "O_DIRECT", 0):
            events.append(("direct", where(fd)))
        return fd

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "open", opened)
    if path == "mapped":
        monkeypatch.setattr(_direct_writes, "supported", lambda: False)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # What this process holds now, and room for the command's own client (its connections).
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 128, hard))
    try:
        code, _, err = cli(capsys, "cp", f"s3://{BUCKET}/{prefix}ckpt", str(down))
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert code == 0, err
    for name, data in files.items():
        assert (down / name).read_bytes() == data, name
    kinds = [k for k, _ in events]
    before_fsyncs = events[: kinds.index("fsync")]
    assert {n for k, n in events if k == "fsync"} >= set(sizes)
    # Direct: the files of 4 KiB or more (the rest of a file goes through the page cache).
    assert [n for k, n in before_fsyncs if k == "direct"] == (["sub/big.distcp"] if path == "direct" else [])


def test_cp_down_holds_an_empty_file_to_its_listed_version(env, proxy, tmp_path, prefix, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A file listed empty and written after the listing: before, the copy wrote it empty
    without a request and succeeded, the one file not held to the listed version."""
    uri = f"s3://{BUCKET}/{prefix}ckpt"
    dcp.save(state(), storage_writer=S3StorageWriter(REGION, uri, endpoint=env.endpoint))
    client = make_client(env)
    key = f"{prefix}ckpt/notes.txt"
    client.put(BUCKET, key, b"")
    written = proxy.replace_before_get(client, BUCKET, key, b"written since", path=r"notes\.txt")
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    code, _, err = cli(capsys, "cp", uri, str(tmp_path / "down"))
    assert written.injected == 1
    assert code == 4 and f"s3://{BUCKET}/{key}: replaced while it was copied" in err, err
    client.put(BUCKET, key, b"")
    code, _, err = cli(capsys, "cp", uri, str(tmp_path / "again"))
    assert code == 0, err
    assert (tmp_path / "again" / "notes.txt").read_bytes() == b""


def test_cp_down_keeps_a_file_named_like_its_partial_metadata(env, tmp_path, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint prefix that also holds ``.metadata.s3torch-partial``: the name ``cp`` gives
    a ``.metadata`` until it is whole. Before, that file was overwritten by the partial
    ``.metadata`` and then renamed away: the copy lacked it."""
    uri = f"s3://{BUCKET}/{prefix}ckpt"
    dcp.save(state(), storage_writer=S3StorageWriter(REGION, uri, endpoint=env.endpoint))
    client = make_client(env)
    extra = os.urandom(3000)
    client.put(BUCKET, f"{prefix}ckpt/.metadata.s3torch-partial", extra)
    meta = client.get_object(BUCKET, f"{prefix}ckpt/.metadata").read()
    down = tmp_path / "down"
    code, out, err = cli(capsys, "cp", uri, str(down))
    assert code == 0, err
    assert sorted(os.listdir(down)) == [".metadata", ".metadata.s3torch-partial", "__0_0.distcp"]
    assert (down / ".metadata.s3torch-partial").read_bytes() == extra
    assert (down / ".metadata").read_bytes() == meta


def test_cp_up_of_a_large_file_is_multipart_and_exact(env, tmp_path, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    # Past several upload chunks and parts, with an odd size; checked byte for byte.
    src = tmp_path / "src"
    src.mkdir()
    blob = os.urandom(40 * 1024 * 1024 + 12345)
    (src / "__0_0.distcp").write_bytes(blob)
    (src / "sub").mkdir()
    (src / "sub" / "empty.bin").write_bytes(b"")
    (src / ".metadata").write_bytes(b"not read by cp")
    code, _, err = cli(capsys, "cp", str(src), f"s3://{BUCKET}/{prefix}big")
    assert code == 0, err
    client = make_client(env)
    assert client._get_native().get_bytes(BUCKET, f"{prefix}big/__0_0.distcp") == blob
    code, _, err = cli(capsys, "cp", f"s3://{BUCKET}/{prefix}big", str(tmp_path / "back"))
    assert code == 0, err
    assert (tmp_path / "back" / "__0_0.distcp").read_bytes() == blob
    assert (tmp_path / "back" / "sub" / "empty.bin").read_bytes() == b""


def test_throughput_gbps_reaches_the_client_and_refuses_nonsense(env, tmp_path, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    from s3torch.cli import build_parser
    from s3torch.cli._common import client_config

    for command in ("cp", "ls", "du", "info", "verify", "uploads"):
        args = build_parser().parse_args(
            [command, "--throughput-gbps", "2.5", f"s3://{BUCKET}/x", str(tmp_path)][: 5 if command == "cp" else 4]
        )
        assert client_config(args).throughput_target_gbps == 2.5
    assert client_config(build_parser().parse_args(["ls", f"s3://{BUCKET}/x"])).throughput_target_gbps == 10
    for bad in ("0", "-1", "nan", "inf", "fast"):
        with pytest.raises(SystemExit) as ei:
            main(["ls", "--throughput-gbps", bad, f"s3://{BUCKET}/x"])
        assert ei.value.code == 2
        assert "must be a positive number of Gbps" in capsys.readouterr().err
    src = tmp_path / "src"
    src.mkdir()
    (src / "__0_0.distcp").write_bytes(os.urandom(6 * 1024 * 1024))
    (src / ".metadata").write_bytes(b"m")
    code, _, err = cli(capsys, "cp", "--throughput-gbps", "1", str(src), f"s3://{BUCKET}/{prefix}tp")
    assert code == 0, err


def test_ls_and_du(env, tmp_path, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    client = make_client(env)
    sizes = {"a/x.bin": 10, "a/y.bin": 2000, "b.bin": 3}
    for k, n in sizes.items():
        client.put(BUCKET, prefix + k, b"z" * n)
    code, out, _ = cli(capsys, "ls", f"s3://{BUCKET}/{prefix}")
    assert code == 0
    lines = out.splitlines()
    assert any(line.split() == ["PRE", "a/"] for line in lines)
    assert any(line.split()[-2:] == ["3", "b.bin"] for line in lines)
    code, out, _ = cli(capsys, "ls", "-r", "--summarize", f"s3://{BUCKET}/{prefix}")
    listed = {line.split()[-1]: int(line.split()[-2]) for line in out.splitlines() if line.startswith("20")}
    assert listed == {prefix + k: n for k, n in sizes.items()}
    assert "Total Objects: 3" in out and "Total Size: 2013" in out
    code, out, _ = cli(capsys, "du", f"s3://{BUCKET}/{prefix}a/")
    assert code == 0 and out.startswith("2 objects") and "2,010 bytes" in out
    code, out, _ = cli(capsys, "du", "--bytes", f"s3://{BUCKET}/{prefix}")
    assert out.split()[:3] == ["3", "objects", "2013"]
    code, _, err = cli(capsys, "ls", f"s3://{BUCKET}/{prefix}nothing/")
    assert code == 3 and "nothing under" in err
    assert cli(capsys, "du", f"s3://{BUCKET}/{prefix}nothing/")[0] == 3
    assert cli(capsys, "ls", "not-s3")[0] == 2


def test_info(env, tmp_path, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    sd = state()
    uri = f"s3://{BUCKET}/{prefix}saved"
    dcp.save(sd, storage_writer=S3StorageWriter(REGION, uri, endpoint=env.endpoint))
    code, out, err = cli(capsys, "info", "--json", uri)
    assert code == 0, err
    d = json.loads(out)
    assert d["written_by"] == "s3torch (S3StorageWriter)" and d["written_to"] == uri and not d["copied_since"]
    assert d["save_marks"] == 1  # its one file
    tensors = {t["fqn"]: t for t in d["tensors"]}
    assert tensors["big"] == {"fqn": "big", "dtype": "float32", "shape": [600, 1000], "chunks": 1, "bytes": 2_400_000}
    assert tensors["half"]["dtype"] == "bfloat16" and tensors["scalar"]["shape"] == []
    assert {b["fqn"] for b in d["byte_items"]} == {"extra.step", "extra.name"}
    client = make_client(env)
    sizes = {o.key.rsplit("/", 1)[1]: o.size for p in client.list_objects(BUCKET, prefix + "saved/") for o in p.objects}
    assert {f["name"]: f["size"] for f in d["files"]} == {k: v for k, v in sizes.items() if k != ".metadata"}
    assert d["totals"]["file_bytes"] == sum(f["size"] for f in d["files"])
    assert d["totals"]["tensor_bytes"] == sum(t.numel() * t.element_size() for t in sd.values() if torch.is_tensor(t))

    # A FileSystemWriter checkpoint, local and after cp up: the text form.
    local = tmp_path / "fs"
    dcp.save(sd, storage_writer=FileSystemWriter(str(local)))
    code, out, _ = cli(capsys, "info", str(local))
    assert code == 0 and "FileSystemWriter" in out and "copied here since" not in out
    assert "save marks   0 of 1 files (not an s3torch save)" in out
    assert cli(capsys, "cp", str(local), f"s3://{BUCKET}/{prefix}up")[0] == 0
    code, out, _ = cli(capsys, "info", f"s3://{BUCKET}/{prefix}up")
    assert "FileSystemWriter" in out and f"written to   {local}  (copied here since)" in out
    assert any(line.split()[:4] == ["big", "float32", "(600,", "1000)"] for line in out.splitlines())
    assert cli(capsys, "info", f"s3://{BUCKET}/{prefix}none")[0] == 3


def _flip_tensor_byte(client, key: str, record_offset: int, record_len: int) -> int:  # type: ignore[no-untyped-def]
    """Flip one byte in the middle of the tensor data of the record; returns its file offset."""
    data = bytearray(client._get_native().get_bytes(BUCKET, key))
    record = bytes(data[record_offset : record_offset + record_len])
    layout = locate(record[:HEAD_BYTES], record[-TAIL_BYTES:], record_len)
    assert layout is not None
    at = record_offset + layout.data_offset + layout.data_len // 2
    data[at] ^= 0x01
    client.put(BUCKET, key, bytes(data))
    return at


def test_verify_passes_then_names_every_flipped_tensor(env, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    uri = f"s3://{BUCKET}/{prefix}v"
    dcp.save(state(), storage_writer=S3StorageWriter(REGION, uri, endpoint=env.endpoint))
    code, out, err = cli(capsys, "verify", uri)
    assert code == 0, err
    assert out.startswith(f"OK  {uri}/: CRC32 of all 4 tensors matches")

    client = make_client(env)
    md = pickle.loads(client._get_native().get_bytes(BUCKET, f"{prefix}v/.metadata"))
    where = {i.fqn: info for i, info in md.storage_data.items()}
    for fqn in ("big", "half"):  # one read by a direct GET, one within its whole-record probe
        info = where[fqn]
        _flip_tensor_byte(client, f"{prefix}v/{info.relative_path}", info.offset, info.length)
    code, out, err = cli(capsys, "verify", uri, "--group-bytes", "1000000")
    assert code == 1, out + err
    bad = [line for line in out.splitlines() if line.startswith("CORRUPT")]
    assert len(bad) == 2, out
    for fqn in ("big", "half"):
        info = where[fqn]
        line = next(b for b in bad if b.split()[1] == fqn)
        assert f"file {uri}/{info.relative_path}  offset {info.offset}:" in line and "CRC32" in line
    assert "2 of 6 items failed verification" in out


def test_verify_names_a_tensor_whose_chunks_do_not_cover_it(env, tmp_path, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    """A .metadata that says "big" has 1200 rows while its one chunk holds 600 (written by
    someone else, or tampered with): torch's planner loads the 600 and leaves the other rows of
    the destination as they were, with no error. verify names the tensor and the rows; so
    does dcp.load, before it reads anything."""
    from torch.distributed.checkpoint.api import CheckpointException

    from s3torch.dcp import CheckpointCorruptError

    uri = f"s3://{BUCKET}/{prefix}short"
    dcp.save(state(), storage_writer=S3StorageWriter(REGION, uri, endpoint=env.endpoint))
    client = make_client(env)
    md = pickle.loads(client._get_native().get_bytes(BUCKET, f"{prefix}short/.metadata"))
    md.state_dict_metadata["big"].size = torch.Size([1200, 1000])
    client.put(BUCKET, f"{prefix}short/.metadata", pickle.dumps(md))
    dest = {**empty(), "big": torch.full((1200, 1000), -1.0)}
    with pytest.raises(CheckpointException) as info:
        dcp.load(dest, storage_reader=S3StorageReader(REGION, uri, endpoint=env.endpoint))
    ((err, _tb),) = info.value.failures.values()
    assert isinstance(err, CheckpointCorruptError), err
    assert f"{uri}: tensor 'big' (1200x1000): in the .metadata, rows 600..1200 of 1200 are in no chunk" in str(err)
    assert bool((dest["big"] == -1).all())  # nothing read
    # torch's own reader, on a local copy: loads the 600 rows and leaves the rest, no error.
    assert cli(capsys, "cp", uri, str(tmp_path / "down"))[0] == 0
    dcp.load(dest, storage_reader=FileSystemReader(str(tmp_path / "down")))
    assert bool((dest["big"][600:] == -1).all()) and not bool((dest["big"][:600] == -1).any())
    code, out, err = cli(capsys, "verify", uri)
    assert code == 1, out + err
    assert out.startswith(
        "CORRUPT  big: tensor of 1200x1000 in 1 chunk of the .metadata: rows 600..1200 of 1200 are in no chunk "
        "(a load would leave them as they were in its destination)"
    ), out
    assert "0 of 6 items failed verification; 1 of 4 tensors are not held whole by their chunks" in out


def test_chunks_that_overlap_as_much_as_they_miss_are_refused_by_load(env, prefix) -> None:  # type: ignore[no-untyped-def]
    """A .metadata whose two chunks of "big" hold rows 0..300 and 200..500 of 600: their volumes
    add up to the tensor, so a sum of volumes passed them, and the load would have left rows
    500..600 of the destination as they were. The load now checks the chunks' ranges."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    from s3torch.dcp import CheckpointCorruptError

    uri = f"s3://{BUCKET}/{prefix}overlap"
    dcp.save(state(), storage_writer=S3StorageWriter(REGION, uri, endpoint=env.endpoint))
    client = make_client(env)
    md = pickle.loads(client._get_native().get_bytes(BUCKET, f"{prefix}overlap/.metadata"))
    md.state_dict_metadata["big"].chunks = [
        ChunkStorageMetadata(offsets=torch.Size([0, 0]), sizes=torch.Size([300, 1000])),
        ChunkStorageMetadata(offsets=torch.Size([200, 0]), sizes=torch.Size([300, 1000])),
    ]
    client.put(BUCKET, f"{prefix}overlap/.metadata", pickle.dumps(md))
    dest = {**empty(), "big": torch.full((600, 1000), -1.0)}
    with pytest.raises(CheckpointException) as info:
        dcp.load(dest, storage_reader=S3StorageReader(REGION, uri, endpoint=env.endpoint))
    ((err, _tb),) = info.value.failures.values()
    assert isinstance(err, CheckpointCorruptError), err
    assert "tensor 'big' (600x1000): in the .metadata, the chunks at [0, 0] and [200, 0] overlap" in str(err)
    assert bool((dest["big"] == -1).all())  # nothing read


def test_a_tensor_placed_past_its_storage_fails_verify_and_load(env, tmp_path, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    """A record whose data.pkl puts the tensor one element past the end of its storage (a
    checkpoint written by someone else; one byte, its .metadata consistent). Before, ``dcp.load``
    filled the tensor with the storage shifted by one and the zip's bytes after it, and
    ``verify`` passed it (the storage's CRC32 matches). torch.load refuses such a record."""
    from torch.distributed.checkpoint.api import CheckpointException

    local = tmp_path / "fs"
    dcp.save({"t": torch.arange(10), "u": torch.ones(3)}, storage_writer=FileSystemWriter(str(local)))
    data = (local / "__0_0.distcp").read_bytes()
    assert data.count(b"K\x00K\n\x85") == 1  # t's storage offset 0, then its size (10,)
    (local / "__0_0.distcp").write_bytes(data.replace(b"K\x00K\n\x85", b"K\x01K\n\x85"))
    uri = f"s3://{BUCKET}/{prefix}shifted"
    assert cli(capsys, "cp", str(local), uri)[0] == 0
    code, out, err = cli(capsys, "verify", uri)
    assert code == 1, out + err
    assert out.startswith("CORRUPT  t  ") and "the checkpoint file is corrupt" in out
    sd = {"t": torch.zeros(10, dtype=torch.int64), "u": torch.zeros(3)}
    with pytest.raises(CheckpointException, match="item t at .*the checkpoint file is corrupt"):
        dcp.load(sd, storage_reader=S3StorageReader(REGION, uri, endpoint=env.endpoint))


def test_verify_missing_and_truncated(env, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    code, _, err = cli(capsys, "verify", f"s3://{BUCKET}/{prefix}absent")
    assert code == 3 and f"no DCP checkpoint at s3://{BUCKET}/{prefix}absent/" in err
    client = make_client(env)
    client.put(BUCKET, f"{prefix}junk/.metadata", b"not a pickle")
    code, _, err = cli(capsys, "verify", f"s3://{BUCKET}/{prefix}junk")
    assert code == 4 and "is not a DCP checkpoint's metadata" in err
    # A data file cut short: the items past the cut are named.
    uri = f"s3://{BUCKET}/{prefix}t"
    dcp.save(state(), storage_writer=S3StorageWriter(REGION, uri, endpoint=env.endpoint))
    key = f"{prefix}t/__0_0.distcp"
    data = client._get_native().get_bytes(BUCKET, key)
    client.put(BUCKET, key, data[: len(data) // 2])
    code, out, err = cli(capsys, "verify", uri)
    assert code == 1, out + err
    assert "CORRUPT" in out and "failed verification" in out


def test_library_progress_summary_and_no_threads_left(env, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    uri = f"s3://{BUCKET}/{prefix}p"
    dcp.save(state(), storage_writer=S3StorageWriter(REGION, uri, endpoint=env.endpoint, progress=True))
    loaded = empty()
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, uri, endpoint=env.endpoint, progress=True))
    out = capsys.readouterr().out
    assert f"s3torch: DCP save to {uri}: " in out and f"s3torch: DCP load from {uri}: " in out
    assert not [t for t in threading.enumerate() if t.name == "s3torch-progress"]


def test_entry_point_help() -> None:
    r = subprocess.run([sys.executable, "-m", "s3torch", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for verb in ("cp", "du", "info", "ls", "serve", "verify"):
        assert f"    {verb} " in r.stdout
    r = subprocess.run([sys.executable, "-m", "s3torch", "cp", "--help"], capture_output=True, text=True, timeout=60)
    assert "--overwrite" in r.stdout and "exit codes:" in r.stdout


def test_uploads_lists_and_aborts_incomplete_uploads(env, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    client = make_client(env)
    up = client.upload(BUCKET, f"{prefix}ckpt/__0_0.distcp")
    up.write(os.urandom(client.s3client_config.part_size + 1))  # a part sent, never completed
    uri = f"s3://{BUCKET}/{prefix}"
    code, out, _ = cli(capsys, "uploads", uri)
    assert code == 0 and f"{prefix}ckpt/__0_0.distcp" in out and "1 incomplete upload(s) found" in out
    code, out, _ = cli(capsys, "uploads", uri, "--abort", "--older-than", "1h")  # too recent: kept
    assert code == 0 and "0 incomplete upload(s) aborted" in out
    assert len(client.list_multipart_uploads(BUCKET, prefix)) == 1
    code, _, err = cli(capsys, "uploads", uri, "--older-than", "soon")
    assert code == 2 and "--older-than" in err
    code, out, _ = cli(capsys, "uploads", uri, "--abort")
    assert code == 0 and "aborted" in out and "1 incomplete upload(s) aborted" in out
    assert client.list_multipart_uploads(BUCKET, prefix) == []
    del up


def test_uploads_abort_reports_each_upload_and_goes_on_past_a_refusal(env, prefix, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """One upload the server refuses to abort (403) among three: the other two are aborted,
    each line says what became of its upload, and the exit code says not all went (before,
    the refusal ended the command and the uploads after it were not tried)."""
    from tests.faults.proxy import FaultProxy

    s3 = env.boto3_client()
    keys = [f"{prefix}u/{name}" for name in ("a", "b-refused", "c")]
    for k in keys:
        s3.create_multipart_upload(Bucket=BUCKET, Key=k)
    with FaultProxy.in_front_of(env.endpoint) as proxy:
        proxy.add(Fault("error", method="DELETE", path=r"b-refused\?uploadId=", status=403, code="AccessDenied"))
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        code, out, _ = cli(capsys, "uploads", f"s3://{BUCKET}/{prefix}u/", "--abort")
    lines = {k: line for k in keys for line in out.splitlines() if f"s3://{BUCKET}/{k} " in line}
    assert code == 4, out
    assert lines[keys[0]].endswith(" aborted") and lines[keys[2]].endswith(" aborted"), out
    assert "NOT aborted: " in lines[keys[1]] and "AccessDenied" in lines[keys[1]], out
    assert "2 incomplete upload(s) aborted" in out
    assert [u["Key"] for u in s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])] == [keys[1]]


def _weights(env, prefix: str) -> dict:  # type: ignore[no-untyped-def]
    """Two safetensors shards and an index (s3torch's uploads store a full-object CRC32C), and
    a file written with no checksum, under ``prefix``."""
    from s3torch import S3Client
    from s3torch.safetensors import save_file

    g = torch.Generator().manual_seed(9)
    sd = {"embed.weight": torch.randn(300, 64, generator=g), "norm.weight": torch.randn(64, generator=g)}
    client = make_client(env, part_size=5 << 20)
    save_file({"embed.weight": sd["embed.weight"]}, f"s3://{BUCKET}/{prefix}hf/model-1.safetensors", client=client)
    save_file({"norm.weight": sd["norm.weight"]}, f"s3://{BUCKET}/{prefix}hf/model-2.safetensors", client=client)
    index = {
        "metadata": {},
        "weight_map": {"embed.weight": "model-1.safetensors", "norm.weight": "model-2.safetensors"},
    }
    client.put(BUCKET, f"{prefix}hf/model.safetensors.index.json", json.dumps(index).encode())
    plain = S3Client(REGION, endpoint=env.endpoint, s3client_config=make_client(env, checksums="off").s3client_config)
    save_file(sd, f"s3://{BUCKET}/{prefix}plain/model.safetensors", client=plain, metadata={"format": "pt"})
    return sd


def test_info_and_verify_of_safetensors_weights(env, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    """info describes weights from their headers; verify reads every file and checks it
    against S3's stored checksum; a file with none is named UNCHECKED (exit 0); a folder with
    nothing there exits 3."""
    _weights(env, prefix)
    folder = f"s3://{BUCKET}/{prefix}hf/"
    code, out, err = cli(capsys, "info", folder)
    assert code == 0, err
    assert "2 tensors (77.06 kB), 2 files" in out and "checksum: full-object CRC32C" in out
    assert "embed.weight" in out and "F32" in out and "(300, 64)" in out
    code, out, err = cli(capsys, "info", "--json", f"{folder}model.safetensors.index.json")
    d = json.loads(out)
    assert d["format"] == "safetensors" and d["totals"]["tensors"] == 2
    assert [t["name"] for t in d["tensors"]] == ["embed.weight", "norm.weight"]
    code, out, err = cli(capsys, "verify", folder)
    assert code == 0, err
    assert out.count("OK         ") == 2 and "CRC32C checked" in out
    assert "2 of 2 files match their stored checksums, every header valid" in out
    plain = f"s3://{BUCKET}/{prefix}plain/model.safetensors"
    code, out, err = cli(capsys, "verify", plain)
    assert code == 0, err
    assert "UNCHECKED" in out and "the object has no stored checksum" in out
    assert "1 file has no stored checksum and was not checked" in out
    code, out, err = cli(capsys, "info", plain)
    assert code == 0 and "metadata     format=pt" in out
    code, out, err = cli(capsys, "verify", f"s3://{BUCKET}/{prefix}nothing/")
    assert code == 3, (out, err)


def test_info_and_verify_of_a_distributed_saves_pieces(env, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    """A folder of torch's save_distributed=True files (no index): info shows each tensor
    whole, with its pieces; verify checks every file and that the pieces tile each tensor. A
    rank's file gone: both exit 1 naming the rows no file holds."""
    from s3torch.safetensors import save_file

    client = make_client(env)
    whole = torch.arange(8 * 6, dtype=torch.float32).reshape(8, 6)
    folder = f"s3://{BUCKET}/{prefix}dist/"
    for rank, (lo, hi) in enumerate([(0, 3), (3, 5), (5, 8)]):
        info = json.dumps({"w": {"saved_offsets": [lo, 0]}})
        tensors = {"w": whole[lo:hi].clone(), **({"bias": torch.ones(6)} if rank == 0 else {})}
        name = f"shard-{rank + 1:05d}-model-00001-of-00001.safetensors"
        save_file(tensors, folder + name, client=client, metadata={"DCP_SHARDING_INFO": info})
    code, out, err = cli(capsys, "info", folder)
    assert code == 0, err
    assert "(safetensors, the pieces of a distributed save)" in out and "2 tensors (216 B), 3 files" in out
    assert re.search(r"w +F32 +\(8, 6\) +192 B  in 3 pieces", out), out
    code, out, err = cli(capsys, "info", "--json", folder)
    d = json.loads(out)
    (w,) = [t for t in d["tensors"] if t["name"] == "w"]
    assert d["distributed"] and w["shape"] == [8, 6] and [p["offsets"] for p in w["pieces"]] == [[0, 0], [3, 0], [5, 0]]
    code, out, err = cli(capsys, "verify", folder)
    assert code == 0, err
    assert "3 of 3 files match their stored checksums, every header valid, every tensor's pieces present" in out
    client.delete_object(BUCKET, f"{prefix}dist/shard-00002-model-00001-of-00001.safetensors")
    for verb in ("info", "verify"):
        code, out, err = cli(capsys, verb, folder)
        assert code == 1, (out, err)
        assert "tensor 'w' (8x6, in 2 pieces): rows 3..5 of 8 are in none of its files" in err
    # A piece of another save, sharded differently, in the same folder.
    info = json.dumps({"w": {"saved_offsets": [2, 0]}})
    save_file(
        {"w": whole[2:5].clone()},
        f"{folder}shard-00009-model-00001-of-00001.safetensors",
        client=client,
        metadata={"DCP_SHARDING_INFO": info},
    )
    code, out, err = cli(capsys, "verify", folder)
    assert code == 1 and "overlap: pieces of two saves sharded differently?" in err, (out, err)


def test_verify_of_safetensors_weights_names_bytes_that_fail_their_checksum(
    env, proxy, prefix, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """One byte of a file flipped on its way to verify (the proxy's corrupt_response, on the
    GET of the whole file, not the header's): CORRUPT naming it, both CRCs, exit 1."""
    _weights(env, prefix)
    flip = proxy.add(
        Fault(
            "corrupt_response", method="GET", path=r"model-1\.safetensors", range=r"^bytes=0-(?!262143$)\d+$", times=1
        )
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    code, out, err = cli(capsys, "verify", f"s3://{BUCKET}/{prefix}hf/model.safetensors.index.json")
    assert flip.injected == 1
    assert code == 1, (out, err)
    assert f"CORRUPT    s3://{BUCKET}/{prefix}hf/model-1.safetensors: " in out
    assert "do not match the object's stored CRC32C" in out
    assert f"OK         s3://{BUCKET}/{prefix}hf/model-2.safetensors" in out
    assert "1 of 2 files failed verification" in out
