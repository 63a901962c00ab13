"""Save marks (dcp/_save_mark.py): a checkpoint whose files come from two overlapping saves
is refused, where every read and every CRC32 would pass and the load would mix them."""

from __future__ import annotations

import pickle
from typing import Dict

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException

from s3torch import S3ClientConfig
from s3torch._servers import REGION
from s3torch.dcp import CheckpointCorruptError, S3StorageReader, S3StorageWriter, _save_mark
from tests.conftest import BUCKET, make_client

# Saving over a checkpoint is what these tests do; torch warns of it on every such save.
pytestmark = pytest.mark.filterwarnings("ignore:Detected an existing checkpoint")


def model(seed: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"layer{i}": torch.randn(200, 100, generator=g) for i in range(6)} | {"step": torch.tensor(seed)}


def zeros() -> Dict[str, torch.Tensor]:
    return {k: torch.zeros_like(v) for k, v in model(0).items()}


def save(server, path: str, sd: dict, threads: int = 3) -> None:  # type: ignore[no-untyped-def]
    cfg: S3ClientConfig = make_client(server).s3client_config
    w = S3StorageWriter(
        REGION, path, s3client_config=cfg, endpoint=server.endpoint, thread_count=threads, overwrite=True
    )
    dcp.save(sd, storage_writer=w)


def load(server, path: str, **kw) -> dict:  # type: ignore[no-untyped-def]
    cfg = make_client(server).s3client_config
    out = zeros()
    dcp.load(out, storage_reader=S3StorageReader(REGION, path, s3client_config=cfg, endpoint=server.endpoint, **kw))
    return out


def files(server, prefix: str) -> Dict[str, bytes]:  # type: ignore[no-untyped-def]
    client = make_client(server)
    out = {}
    for page in client.list_objects(BUCKET, prefix):
        for o in page.object_info:
            out[o.key] = client.get_object(BUCKET, o.key).read()
    return out


def test_a_file_of_an_overlapping_save_is_refused(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """A rank of an earlier save (a restarted job's "zombie") finishes writing its file after
    the next save to the same path completed. Same model, same sharding: every offset agrees
    and every record's CRC32 matches its own bytes."""
    path = f"s3://{BUCKET}/{prefix}ck"
    save(seaweed, path, model(1))
    first = files(seaweed, prefix + "ck/")
    save(seaweed, path, model(2))
    assert torch.equal(load(seaweed, path)["layer0"], model(2)["layer0"])  # the second save, whole

    client = make_client(seaweed)
    zombie = f"{prefix}ck/__0_1.distcp"
    client.put(BUCKET, zombie, first[zombie])  # the first save's file lands last

    # What any reader without the check does: loads, and mixes the two saves.
    mixed = load(seaweed, path, verify_checksums=False)
    from_first = [k for k in mixed if torch.equal(mixed[k], model(1)[k]) and not torch.equal(mixed[k], model(2)[k])]
    assert from_first and len(from_first) < len(mixed)

    with pytest.raises(CheckpointException) as ei:
        load(seaweed, path)
    err = ei.value.failures[0][0]  # rank 0: (the exception, its traceback)
    assert isinstance(err, CheckpointCorruptError)
    assert f"s3://{BUCKET}/{zombie}: written by another save" in str(err)
    assert "two saves to this path overlapped" in str(err)


def test_a_file_replaced_by_another_writer_is_refused(seaweed, prefix: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """torch's own writer (no mark) saved the same model over one of the files."""
    path = f"s3://{BUCKET}/{prefix}ck"
    save(seaweed, path, model(1), threads=1)
    dcp.save(model(2), storage_writer=FileSystemWriter(str(tmp_path), thread_count=1))
    client = make_client(seaweed)
    client.put(BUCKET, f"{prefix}ck/__0_0.distcp", (tmp_path / "__0_0.distcp").read_bytes())
    with pytest.raises(CheckpointException) as ei:
        load(seaweed, path)
    assert "__0_0.distcp: its save mark is missing where the .metadata says its records end" in str(ei.value)


def test_marks_are_read_with_the_last_records_probe(seaweed, prefix: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A whole load sends no request for the marks: each file's is read by the probe of its
    last record (here small records, read whole, and large ones, probed head and tail)."""
    from s3torch.dcp import _parallel_load

    path = f"s3://{BUCKET}/{prefix}ck"
    save(seaweed, path, model(5))
    sent = []
    real = _parallel_load.ParallelLoader._get_many

    def counting(self, reqs, wheres):  # type: ignore[no-untyped-def]
        sent.append(len(reqs))
        return real(self, reqs, wheres)

    monkeypatch.setattr(_parallel_load.ParallelLoader, "_get_many", counting)
    out = load(seaweed, path)
    assert all(torch.equal(out[k], v) for k, v in model(5).items())
    with_marks = sum(sent)
    sent.clear()
    load(seaweed, path, verify_checksums=False)  # no marks expected
    assert with_marks == sum(sent) > 0


def test_a_copied_checkpoint_loads(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """The mark travels with the bytes: a copy made by any tool (here: GET and PUT, which
    gives every file a new ETag) loads and checks."""
    save(seaweed, f"s3://{BUCKET}/{prefix}a", model(3))
    client = make_client(seaweed)
    for key, data in files(seaweed, prefix + "a/").items():
        client.put(BUCKET, prefix + "b/" + key[len(prefix + "a/") :], data)
    out = load(seaweed, f"s3://{BUCKET}/{prefix}b")
    assert all(torch.equal(out[k], v) for k, v in model(3).items())


def test_every_file_is_marked_with_the_save_its_metadata_names(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    save(seaweed, f"s3://{BUCKET}/{prefix}ck", model(4))
    got = files(seaweed, prefix + "ck/")
    md = pickle.loads(got[prefix + "ck/.metadata"])
    marks = _save_mark.expected(md.storage_data)
    assert sorted(marks) == ["__0_0.distcp", "__0_1.distcp", "__0_2.distcp"]
    assert len({m for _, m in marks.values()}) == 1  # one rank, one save
    for name, (end, mark) in marks.items():
        data = got[prefix + "ck/" + name]
        assert len(data) == end + len(mark) and data[end:] == mark


def test_s3torch_verify_names_the_file_of_another_save(seaweed_env, prefix: str, capsys) -> None:  # type: ignore[no-untyped-def]
    from s3torch.cli import main

    seaweed = seaweed_env
    path = f"s3://{BUCKET}/{prefix}ck"
    save(seaweed, path, model(1))
    first = files(seaweed, prefix + "ck/")
    save(seaweed, path, model(2))
    client = make_client(seaweed)
    zombie = f"{prefix}ck/__0_2.distcp"
    client.put(BUCKET, zombie, first[zombie])
    code = main(["verify", path])
    out = capsys.readouterr().out
    assert code == 1, out
    bad = [line for line in out.splitlines() if line.startswith("CORRUPT")]
    assert len(bad) == 1 and bad[0].startswith(f"CORRUPT  file {path}/__0_2.distcp: written by another save"), out
    md = pickle.loads(first[prefix + "ck/.metadata"])
    in_file = sum(1 for info in md.storage_data.values() if info.relative_path == "__0_2.distcp")
    assert f"{in_file} of {len(md.storage_data)} items failed verification" in out
