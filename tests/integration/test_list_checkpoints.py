"""``list_checkpoints``, ``latest_checkpoint`` and ``s3torch ls --checkpoints`` against
SeaweedFS: real saves of a run, one of them rolled back and one that died before its
.metadata; resuming from the latest, keeping the last two."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Dict

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3torch import S3Exception, S3InvalidArgumentError, S3NotFoundError
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch.dcp import (
    S3StorageReader,
    S3StorageWriter,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    remove_checkpoint,
)
from tests.conftest import BUCKET, make_client
from tests.integration.test_cli import cli


@pytest.fixture
def env(seaweed_env):  # type: ignore[no-untyped-def]
    return seaweed_env


def model(step: int) -> Dict[str, torch.Tensor]:
    return {"w": torch.full((64, 32), float(step)), "step": torch.tensor(step)}


def save(env, path: str, step: int) -> None:  # type: ignore[no-untyped-def]
    dcp.save(model(step), storage_writer=S3StorageWriter(REGION, path, endpoint=env.endpoint))


@pytest.fixture
def run(env, prefix):  # type: ignore[no-untyped-def]
    """A run's checkpoints, saved in this order (a second apart: S3 dates to the second):
    step9, step10, step2000, then, rolled back, step1100; then step3000's data file without a
    .metadata (a save that died)."""
    root = f"s3://{BUCKET}/{prefix}run/"
    for step in (9, 10, 2000, 1100):
        save(env, f"{root}step{step}", step)
        time.sleep(1.05)
    make_client(env).put(BUCKET, f"{prefix}run/step3000/__0_0.distcp", b"x" * 100)
    return root


def test_list_and_resume_from_the_latest_save_not_the_highest_step(env, run) -> None:  # type: ignore[no-untyped-def]
    found = list_checkpoints(run, REGION, endpoint=env.endpoint)
    assert [(c.path[len(run) :], c.complete) for c in found] == [
        ("step9/", True),
        ("step10/", True),
        ("step2000/", True),
        ("step1100/", True),
        ("step3000/", False),
    ]
    assert all(c.kind == "dcp" and c.saved is not None for c in found)
    assert found[3].files == 2 and found[3].bytes > 64 * 32 * 4 and found[4].bytes == 100
    ckpt = latest_checkpoint(run, REGION, endpoint=env.endpoint)
    assert ckpt == run + "step1100/"
    loaded = model(0)
    dcp.load(loaded, storage_reader=S3StorageReader(REGION, ckpt, endpoint=env.endpoint))
    assert torch.equal(loaded["w"], model(1100)["w"]) and int(loaded["step"]) == 1100

    # a load pointed at the run folder says where its checkpoints are
    with pytest.raises(CheckpointException) as info:
        dcp.load(model(0), storage_reader=S3StorageReader(REGION, run, endpoint=env.endpoint))
    ((err, _tb),) = info.value.failures.values()
    assert isinstance(err, S3NotFoundError)
    assert f"; 4 checkpoints in folders below it, the newest {run}step1100/" in str(err)
    with pytest.raises(CheckpointException) as info:
        dcp.load(model(0), storage_reader=S3StorageReader(REGION, run + "step3000", endpoint=env.endpoint))
    assert "a save that did not finish" in str(next(iter(info.value.failures.values()))[0])

    # keep the last two complete ones, as docs/dcp.md shows
    with pytest.raises(S3InvalidArgumentError, match="keep must be at least 1"):
        prune_checkpoints(run, 0, REGION, endpoint=env.endpoint)
    with pytest.raises(S3InvalidArgumentError, match="not a whole bucket"):
        prune_checkpoints(f"s3://{BUCKET}", 2, REGION, endpoint=env.endpoint)
    assert prune_checkpoints(run, 2, REGION, endpoint=env.endpoint) == [run + "step9/", run + "step10/"]
    left = list_checkpoints(run, REGION, endpoint=env.endpoint)
    assert [c.path[len(run) :] for c in left] == ["step2000/", "step1100/", "step3000/"]
    assert prune_checkpoints(run, 2, REGION, endpoint=env.endpoint) == []  # nothing more to remove
    remove_checkpoint(run + "step2000", REGION, endpoint=env.endpoint)
    assert latest_checkpoint(run, REGION, endpoint=env.endpoint) == run + "step1100/"


def test_ls_checkpoints_lists_them_and_latest_prints_the_path(env, run, capsys) -> None:  # type: ignore[no-untyped-def]
    ep = ("--endpoint", env.endpoint, "--region", REGION)
    code, out, err = cli(capsys, "ls", "--checkpoints", "--summarize", run, *ep)
    assert code == 0, err
    lines = out.splitlines()
    assert [ln.split()[-1][len(run) :] for ln in lines[:5]] == [
        "step9/",
        "step10/",
        "step2000/",
        "step1100/",
        "step3000/",
    ]
    assert all(" dcp " in ln for ln in lines[:4]) and " incomplete " in lines[4]
    assert lines[4].split()[2:4] == ["100", "1"]  # bytes, files
    assert "Total: 5 (1 incomplete)" in out
    code, out, err = cli(capsys, "ls", "--latest", run.rstrip("/"), *ep)  # the prefix is a folder either way
    assert (code, out) == (0, run + "step1100/\n"), err

    # info and verify of a folder that holds none say where the checkpoints are
    code, _, err = cli(capsys, "info", run, *ep)
    assert code == 3 and f"4 checkpoints in folders below it, the newest {run}step1100/" in err
    code, _, err = cli(capsys, "verify", run + "step3000", *ep)
    assert code == 3 and "without a .metadata are a save that did not finish" in err

    # rm --keep 2: the two oldest go; a checkpoint in a deeper folder (another run's), the
    # incomplete save and what --keep is not given are left
    bucket_prefix = run[len(f"s3://{BUCKET}/") :]
    make_client(env).put(BUCKET, bucket_prefix + "other/step1/.metadata", b"m")
    for bad in (("--keep", "0", run), ("--keep", "2", "--recursive", run), ("--keep", "2", f"s3://{BUCKET}")):
        code, _, err = cli(capsys, "rm", *bad, *ep)
        assert code == 2, (bad, err)
    code, out, err = cli(capsys, "rm", "--keep", "2", "--dry-run", run, *ep)
    assert code == 0, err
    assert out.splitlines()[:2] == [f"would remove {run}step9/ (2 objects)", f"would remove {run}step10/ (2 objects)"]
    assert "would remove 2 checkpoints, 4 objects" in out
    code, out, err = cli(capsys, "rm", "--keep", "2", run, *ep)
    assert code == 0, err
    left = list_checkpoints(run, REGION, endpoint=env.endpoint)
    assert sorted(c.path[len(run) :] for c in left) == ["other/step1/", "step1100/", "step2000/", "step3000/"]


def test_a_prefix_without_checkpoints(env, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    make_client(env).put(BUCKET, f"{prefix}data/a.bin", b"a")
    where = f"s3://{BUCKET}/{prefix}"
    assert list_checkpoints(where, REGION, endpoint=env.endpoint) == []
    assert latest_checkpoint(where, REGION, endpoint=env.endpoint) is None
    ep = ("--endpoint", env.endpoint, "--region", REGION)
    code, _, err = cli(capsys, "ls", "--checkpoints", where, *ep)
    assert code == 3 and "no DCP checkpoint or safetensors model under" in err
    code, out, err = cli(capsys, "ls", "--latest", where, *ep)
    assert (code, out) == (3, "") and "no complete DCP checkpoint under" in err
    with pytest.raises(S3NotFoundError):
        list_checkpoints("s3://no-such-bucket-s3torch/run/", REGION, endpoint=env.endpoint)


def test_latest_refuses_to_print_a_path_a_terminal_would_act_on(env, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    make_client(env).put(BUCKET, f"{prefix}step\u202e1/.metadata", b"m")  # a bidi override in the key
    where = f"s3://{BUCKET}/{prefix}"
    assert latest_checkpoint(where, REGION, endpoint=env.endpoint) == f"{where}step\u202e1/"
    ep = ("--endpoint", env.endpoint, "--region", REGION)
    code, out, err = cli(capsys, "ls", "--latest", where, *ep)
    assert (code, out) == (4, "") and "\\u202e" in err and "\u202e" not in err
    code, out, err = cli(capsys, "ls", "--checkpoints", where, *ep)
    assert code == 0 and "step\\u202e1/" in out and "\u202e" not in out


def test_every_server_dates_what_it_lists(server, prefix) -> None:  # type: ignore[no-untyped-def]
    client = make_client(server)
    for name in ("a/.metadata", "a/__0_0.distcp", "b/model.safetensors", "c/__0_0.distcp"):
        client.put(BUCKET, prefix + name, b"x" * 10)
    found = list_checkpoints(
        f"s3://{BUCKET}/{prefix}", REGION, endpoint=server.endpoint, s3client_config=client.s3client_config
    )
    assert sorted((c.path.rsplit("/", 2)[1], c.kind, c.complete, c.files) for c in found) == [
        ("a", "dcp", True, 2),
        ("b", "safetensors", True, 1),
        ("c", "dcp", False, 1),
    ]
    for c in found:  # LastModified parsed, in UTC, around now
        assert c.saved is not None and c.saved.tzinfo is not None
        assert abs((c.saved - datetime.now(timezone.utc)).total_seconds()) < 600


def test_a_prefix_ending_in_a_double_slash_on_seaweedfs_is_refused_not_misnamed(seaweed, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    """SeaweedFS (4.48) stores ``a//run/x`` as ``a/run/x`` and lists it under the prefix
    ``a//``: taken as listed, every name below the prefix would lose its first character
    (``un/x``). The listing is refused, saying why; ``ls`` exits 4 with that line."""
    client = make_client(seaweed)
    client.put(BUCKET, f"{prefix}a//run/step1/.metadata", b"m")
    with pytest.raises(S3Exception, match=r"which is not under the prefix asked for \(a server that normalises \"//\""):
        list(client.list_objects(BUCKET, f"{prefix}a//"))
    ep = ("--endpoint", seaweed.endpoint, "--region", REGION)
    monkey_env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    with pytest.MonkeyPatch.context() as m:
        for k, v in monkey_env.items():
            m.setenv(k, v)
        code, out, err = cli(capsys, "ls", "-r", f"s3://{BUCKET}/{prefix}a//", *ep)
    assert (code, out) == (4, "") and "not under the prefix" in err
    cfg = client.s3client_config
    found = list_checkpoints(f"s3://{BUCKET}/{prefix}a/", REGION, endpoint=seaweed.endpoint, s3client_config=cfg)
    assert [c.path for c in found] == [f"s3://{BUCKET}/{prefix}a/run/step1/"]
