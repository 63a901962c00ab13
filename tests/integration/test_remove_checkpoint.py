"""``s3torch.dcp.remove_checkpoint`` and ``s3torch rm`` against SeaweedFS: a checkpoint's
.metadata goes before any data file, a removal that fails part way leaves no .metadata beside
missing data, and prefixes that hold no checkpoint, or more than one, are refused with nothing
removed."""

from __future__ import annotations

from typing import List

import pytest
import torch
import torch.distributed.checkpoint as dcp

from s3torch import S3Client, S3Exception, S3InvalidArgumentError, S3NotFoundError
from s3torch._servers import REGION
from s3torch.dcp import CheckpointRemovalError, S3StorageReader, S3StorageWriter, remove_checkpoint
from tests.conftest import BUCKET, make_client
from tests.integration.test_cli import cli, state


@pytest.fixture
def env(seaweed_env):  # type: ignore[no-untyped-def]
    return seaweed_env


def keys(env, prefix: str) -> List[str]:  # type: ignore[no-untyped-def]
    client = make_client(env)
    return sorted(o.key[len(prefix) :] for page in client.list_objects(BUCKET, prefix) for o in page.object_info)


def record_deletes(monkeypatch, fail=lambda key: None) -> List[str]:  # type: ignore[no-untyped-def]
    """Every key S3Client.delete_objects is asked to delete, in order; ``fail(key)`` may return
    an exception: an S3Exception comes back as that key's failure (as a server's refusal does),
    anything else is raised before the call deletes anything."""
    order: List[str] = []
    delete = S3Client.delete_objects

    def recorded(self, bucket: str, keys, removed=None):  # type: ignore[no-untyped-def]
        keys = list(keys)
        order.extend(keys)
        errors = {k: fail(k) for k in keys}
        for e in errors.values():
            if e is not None and not isinstance(e, S3Exception):
                raise e
        refused = [(k, e) for k, e in errors.items() if e is not None]
        return refused + delete(self, bucket, [k for k in keys if errors[k] is None], removed)

    monkeypatch.setattr(S3Client, "delete_objects", recorded)
    return order


def names_of(order: List[str]) -> List[str]:
    return [k.rsplit("/", 1)[1] for k in order]


def save(env, prefix: str) -> List[str]:  # type: ignore[no-untyped-def]
    """A DCP checkpoint of two ranks' files at ``prefix``; its file names."""
    writer = S3StorageWriter(REGION, f"s3://{BUCKET}/{prefix}", endpoint=env.endpoint)
    dcp.save(state(), storage_writer=writer)
    client = make_client(env)
    client.put(BUCKET, prefix + "__1_0.distcp", b"x" * 1000)  # a second rank's file, as a 2-rank save leaves
    return keys(env, prefix)


def test_rm_removes_the_checkpoint_metadata_first_and_nothing_beside_it(env, prefix, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    save(env, prefix + "ckpt/")
    make_client(env).put(BUCKET, prefix + "ckpt/notes a+b%é=?.txt", b"n")  # a key that needs encoding
    names = keys(env, prefix + "ckpt/")
    save(env, prefix + "ckpt2/")  # shares the string prefix "ckpt": not the checkpoint's
    assert ".metadata" in names and len(names) >= 3
    order = record_deletes(monkeypatch)
    code, out, err = cli(capsys, "rm", f"s3://{BUCKET}/{prefix}ckpt")
    assert code == 0, err
    assert f"removed {len(names)} objects" in out
    assert keys(env, prefix + "ckpt/") == []
    assert ".metadata" in keys(env, prefix + "ckpt2/")
    assert names_of(order)[0] == ".metadata" and sorted(names_of(order)) == names


def test_rm_removes_the_data_files_a_prefix_strategy_put_in_folders(env, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    from s3torch.dcp import RoundRobinPrefixStrategy

    strategy = RoundRobinPrefixStrategy(["shard-a", "shard-b"], epoch_num=3)
    writer = S3StorageWriter(REGION, f"s3://{BUCKET}/{prefix}", endpoint=env.endpoint, prefix_strategy=strategy)
    dcp.save(state(), storage_writer=writer)
    names = keys(env, prefix)
    assert any(n.startswith("shard-a/epoch_3/") and n.endswith(".distcp") for n in names), names
    code, out, err = cli(capsys, "rm", f"s3://{BUCKET}/{prefix}")
    assert code == 0, err
    assert f"removed {len(names)} objects" in out and keys(env, prefix) == []


def test_rm_that_cannot_remove_the_metadata_removes_no_data_file(env, prefix, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    names = save(env, prefix)
    record_deletes(
        monkeypatch, lambda key: S3Exception("AccessDenied (HTTP 403)") if key.endswith(".metadata") else None
    )
    code, _, err = cli(capsys, "rm", f"s3://{BUCKET}/{prefix}")
    assert code == 4
    assert ".metadata: not removed (AccessDenied (HTTP 403))" in err and "no data file was" in err
    assert keys(env, prefix) == names  # the checkpoint is whole, as it was


def test_rm_that_fails_part_way_leaves_no_metadata_and_finishes_when_run_again(
    env, prefix, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    names = save(env, prefix)
    delete = S3Client.delete_objects
    record_deletes(
        monkeypatch, lambda key: S3Exception("InternalError (HTTP 500)") if key.endswith("__1_0.distcp") else None
    )
    code, _, err = cli(capsys, "rm", f"s3://{BUCKET}/{prefix}")
    assert code == 4
    assert "1 of" in err and "remain, none of them a .metadata" in err
    assert keys(env, prefix) == ["__1_0.distcp"]
    monkeypatch.setattr(S3Client, "delete_objects", delete)
    code, out, err = cli(capsys, "rm", f"s3://{BUCKET}/{prefix}")  # a data file without its .metadata
    assert code == 0, err
    assert "removed 1 objects" in out and keys(env, prefix) == []
    assert len(names) > 2


def test_rm_refuses_what_is_not_one_checkpoint_and_removes_nothing(env, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    client = make_client(env)
    client.put(BUCKET, prefix + "notes/readme.txt", b"hello")
    code, _, err = cli(capsys, "rm", f"s3://{BUCKET}/{prefix}notes")
    assert code == 3 and "no DCP checkpoint or safetensors model" in err

    save(env, prefix + "run/step-1/")
    save(env, prefix + "run/step-2/")
    code, _, err = cli(capsys, "rm", f"s3://{BUCKET}/{prefix}run")
    assert code == 3 and "run/step-1/.metadata is in a folder below it" in err

    client.put(BUCKET, prefix + "run/step-2/logs/x.txt", b"log")
    code, _, err = cli(capsys, "rm", f"s3://{BUCKET}/{prefix}run/step-2")
    assert code == 2 and "logs/x.txt" in err and "--recursive" in err

    code, _, err = cli(capsys, "rm", f"s3://{BUCKET}")
    assert code == 2 and "not a whole bucket" in err
    assert len(keys(env, prefix + "run/")) == 2 * len(keys(env, prefix + "run/step-1/")) + 1


def test_rm_recursive_removes_every_checkpoint_of_a_run_metadata_first(env, prefix, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    save(env, prefix + "run/step-1/")
    save(env, prefix + "run/step-2/")
    all_keys = keys(env, prefix + "run/")
    code, out, _ = cli(capsys, "rm", "--dry-run", "--recursive", f"s3://{BUCKET}/{prefix}run/")
    assert code == 0 and f"would remove {len(all_keys)} objects" in out
    assert keys(env, prefix + "run/") == all_keys  # a dry run removes nothing

    order = record_deletes(monkeypatch)
    code, out, err = cli(capsys, "rm", "--recursive", f"s3://{BUCKET}/{prefix}run/")
    assert code == 0, err
    assert keys(env, prefix + "run/") == []
    assert [k.endswith(".metadata") for k in order] == [True, True] + [False] * (len(all_keys) - 2)


def test_rm_of_a_sharded_safetensors_model_removes_its_index_first(env, prefix, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from safetensors.torch import save as st_save

    client = make_client(env)
    for i in (1, 2):
        client.put(BUCKET, f"{prefix}model-0000{i}-of-00002.safetensors", st_save({f"w{i}": torch.ones(4)}))
    client.put(BUCKET, prefix + "model.safetensors.index.json", b'{"weight_map": {}}')
    client.put(BUCKET, prefix + "config.json", b"{}")
    order = record_deletes(monkeypatch)
    code, _, err = cli(capsys, "rm", f"s3://{BUCKET}/{prefix}")
    assert code == 0, err
    assert names_of(order)[0] == "model.safetensors.index.json" and len(order) == 4
    assert keys(env, prefix) == []


def test_remove_checkpoint_from_python(env, prefix, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    uri = f"s3://{BUCKET}/{prefix}ckpt"
    names = save(env, prefix + "ckpt/")
    with pytest.raises(S3InvalidArgumentError, match="not a whole bucket"):
        remove_checkpoint(f"s3://{BUCKET}/", endpoint=env.endpoint)
    with pytest.raises(S3NotFoundError, match="no DCP checkpoint"):
        remove_checkpoint(uri + "-nothing", endpoint=env.endpoint)

    delete = S3Client.delete_objects
    failure = S3Exception("SlowDown (HTTP 503)")
    failure.http_status = 503  # type: ignore[attr-defined]
    order = record_deletes(monkeypatch, lambda key: failure if key.endswith("__1_0.distcp") else None)
    with pytest.raises(CheckpointRemovalError) as ei:
        remove_checkpoint(uri, endpoint=env.endpoint)
    assert ei.value.remaining == [f"{uri}/__1_0.distcp"] and ei.value.__cause__ is failure
    assert ei.value.http_status == 503  # type: ignore[attr-defined]
    assert names_of(order)[0] == ".metadata"
    with pytest.raises(BaseException, match="no DCP checkpoint"):  # torch wraps it: what is left is none
        dcp.load({"big": torch.zeros(1)}, storage_reader=S3StorageReader(REGION, uri, endpoint=env.endpoint))

    monkeypatch.setattr(S3Client, "delete_objects", delete)
    assert remove_checkpoint(uri + "/", endpoint=env.endpoint) == [f"{uri}/__1_0.distcp"]
    assert keys(env, prefix) == [] and len(names) > 2


def test_an_interrupted_removal_stops_without_sending_the_batches_queued(env, prefix, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import s3torch._deletes
    from s3torch import _crt

    client = make_client(env)
    save(env, prefix)
    for i in range(2, 12):
        client.put(BUCKET, f"{prefix}__{i}_0.distcp", b"x")
    monkeypatch.setattr(_crt, "MAX_DELETE_KEYS", 2)  # batches of two keys
    monkeypatch.setattr(s3torch._deletes, "JOBS", 1)  # one batch at a time: the rest are queued
    sent: List[List[str]] = []
    real = client._get_native()

    class Native:  # a native client (on the same server) whose DeleteObjects is watched
        def __getattr__(self, name):  # type: ignore[no-untyped-def]
            return getattr(real, name)

        def delete_objects(self, bucket, keys):  # type: ignore[no-untyped-def]
            sent.append(names_of(keys))
            if any(k.endswith("__1_0.distcp") for k in keys):
                raise KeyboardInterrupt
            return real.delete_objects(bucket, keys)

    monkeypatch.setattr(S3Client, "_get_native", lambda self: Native())
    with pytest.raises(KeyboardInterrupt):
        remove_checkpoint(f"s3://{BUCKET}/{prefix}", endpoint=env.endpoint)
    # .metadata alone, then the data files two at a time in name order: __0_0 and __10_0,
    # __11_0 and __1_0 (interrupted); one more batch may have been queued or taken before the
    # interrupt reached the caller; the rest never go (delete_all cancels what waits).
    assert sent[:3] == [[".metadata"], ["__0_0.distcp", "__10_0.distcp"], ["__11_0.distcp", "__1_0.distcp"]]
    assert len(sent) <= 4, sent
    monkeypatch.undo()
    assert len(keys(env, prefix)) >= 8


def test_rm_dry_run_shows_hostile_key_names_escaped(env, prefix, capsys) -> None:  # type: ignore[no-untyped-def]
    save(env, prefix)
    make_client(env).put(BUCKET, prefix + "x\x1b]0;pwned\x07\u202e.distcp", b"x")  # a title escape, a bidi override
    code, out, err = cli(capsys, "rm", "--dry-run", f"s3://{BUCKET}/{prefix}")
    assert code == 0, err
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert "\\u202e.distcp" in out  # (SeaweedFS stores the controls as U+FFFD, shown as is)
