"""The dataset race (issue 20): the same samples, from the same local server, through a
DataLoader, for s3torch (objects through the iterable and the map dataset, and tar shards) and
the libraries people pick instead.

    python benchmarks/race.py [--small N] [--large N] [--peers a,b] [--out benchmarks/results/race]

Samples: ``--small`` x 100 KiB and ``--large`` x 4 MiB random payloads, written once as plain
objects, as tar shards (WebDataset layout, ~16 MiB each), as LitData chunks (``litdata.optimize``,
16 MB chunks) and as MosaicML Streaming MDS shards (``MDSWriter``, 16 MB), all served by nginx
on 127.0.0.1 as path-style S3 (GET/HEAD/Range; no LIST, so every peer is given its objects or
its index). Cells: DataLoader ``num_workers`` 0 and 4, batches of 32 (large: 4), straight
(0 ms) and through ``latency_proxy.py`` adding 20 ms before each response's first byte.

Each cell runs in a fresh process (``--one``): one whole epoch (every sample read, its length
checked), timed: samples/s and CPU-s per 1,000 samples (user+sys of the process and its
DataLoader workers). Then **resume**: a second loader reads half an epoch, its state is taken,
and a third loader is made from that state: the time from making it to its first batch (for
peers without a resumable state, "no state": a restart re-reads the epoch's first half).

Each peer reads through its own access path: s3torch and s3torchconnector through their CRT
clients at the endpoint; LitData and Mosaic through boto3 at the endpoint (``storage_options``,
``S3_ENDPOINT_URL``; unsigned: nginx checks no signature); WebDataset through ``pipe:curl`` of
each shard's URL (its documented way to read HTTP(S)/S3-compatible URLs; it has no S3 client of
its own, and neither awscli nor s5cmd is installed here).

Mosaic imports torchvision at ``import streaming`` (for its vision datasets); no torchvision
build matches this CPU torch, so its runs get a stub ``torchvision`` (``_stubs/``) that only
satisfies those imports.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

HERE = Path(__file__).resolve().parent
BUCKET = "race"
KiB = 1024
MiB = 1024 * KiB
SHARD_BYTES = 16 * MiB
PEERS = ["s3torch", "s3torch-map", "s3torch-tar", "s3torchconnector", "webdataset", "litdata", "mosaic"]
SIZES = {"small": 100 * KiB, "large": 4 * MiB}
BATCH = {"small": 32, "large": 4}


# --- data -------------------------------------------------------------------------------------


def payload(i: int, n: int, block: bytes) -> bytes:
    head = f"<sample {i}>".encode()
    off = (i * 7919) % (len(block) - n)
    return head + block[off + len(head) : off + n]


def prepare(www: Path, size: str, count: int, py: str, env: Dict[str, str]) -> Dict[str, Any]:
    n = SIZES[size]
    base = www / BUCKET / size
    marker = base / f".done-{count}"
    per_shard = max(1, SHARD_BYTES // n)
    shards = (count + per_shard - 1) // per_shard
    ctx = {
        "objects": [f"{size}/obj/{i:06d}.bin" for i in range(count)],
        "tars": [f"{size}/tar/shard-{j:04d}.tar" for j in range(shards)],
        "lit": f"{size}/lit",
        "mds": f"{size}/mds",
        "count": count,
        "nbytes": n,
    }
    if marker.exists():
        return ctx
    import shutil

    shutil.rmtree(base, ignore_errors=True)
    (base / "obj").mkdir(parents=True)
    (base / "tar").mkdir()
    block = os.urandom(8 * MiB + n)
    for i in range(count):
        (base / "obj" / f"{i:06d}.bin").write_bytes(payload(i, n, block))
    for j in range(shards):
        with tarfile.open(base / "tar" / f"shard-{j:04d}.tar", "w", format=tarfile.GNU_FORMAT) as tf:
            for i in range(j * per_shard, min(count, (j + 1) * per_shard)):
                data = payload(i, n, block)
                info = tarfile.TarInfo(f"{i:06d}.bin")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    # LitData and MDS are written by their own writers, in the venv that has them.
    script = f"""
import os, sys
sys.path.insert(0, {str(HERE)!r})
from race import payload
block = open({str(base / "obj" / "000000.bin")!r}, "rb").read()
count, n = {count}, {n}
def item(i):
    return {{"bin": open(os.path.join({str(base / "obj")!r}, f"{{i:06d}}.bin"), "rb").read()}}
def main():
  ok = []
  try:
    import litdata
    litdata.optimize(fn=item, inputs=list(range(count)), output_dir={str(base / "lit")!r}, chunk_bytes="16MB",
                     num_workers=1, mode="overwrite")
    ok.append("lit")
  except Exception as e:
    print("litdata optimize failed:", repr(e), file=sys.stderr)
  try:
    from streaming import MDSWriter
    with MDSWriter(out={str(base / "mds")!r}, columns={{"bin": "bytes"}}, size_limit=16 * 1024 * 1024) as w:
        for i in range(count):
            w.write(item(i))
    ok.append("mds")
  except Exception as e:
    print("MDSWriter failed:", repr(e), file=sys.stderr)
  print(",".join(ok))
if __name__ == "__main__":  # litdata's writer workers re-import this file
    main()
"""
    prep = base / "_prepare.py"
    prep.write_text(script)
    r = subprocess.run([py, str(prep)], capture_output=True, text=True, env=env, timeout=1800)
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
    print(f"  formats written: {r.stdout.strip()}", file=sys.stderr)
    marker.write_text("ok")
    return ctx


# --- one cell, in a fresh process -------------------------------------------------------------


def _cpu() -> float:
    import resource

    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _no_collate(batch):  # type: ignore[no-untyped-def]
    return batch


def _as_tensor(batch):  # type: ignore[no-untyped-def]
    import torch

    return torch.tensor(batch)


def _len_reader(reader):  # type: ignore[no-untyped-def]
    return len(reader.read())


def _len_sample(sample):  # type: ignore[no-untyped-def]
    return len(sample["bin"])


def _loader_factory(ctx: Dict[str, Any]) -> Tuple[Callable[[], Any], bool]:
    """(make a loader, whether it has a resumable state)."""
    peer, ep, workers, size = ctx["peer"], ctx["endpoint"], ctx["workers"], ctx["size"]
    batch = BATCH[size]
    mp = {"multiprocessing_context": "fork"} if workers else {}
    if peer in ("s3torch", "s3torch-map", "s3torch-tar"):
        from torchdata.stateful_dataloader import StatefulDataLoader

        import s3torch

        cfg = s3torch.S3ClientConfig(unsigned=True, force_path_style=True)
        uris = [f"s3://{BUCKET}/{k}" for k in ctx["objects"]]
        if peer == "s3torch-map":  # each batch through __getitems__; the sampler's state resumes

            def ds():  # type: ignore[no-untyped-def]
                return s3torch.S3MapDataset.from_objects(
                    uris, region="us-east-1", endpoint=ep, s3client_config=cfg, transform=_len_reader
                )
        elif peer == "s3torch":

            def ds():  # type: ignore[no-untyped-def]
                return s3torch.S3IterableDataset.from_objects(
                    uris,
                    region="us-east-1",
                    endpoint=ep,
                    s3client_config=cfg,
                    transform=_len_reader,
                    enable_sharding=True,
                )
        else:
            shards = [f"s3://{BUCKET}/{k}" for k in ctx["tars"]]

            def ds():  # type: ignore[no-untyped-def]
                return s3torch.S3TarDataset.from_objects(
                    shards,
                    region="us-east-1",
                    endpoint=ep,
                    s3client_config=cfg,
                    transform=_len_sample,
                    enable_sharding=True,
                )

        return lambda: StatefulDataLoader(
            ds(), batch_size=batch, num_workers=workers, collate_fn=_no_collate, snapshot_every_n_steps=1, **mp
        ), True
    if peer == "s3torchconnector":
        import s3torchconnector
        from torch.utils.data import DataLoader

        uris = [f"s3://{BUCKET}/{k}" for k in ctx["objects"]]
        tc = s3torchconnector.S3IterableDataset.from_objects(
            uris,
            region="us-east-1",
            endpoint=ep,
            transform=_len_reader,
            s3client_config=s3torchconnector.S3ClientConfig(unsigned=True, force_path_style=True),
            enable_sharding=True,
        )
        return lambda: DataLoader(tc, batch_size=batch, num_workers=workers, collate_fn=_no_collate, **mp), False
    if peer == "webdataset":
        import webdataset as wds
        from torch.utils.data import DataLoader

        urls = [f"pipe:curl -s -f {ep}/{BUCKET}/{k}" for k in ctx["tars"]]

        def wd():  # type: ignore[no-untyped-def]
            return wds.WebDataset(urls, shardshuffle=False, empty_check=False).map(_len_sample)

        return lambda: DataLoader(wd(), batch_size=batch, num_workers=workers, collate_fn=_no_collate, **mp), False
    if peer == "litdata":
        import litdata
        from botocore import UNSIGNED
        from botocore.config import Config

        opts = {"endpoint_url": ep, "config": Config(signature_version=UNSIGNED, s3={"addressing_style": "path"})}
        cache = tempfile.mkdtemp(prefix="race-lit-")

        def lit():  # type: ignore[no-untyped-def]
            return litdata.StreamingDataset(
                f"s3://{BUCKET}/{ctx['lit']}", storage_options=opts, cache_dir=cache, transform=_len_sample
            )

        return lambda: litdata.StreamingDataLoader(
            lit(), batch_size=batch, num_workers=workers, collate_fn=_no_collate
        ), True
    if peer == "mosaic":
        os.environ["S3_ENDPOINT_URL"] = ep
        # Mosaic falls back to unsigned requests only when making its client fails, not when a
        # request finds no credentials: it signs with placeholder keys, which nginx ignores.
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "race")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "race")
        from streaming import StreamingDataLoader, StreamingDataset
        from streaming.base.util import clean_stale_shared_memory

        clean_stale_shared_memory()

        class _Len(StreamingDataset):  # type: ignore[misc]
            def __getitem__(self, i):  # type: ignore[no-untyped-def]
                return len(super().__getitem__(i)["bin"])

        def mds():  # type: ignore[no-untyped-def]
            return _Len(
                remote=f"s3://{BUCKET}/{ctx['mds']}",
                local=tempfile.mkdtemp(prefix="race-mds-"),
                shuffle=False,
                batch_size=batch,
            )

        # Its loader counts a batch by len() of the batch's first column: a tensor, not a list of ints.
        return lambda: StreamingDataLoader(mds(), batch_size=batch, num_workers=workers, collate_fn=_as_tensor), True
    raise KeyError(peer)


def run_one(ctx: Dict[str, Any]) -> Dict[str, Any]:
    make, stateful = _loader_factory(ctx)
    count, nbytes = ctx["count"], ctx["nbytes"]
    loader = make()
    t0, c0 = time.monotonic(), _cpu()
    seen = 0
    for b in loader:
        assert all(x == nbytes for x in b), "a sample of the wrong size"
        seen += len(b)
    del loader
    wall, cpu = time.monotonic() - t0, _cpu() - c0
    if seen != count:
        raise RuntimeError(f"{seen} samples, expected {count}")
    out: Dict[str, Any] = {
        "samples": seen,
        "seconds": wall,
        "samples_per_s": seen / wall,
        "cpu_s_per_1000": cpu * 1000 / seen,
    }
    if not stateful:
        out["resume"] = "no state: a restart re-reads the first half"
        return out
    half = max(1, count // BATCH[ctx["size"]] // 2)
    first = make()
    it = iter(first)
    got = sum(len(next(it)) for _ in range(half))
    state = first.state_dict()
    del it, first
    t0 = time.monotonic()
    resumed = make()
    resumed.load_state_dict(state)
    it2 = iter(resumed)
    nxt = next(it2)
    out["resume_s"] = time.monotonic() - t0
    rest = len(nxt) + sum(len(b) for b in it2)
    out["resume_check"] = f"{got} + {rest} = {got + rest} of {count}"
    return out


# --- the whole race ---------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--small", type=int, default=20_000)
    ap.add_argument("--large", type=int, default=1_000)
    ap.add_argument("--peers", default=",".join(PEERS))
    ap.add_argument("--workers", default="0,4")
    ap.add_argument("--latency", default="0,20")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--www", default="/tmp/s3torch-race-www")
    ap.add_argument("--out", default=str(HERE / "results" / "race"))
    args = ap.parse_args()
    if args.one:
        ctx = json.loads(args.one)
        try:
            res = run_one(ctx)
        except Exception as e:  # reported as the cell's miss
            res = {"error": f"{type(e).__name__}: {e}"[:600]}
        print("RESULT " + json.dumps(res), flush=True)
        os._exit(0)  # peers' worker pools and threads must not hold the exit

    sys.path.insert(0, str(HERE))
    from run import LatencyProxyProcess, Nginx, ensure_venv

    py = ensure_venv(install=False)
    # s3torch is the one the venv imports (as for run.py; an older build goes first on
    # PYTHONPATH for an A/B). The source tree is not put on the path: it has no _crt.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths + [str(HERE / "_stubs")]))
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(k, None)
    www = Path(args.www)
    (www / BUCKET).mkdir(parents=True, exist_ok=True)
    data = {}
    for size, count in (("small", args.small), ("large", args.large)):
        if count:
            print(f"preparing {size}: {count} x {SIZES[size]} bytes", file=sys.stderr)
            data[size] = prepare(www, size, count, py, env)
    os.chmod(www, 0o755)
    nginx = Nginx(www, s3_like=False)
    results: List[Dict[str, Any]] = []
    try:
        for latency in [int(x) for x in args.latency.split(",")]:
            proxy = LatencyProxyProcess(nginx.endpoint, latency) if latency else None
            endpoint = proxy.endpoint if proxy else nginx.endpoint
            try:
                for size, d in data.items():
                    for workers in [int(x) for x in args.workers.split(",")]:
                        for peer in args.peers.split(","):
                            ctx = dict(d, peer=peer, endpoint=endpoint, workers=workers, size=size)
                            cell = {
                                "peer": peer,
                                "size": size,
                                "count": d["count"],
                                "workers": workers,
                                "latency_ms": latency,
                            }
                            t0 = time.monotonic()
                            try:
                                r = subprocess.run(
                                    [py, str(Path(__file__).resolve()), "--one", json.dumps(ctx)],
                                    capture_output=True,
                                    text=True,
                                    env=env,
                                    timeout=args.timeout,
                                )
                                line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
                                cell.update(json.loads(line[-1][7:]) if line else {"error": r.stderr[-600:]})
                            except subprocess.TimeoutExpired:
                                cell["error"] = f"timed out after {args.timeout:.0f} s"
                            cell["cell_s"] = round(time.monotonic() - t0, 1)
                            print(json.dumps(cell), file=sys.stderr)
                            results.append(cell)
                            write(args, results)  # after every cell: a cut-short race keeps what it measured
            finally:
                if proxy:
                    proxy.stop()
    finally:
        nginx.stop()
    print(markdown(write(args, results)))
    return 0


def write(args: argparse.Namespace, results: List[Dict[str, Any]]) -> Dict[str, Any]:
    from run import machine

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": "python benchmarks/race.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "cells": results,
    }
    (out / "race.json").write_text(json.dumps(doc, indent=1))
    (out / "race.md").write_text(markdown(doc))
    return doc


def markdown(doc: Dict[str, Any]) -> str:
    rows = [
        f"`{doc['command']}`, {doc['date']}\n",
        "| size | workers | latency | peer | samples/s | CPU-s / 1000 | resume (s) | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in doc["cells"]:
        if "error" in c:
            rows.append(
                f"| {c['count']} x {c['size']} | {c['workers']} | {c['latency_ms']} ms | {c['peer']} | miss | | | "
                f"{c['error'].splitlines()[-1] if c['error'].strip() else 'failed'} |"
            )
            continue
        resume = f"{c['resume_s']:.2f}" if "resume_s" in c else c.get("resume", "")
        rows.append(
            f"| {c['count']} x {c['size']} | {c['workers']} | {c['latency_ms']} ms | {c['peer']} | "
            f"{c['samples_per_s']:,.0f} | {c['cpu_s_per_1000']:.2f} | {resume} | {c.get('resume_check', '')} |"
        )
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    sys.exit(main())
