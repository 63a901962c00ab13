"""S3IterableDataset sharding in a real distributed job: 3 gloo ranks, each iterating
DataLoaders with 1 and 3 workers started by fork, forkserver and spawn, over a dataset made
``from_prefix`` (before init_process_group) and one made ``from_objects`` (after it). Across
all ranks, every object comes exactly once in each configuration.

One job for all twelve configurations (the ranks start once); the two datasets go through one
DataLoader as a ChainDataset. Workers started by forkserver or spawn are fresh interpreters,
where torch.distributed is not initialised: the rank they shard by travels in the pickle."""

from __future__ import annotations

import collections
import json
import operator
import os
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import ChainDataset, DataLoader

from s3torch import S3ClientConfig, S3IterableDataset
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY, free_port
from tests.conftest import BUCKET, make_client

WORLD = 3
METHODS = ("fork", "forkserver", "spawn")
WORKERS = (1, 3)


def _rank_main(rank: int, port: int, endpoint: str, prefix_uri: str, uris: List[str], out: str) -> None:
    cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    kw: Dict[str, Any] = dict(
        region=REGION,
        endpoint=endpoint,
        s3client_config=cfg,
        enable_sharding=True,
        transform=operator.attrgetter("key"),
    )
    by_prefix = S3IterableDataset.from_prefix(prefix_uri, **kw)  # made before the process group exists
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    by_objects = S3IterableDataset.from_objects(uris, **kw)
    seen: Dict[str, List[str]] = {}
    for method in METHODS:
        ctx = mp.get_context(method)
        if method == "forkserver":
            ctx.set_forkserver_preload(["torch", "s3torch._datasets"])  # one import per rank, not per worker
        for workers in WORKERS:
            loader = DataLoader(
                ChainDataset([by_prefix, by_objects]), batch_size=None, num_workers=workers, multiprocessing_context=ctx
            )
            seen[f"{method}-{workers}"] = list(loader)
    Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
    dist.barrier()
    dist.destroy_process_group()


def test_every_object_once_across_ranks_for_every_start_method(seaweed, prefix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    prefix_keys = [f"{prefix}p/{i:03d}" for i in range(23)]
    object_keys = [f"{prefix}o/{i:03d}" for i in range(17)]
    for key in prefix_keys + object_keys:
        client.put(BUCKET, key, key.encode())
    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE") if k in os.environ}  # not torchrun: none set
    try:
        mp.spawn(
            _rank_main,
            args=(
                free_port(),
                seaweed.endpoint,
                f"s3://{BUCKET}/{prefix}p/",
                [f"s3://{BUCKET}/{k}" for k in object_keys],
                str(tmp_path),
            ),
            nprocs=WORLD,
            join=True,
        )
    finally:
        os.environ.update(env)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    expected = collections.Counter(prefix_keys + object_keys)
    for method in METHODS:
        for workers in WORKERS:
            name = f"{method}-{workers}"
            got = collections.Counter(k for r in results for k in r[name])
            assert got == expected, f"{name}: duplicated {sorted(got - expected)}, missing {sorted(expected - got)}"
            # Each rank has its own third (object i to rank i % 3, in each dataset).
            for r in range(WORLD):
                assert sorted(results[r][name]) == sorted(
                    [k for i, k in enumerate(prefix_keys) if i % WORLD == r]
                    + [k for i, k in enumerate(object_keys) if i % WORLD == r]
                ), (name, r)
    assert torch.distributed.is_available()
