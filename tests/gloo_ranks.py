"""Run a function on two (or more) gloo ranks in processes of their own, and collect what each
returns (a JSON-able dict): the harness of the tests that save and load DTensors."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, List, Tuple


def _worker(rank: int, port: int, world: int, fn: Callable[..., dict], args: Tuple[Any, ...], out: str) -> None:
    import sys

    import torch.distributed as dist

    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    result: dict = {}
    try:
        result = fn(rank, *args)
    finally:
        Path(out, f"{rank}.json").write_text(json.dumps(result))
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # gloo's finalization-time abort is torch's (test_dcp._dist_worker)


def run_ranks(
    fn: Callable[..., dict], args: Tuple[Any, ...], out: Path, world: int = 2, timeout: float = 240
) -> List[dict]:
    """``fn(rank, *args)`` on ``world`` gloo ranks (``fn`` at a module's top level); each
    rank's dict, in rank order ({} for a rank that raised)."""
    import torch.multiprocessing as tmp

    from s3torch._servers import free_port

    ctx = tmp.spawn(_worker, args=(free_port(), world, fn, args, str(out)), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=5):
        assert time.monotonic() < deadline, "a rank is stuck"
    return [json.loads((out / f"{r}.json").read_text()) for r in range(world)]
