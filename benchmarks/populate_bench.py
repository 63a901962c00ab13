"""What populating fresh memory costs in small pages and in transparent huge pages.

    python benchmarks/populate_bench.py [--gib 1] [--pairs 6]

Each round maps fresh private anonymous memory (as torch's large CPU allocations are), then
populates it the way s3torch's prefaulting does (``_crt.prefault``, 2 MiB a call), without and
with ``_crt.advise_huge_pages`` first (``S3TORCH_HUGE_PAGES=0`` / ``1``), alternating, in one
process. Prints a table (time to populate, CPU, then time to write every byte once, how much
ended up in huge pages) and one JSON line per round on stderr.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import sys
import time

import torch

from s3torch import _crt


def _anon_huge_bytes() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return [int(line.split()[1]) << 10 for line in f if line.startswith("AnonHugePages")][0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--pairs", type=int, default=6)
    args = ap.parse_args()
    n = int(args.gib * (1 << 30))
    chunk = _crt.POPULATE_CHUNK_BYTES
    print(f"| round | S3TORCH_HUGE_PAGES | populate {args.gib:g} GiB | CPU | then write it | in huge pages |")
    print("|---|---|---|---|---|---|")
    for r in range(1, args.pairs + 1):
        for setting in ("0", "1"):
            os.environ["S3TORCH_HUGE_PAGES"] = setting
            m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            t = torch.frombuffer(m, dtype=torch.uint8)
            before = _anon_huge_bytes()
            w0, c0 = time.perf_counter(), time.process_time()
            _crt.advise_huge_pages(t)
            for at in range(0, n, chunk):
                _crt.prefault(t[at : at + chunk], write_fallback=False)
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            w1 = time.perf_counter()
            t.fill_(1)
            write = time.perf_counter() - w1
            huge = _anon_huge_bytes() - before
            del t
            m.close()
            print(
                f"| {r} | {setting} | {wall * 1e3:.0f} ms | {cpu * 1e3:.0f} ms | {write * 1e3:.0f} ms "
                f"| {huge >> 20} MiB |",
                flush=True,
            )
            d = {"round": r, "huge_pages": setting, "bytes": n, "populate_s": wall, "cpu_s": cpu, "write_s": write}
            print(json.dumps(dict(d, huge_page_bytes=huge)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
