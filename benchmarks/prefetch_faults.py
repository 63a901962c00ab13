"""Page faults, CPU and rate of an S3IterableDataset over the race's large objects (400 x 4 MiB,
written by ``race.py --large 400``), ``from_objects`` (sizes unknown), no workers, nginx on
loopback: what the prefetch window's memory costs the process.

    python benchmarks/prefetch_faults.py [--rounds 2] [--www /tmp/s3torch-race-www]

Each row is a fresh process (``--one``) that reads every object once; printed per round:
objects/s, CPU-s per 1,000 objects (the process's user + sys) and minor page faults per object.
Run it under ``PYTHONPATH`` of an older build to compare builds (the build the venv imports
otherwise).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Tuple

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
COUNT = 400


def _usage() -> Tuple[float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_minflt


def one(endpoint: str) -> dict:
    import s3torch

    uris = [f"s3://race/large/obj/{i:06d}.bin" for i in range(COUNT)]
    ds = s3torch.S3IterableDataset.from_objects(
        uris,
        region="us-east-1",
        endpoint=endpoint,
        s3client_config=s3torch.S3ClientConfig(unsigned=True, force_path_style=True),
        transform=lambda r: len(r.read()),
    )
    t0, (c0, f0) = time.monotonic(), _usage()
    assert sum(1 for n in ds if n == 4 * MiB) == COUNT, "an object of the wrong size"
    wall, (c1, f1) = time.monotonic() - t0, _usage()
    return {
        "objects_per_s": COUNT / wall,
        "cpu_s_per_1000": (c1 - c0) * 1000 / COUNT,
        "faults_per_object": (f1 - f0) / COUNT,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--www", default="/tmp/s3torch-race-www")
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one)), flush=True)
        return 0
    if not (Path(args.www) / "race" / "large" / "obj" / f"{COUNT - 1:06d}.bin").exists():
        print(f"no race data under {args.www}: run benchmarks/race.py --large {COUNT} first", file=sys.stderr)
        return 2
    sys.path.insert(0, str(HERE))
    from run import Nginx

    nginx = Nginx(Path(args.www), s3_like=False)
    try:
        for r in range(args.rounds):
            out = subprocess.run(
                [sys.executable, __file__, "--one", nginx.endpoint], capture_output=True, text=True, timeout=600
            )
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(out.stderr[-2000:], file=sys.stderr)
                return 1
            res = json.loads(line[-1][7:])
            print(
                f"round {r + 1}: {res['objects_per_s']:.0f} objects/s, {res['cpu_s_per_1000']:.2f} CPU-s/1000, "
                f"{res['faults_per_object']:.0f} page faults per object",
                flush=True,
            )
    finally:
        nginx.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
