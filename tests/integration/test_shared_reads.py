"""share_reads: four gloo ranks on this machine restore replicated, sharded and mixed (2 x 2)
state dicts; the bytes each rank fetched from S3 (counted by the loader) show each shared
record left S3 once, every tensor is byte-exact on every rank, and a failed fetch fails the
load on every rank."""

from __future__ import annotations

import json
import os
import pickle
import sys
import time
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as tmp

from s3torch._servers import REGION, free_port
from s3torch.dcp import S3StorageReader, S3StorageWriter, _save_mark
from s3torch.dcp._shared_reads import SharedRecord, plan_sharing
from tests.conftest import BUCKET, make_client

WORLD = 4


def _full(name: str, shape: tuple) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(map(ord, name)))
    return torch.randn(shape, generator=g)


def _state_dict(scenario: str, fill: bool) -> dict:
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

    def t(name: str, shape: tuple) -> torch.Tensor:
        return _full(name, shape) if fill else torch.zeros(shape)

    shapes = {"w": (256, 512), "emb": (400, 128), "bias": (512,), "scale": ()}
    if scenario == "replicated":  # DDP: every rank holds every tensor
        return {k: t(k, s) for k, s in shapes.items()}
    if scenario == "sharded":  # FSDP-like: each rank holds a quarter of each matrix
        mesh = init_device_mesh("cpu", (WORLD,))
        return {k: distribute_tensor(t(k, s), mesh, [Shard(0)]) for k, s in shapes.items() if len(s) == 2}
    mesh = init_device_mesh("cpu", (2, 2))  # HSDP: replicated across pairs, sharded within
    return {k: distribute_tensor(t(k, s), mesh, [Replicate(), Shard(0)]) for k, s in shapes.items() if len(s) == 2}


def _local(v: torch.Tensor) -> torch.Tensor:
    return v.to_local() if hasattr(v, "to_local") else v


def _worker(rank: int, port: int, base: str, kw: dict, out: str, mode: str) -> None:
    import torch.distributed as dist

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    result: dict = {}
    try:
        for scenario in ("replicated", "sharded", "mixed") if mode == "all" else ("replicated",):
            path = f"{base}/{scenario}"
            src = _state_dict(scenario, fill=True)
            if mode != "fail":
                dcp.save(src, storage_writer=S3StorageWriter(REGION, path, **kw))
            dist.barrier()
            for share in (False, True) if mode == "all" else (True,):
                dest = _state_dict(scenario, fill=False)
                r = S3StorageReader(REGION, path, share_reads=share, share_round_bytes=300_000, **kw)
                t0 = time.monotonic()
                try:
                    dcp.load(dest, storage_reader=r)
                except BaseException as e:  # torch's CheckpointException is a BaseException
                    result[f"{scenario}/{share}"] = {"error": f"{type(e).__name__}: {e}", "s": time.monotonic() - t0}
                    continue
                exact = all(torch.equal(_local(dest[k]), _local(src[k])) for k in src)
                result[f"{scenario}/{share}"] = {"exact": exact, **r.last_load_stats}
    finally:
        Path(out, f"{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # see test_dcp._dist_worker: gloo's finalization-time abort is torch's


def _run(seaweed, base: str, tmp_path: Path, mode: str) -> list:  # type: ignore[no-untyped-def]
    kw = {"s3client_config": make_client(seaweed).s3client_config, "endpoint": seaweed.endpoint}
    ctx = tmp.spawn(_worker, args=(free_port(), base, kw, str(tmp_path), mode), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=5):
        assert time.monotonic() < deadline, "a rank is stuck: the load must fail or finish on every rank"
    return [json.loads((tmp_path / f"{r}.json").read_text()) for r in range(WORLD)]


def _stored_bytes(seaweed, prefix: str) -> int:  # type: ignore[no-untyped-def]
    """The checkpoint's record bytes: its .distcp objects, less the save mark that ends each."""
    client = make_client(seaweed)
    objects = [o for p in client.list_objects(BUCKET, prefix) for o in p.object_info if o.key.endswith(".distcp")]
    marks = _save_mark.expected(pickle.loads(client.get_object(BUCKET, prefix + ".metadata").read()).storage_data)
    assert len(marks) == len(objects)
    return sum(o.size for o in objects) - sum(len(mark) for _, mark in marks.values())


def test_shared_reads_fetch_each_record_once(seaweed, prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = f"s3://{BUCKET}/{prefix}sr"
    ranks = _run(seaweed, base, tmp_path, "all")
    for r, res in enumerate(ranks):
        for k, v in res.items():
            assert v.get("exact"), (r, k, v)

    def total(scenario: str, share: bool) -> int:
        return sum(res[f"{scenario}/{share}"]["bytes_from_s3"] for res in ranks)

    # Replicated: every record leaves S3 exactly once (the whole files), not four times.
    stored = _stored_bytes(seaweed, f"{prefix}sr/replicated/")
    assert total("replicated", True) == stored, (total("replicated", True), stored)
    assert total("replicated", False) > 3.9 * stored
    assert all(res["replicated/True"]["bytes_shared_in"] > 0 for res in ranks)
    per_rank = [res["replicated/True"]["bytes_from_s3"] for res in ranks]
    assert min(per_rank) > 0  # the work is spread over the ranks
    # Fully sharded: nothing to share, the same bytes per rank as without the option.
    for res in ranks:
        assert res["sharded/True"]["bytes_from_s3"] == res["sharded/False"]["bytes_from_s3"]
        assert res["sharded/True"]["bytes_shared_in"] == 0
    # 2 x 2: each shard is read by one rank of its pair.
    assert total("mixed", True) <= 0.55 * total("mixed", False)
    assert all(res["mixed/True"]["bytes_shared_in"] > 0 for res in ranks)


def test_a_failed_fetch_fails_every_rank(seaweed, prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    base = f"s3://{BUCKET}/{prefix}bad"
    sd = _state_dict("replicated", fill=True)
    kw = {"s3client_config": make_client(seaweed).s3client_config, "endpoint": seaweed.endpoint}
    dcp.save(sd, storage_writer=S3StorageWriter(REGION, f"{base}/replicated", **kw))
    client = make_client(seaweed)
    key = f"{prefix}bad/replicated/__0_0.distcp"
    data = client.get_object(BUCKET, key).read()
    client.put(BUCKET, key, data[: len(data) // 3])  # truncated: the later records cannot be read
    ranks = _run(seaweed, base, tmp_path, "fail")
    for r, res in enumerate(ranks):
        err = res["replicated/True"].get("error", "")
        assert "ends early" in err, (r, res)
        assert res["replicated/True"]["s"] < 60, (r, res)


def test_a_file_replaced_between_rounds_fails_every_rank(seaweed, proxy, prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The checkpoint's file replaced (another save, the same layout) just before a rank fetches
    a record of the second round for the others: every rank's own reads so far (its save-mark
    GET) saw the first version. Every rank fails naming the replacement; before, the needers
    checked the fetched record's CRC32 against the first version's and called the file corrupt."""
    base = f"s3://{BUCKET}/{prefix}rep"
    sd = _state_dict("replicated", fill=True)
    kw = {"s3client_config": make_client(seaweed).s3client_config, "endpoint": seaweed.endpoint}
    dcp.save(sd, storage_writer=S3StorageWriter(REGION, f"{base}/replicated", **kw))
    dcp.save({k: v + 1 for k, v in sd.items()}, storage_writer=S3StorageWriter(REGION, f"{base}/other", **kw))
    client = make_client(seaweed)
    key = f"{prefix}rep/replicated/__0_0.distcp"
    replacement = client.get_object(BUCKET, f"{prefix}rep/other/__0_0.distcp").read()
    meta = pickle.loads(client.get_object(BUCKET, f"{prefix}rep/replicated/.metadata").read())
    records = sorted({(i.relative_path, i.offset, i.length) for i in meta.storage_data.values()})
    size, second = 0, None  # the first record of the second round, as plan_sharing cuts them
    for rec in records:
        if size and size + rec[2] > 300_000:
            second = rec
            break
        size += rec[2]
    assert second is not None
    replace = proxy.replace_before_get(client, BUCKET, key, replacement, range=rf"^bytes={second[1]}-")
    ranks = _run(proxy, base, tmp_path, "fail")
    assert replace.injected == 1
    for r, res in enumerate(ranks):
        err = res["replicated/True"].get("error", "")
        assert "was replaced while this load read it" in err, (r, res)


def test_plan_assigns_each_shared_record_to_one_of_its_readers() -> None:
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import MetadataIndex
    from torch.distributed.checkpoint.planner import LoadItemType, LoadPlan, ReadItem

    def item(fqn: str) -> ReadItem:
        idx = MetadataIndex(fqn)
        return ReadItem(LoadItemType.TENSOR, idx, torch.Size([0]), idx, torch.Size([0]), torch.Size([1]))

    storage = {
        MetadataIndex(f): _StorageInfo("__0_0.distcp", off, n)
        for f, off, n in [("a", 0, 1000), ("b", 1000, 600), ("c", 1600, 400), ("d", 2000, 10)]
    }
    plans = [
        LoadPlan([item("a"), item("b"), item("d")]),
        LoadPlan([item("a"), item("b"), item("c")]),
        LoadPlan([item("c")]),
    ]
    out = plan_sharing(plans, storage, round_bytes=1200)
    sched = out[0].storage_data
    assert all(p.storage_data == sched for p in out) and [p.items for p in out] == [p.items for p in plans]
    recs = {s.record[0] + str(s.record[1]): s for rnd in sched.rounds for s in rnd}
    assert set(recs) == {"__0_0.distcp0", "__0_0.distcp1000", "__0_0.distcp1600"}  # d: one reader, not shared
    a, b, c = recs["__0_0.distcp0"], recs["__0_0.distcp1000"], recs["__0_0.distcp1600"]
    assert a == SharedRecord(("__0_0.distcp", 0, 1000), 0, (0, 1)) or a.fetcher == 1
    assert {a.fetcher, b.fetcher} == {0, 1}  # the two big ones go to different ranks
    assert c.fetcher in (1, 2) and c.needers == (1, 2)
    assert all(sum(s.record[2] for s in rnd) <= 1200 or len(rnd) == 1 for rnd in sched.rounds)
