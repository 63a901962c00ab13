"""How fast a fresh process page-locks a staging ring for CUDA, by each way the ring can do it.

    python benchmarks/pin_bench.py [--ring-mib 512] [--slot-mib 8]

Each way runs in a fresh process (what a first load pays): CUDA is initialized first (not
timed), then a pinned ``StagingRing`` is made and every slot awaited. Ways: torch's pinned
allocator (``cudaHostAlloc``) or in place (``cudaHostRegister`` after faulting the pages in),
in place both in small pages and in transparent huge pages (``S3TORCH_HUGE_PAGES=0`` / ``1``),
each with 1 and 4 allocating threads. Prints a table and one JSON line per way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = """
import json, sys, time, torch
from s3torch.dcp import _staging
by_register, threads, ring, slot = sys.argv[1] == "register", int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.zeros(1, device="cuda"); torch.cuda.synchronize()
_staging.PIN_BY_REGISTER, _staging.PIN_THREADS = by_register, threads
t0 = time.perf_counter()
r = _staging.StagingRing(ring, slot, pinned=True)
r.prepare(r.nbytes)
first = None
for i in range(r.nslots):
    r.slot(i, slot)
    if first is None:
        first = time.perf_counter() - t0
dt = time.perf_counter() - t0
pinned = all(m is not None and m.is_pinned() for m in r.memory)
huge = [int(l.split()[1]) << 10 for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHugePages")][0]
print(json.dumps({"way": sys.argv[1], "threads": threads, "seconds": dt, "first_slot_s": first,
                  "gb_per_s": ring / dt / 1e9, "pinned": pinned, "huge_page_bytes": huge}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ring-mib", type=int, default=512)
    ap.add_argument("--slot-mib", type=int, default=8)
    args = ap.parse_args()
    ring, slot = args.ring_mib << 20, args.slot_mib << 20
    print(
        f"| way | S3TORCH_HUGE_PAGES | threads | {args.ring_mib} MiB ring in | GB/s | first slot | in huge pages "
        "| pinned |\n|---|---|---|---|---|---|---|---|"
    )
    for way, huge in (("alloc", ""), ("register", "0"), ("register", "1")):
        for threads in (1, 4):
            r = subprocess.run(
                [sys.executable, "-c", CHILD, way, str(threads), str(ring), str(slot)],
                capture_output=True,
                text=True,
                timeout=120,
                env=dict(os.environ, S3TORCH_HUGE_PAGES=huge),
            )
            if r.returncode != 0:
                print(f"| {way} | {huge} | {threads} | failed: {r.stderr.strip()[-300:]} | | | | |")
                continue
            d = json.loads(r.stdout.strip().splitlines()[-1])
            d["huge_pages_setting"] = huge
            print(
                f"| {way} | {huge} | {threads} | {d['seconds'] * 1000:.0f} ms | {d['gb_per_s']:.2f} "
                f"| {d['first_slot_s'] * 1000:.1f} ms | {d['huge_page_bytes'] >> 20} MiB | {d['pinned']} |"
            )
            print(json.dumps(d), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
