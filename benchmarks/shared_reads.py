"""Shared reads: 4 gloo ranks on this machine restore one replicated (DDP-style) checkpoint
from a local SeaweedFS, with and without ``share_reads``, and with s3torchconnector.

Reports per variant the total bytes the ranks fetched from S3 and the wall time (rank 0,
between barriers). s3torch's bytes come from the loader's own count
(``last_load_stats["bytes_from_s3"]``); s3torchconnector's are the bytes its readers returned
(it has no counter of its own; its DCP-optimized reader fetches at least that much).

    python benchmarks/shared_reads.py [--gib 1.0] [--world 4] [--out results/shared_reads.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict

HERE = Path(__file__).resolve().parent
warnings.filterwarnings("ignore")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")


def _shapes(total_bytes: int) -> Dict[str, tuple]:
    n = max(1, total_bytes // (64 << 20))
    out: Dict[str, tuple] = {f"layer{i}.w": (4096, 4096) for i in range(n)}  # 64 MiB fp32 each
    out.update({f"layer{i}.b": (4096,) for i in range(n)})
    return out


def _worker(rank: int, world: int, port: int, ctx: Dict[str, Any], out: str) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    res: Dict[str, Any] = {}
    try:
        from s3torch import S3ClientConfig
        from s3torch.dcp import S3StorageReader

        cfg = S3ClientConfig(force_path_style=True, access_key_id=ctx["ak"], secret_access_key=ctx["sk"])
        sd = {k: torch.zeros(s) for k, s in ctx["shapes"].items()}
        for variant in ("s3torch", "s3torch-share_reads", "s3torchconnector"):
            dist.barrier()
            t0 = time.perf_counter()
            if variant.startswith("s3torch-") or variant == "s3torch":
                r = S3StorageReader(
                    "us-east-1",
                    ctx["path"],
                    endpoint=ctx["endpoint"],
                    s3client_config=cfg,
                    share_reads=variant == "s3torch-share_reads",
                )
                dcp.load(sd, storage_reader=r)
                got = r.last_load_stats["bytes_from_s3"]
            else:
                got = _s3tc_load(sd, ctx)
            dist.barrier()
            res[variant] = {"seconds": time.perf_counter() - t0, "bytes": got}
    finally:
        Path(out, f"{rank}.json").write_text(json.dumps(res))
        dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # gloo's finalization-time abort is torch's (see tests/integration/test_dcp.py)


def _s3tc_load(sd: Dict[str, Any], ctx: Dict[str, Any]) -> int:
    import torch.distributed.checkpoint as dcp
    from s3torchconnector import S3ClientConfig
    from s3torchconnector._s3client import S3Client
    from s3torchconnector.dcp import S3FileSystem, S3StorageReader

    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = ctx["ak"], ctx["sk"]
    r = S3StorageReader("us-east-1", ctx["path"])
    fs = S3FileSystem(
        "us-east-1",
        s3_client=S3Client(
            "us-east-1", endpoint=ctx["endpoint"], s3client_config=S3ClientConfig(force_path_style=True)
        ),
        reader_constructor=r.fs._reader_constructor,
    )
    counted = [0]
    create = fs.create_stream

    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __enter__(self) -> "Counting":
            self.stream = self.inner.__enter__()
            return self

        def __exit__(self, *a: Any) -> Any:
            return self.inner.__exit__(*a)

        def read(self, n: int = -1) -> bytes:
            b = self.stream.read(n)
            counted[0] += len(b)
            return b

        def readinto(self, buf: Any) -> int:
            n = self.stream.readinto(buf)
            counted[0] += n or 0
            return n

        def __getattr__(self, name: str) -> Any:
            return getattr(self.stream, name)

    fs.create_stream = lambda path, mode: Counting(create(path, mode))  # type: ignore[method-assign]
    r.fs = fs
    dcp.load(sd, storage_reader=r)
    return counted[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--world", type=int, default=4)
    ap.add_argument("--out", default=str(HERE / "results" / "shared_reads.json"))
    args = ap.parse_args()
    import tempfile

    import torch
    import torch.distributed.checkpoint as dcp
    import torch.multiprocessing as tmp

    from s3torch import S3ClientConfig
    from s3torch._servers import ACCESS_KEY, SECRET_KEY, SeaweedFS, free_port
    from s3torch.dcp import S3StorageWriter

    shapes = _shapes(int(args.gib * (1 << 30)))
    with SeaweedFS(buckets=("bench",)) as weed:
        path = "s3://bench/shared"
        cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
        sd = {k: torch.randn(s) for k, s in shapes.items()}
        dcp.save(
            sd,
            storage_writer=S3StorageWriter(
                "us-east-1", path, endpoint=weed.endpoint, s3client_config=cfg, thread_count=2
            ),
        )
        size = sum(t.numel() * 4 for t in sd.values())
        del sd
        ctx = {"shapes": shapes, "path": path, "endpoint": weed.endpoint, "ak": ACCESS_KEY, "sk": SECRET_KEY}
        out = tempfile.mkdtemp()
        tmp.spawn(_worker, args=(args.world, free_port(), ctx, out), nprocs=args.world, join=True)
        ranks = [json.loads(Path(out, f"{r}.json").read_text()) for r in range(args.world)]
    rows = {}
    for variant in ranks[0]:
        total = sum(r[variant]["bytes"] for r in ranks)
        rows[variant] = {
            "bytes_from_s3": total,
            "x_checkpoint": round(total / size, 2),
            "seconds": round(ranks[0][variant]["seconds"], 2),
            "per_rank_bytes": [r[variant]["bytes"] for r in ranks],
        }
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "world": args.world,
        "checkpoint_bytes": size,
        "command": "python benchmarks/shared_reads.py " + " ".join(sys.argv[1:]),
        "variants": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
