"""The staging ring's copy into a transposed host view, alone: no server, no GETs.

    python benchmarks/transpose_bench.py [--rows 16384] [--cols 4096] [--dtype bfloat16]
                                         [--slot-mib 8] [--ring-mib 256] [--rounds 5]

A (rows x cols) tensor stored row-major lands in a transposed destination (columns
contiguous, as ``torch.empty(cols, rows).t()``), one slot of rows at a time, as
``RingLoad`` moves it: the slots are taken in turn from a ring of ``--ring-mib`` (larger than
the caches, so each slot is read from memory, as a slot a GET has just filled mostly is).
Three ways, alternating, in one process:

- ``transpose``: ``_crt.transpose_copy`` alone (loads without verification);
- ``crc, then transpose``: the slot's CRC32 in a pass of its own, then the copy (what a
  verified load did before the copy computed the CRC);
- ``transpose with crc``: the copy computes the slot's CRC32 as it reads it (what a verified
  load does now).

Prints GB/s of the tensor per round and per way. Run it under ``PYTHONPATH`` of an older
build to compare builds (that build's ``transpose_copy`` may take no CRC: the third way is
then left out).
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, Dict

import torch

from s3torch import _crt
from s3torch.dcp._staging import _span_bytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--slot-mib", type=int, default=8)
    ap.add_argument("--ring-mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    size = dtype.itemsize
    rows, cols = args.rows, args.cols
    per_slot = max(1, (args.slot_mib << 20) // (cols * size))
    nslots = max(1, args.ring_mib // args.slot_mib)
    slot_bytes = per_slot * cols * size
    dst = torch.empty(cols, rows, dtype=dtype).t()
    _span_bytes(dst).fill_(1)  # resident, as a model's parameters are
    ring = torch.randint(0, 256, (nslots, slot_bytes), dtype=torch.uint8)
    try:
        _crt.transpose_copy(torch.empty(4, dtype=torch.uint8), torch.empty(4, dtype=torch.uint8), 2, 2, 1, 2, 0)
        with_crc = True
    except TypeError:  # a build whose copy computes no CRC
        with_crc = False

    def each(copy: Callable[[torch.Tensor, torch.Tensor, int], None]) -> None:
        for k, r0 in enumerate(range(0, rows, per_slot)):
            n = min(per_slot, rows - r0)
            block = dst[r0 : r0 + n]
            copy(block, ring[k % nslots][: n * cols * size], n)

    def transpose(block: torch.Tensor, src: torch.Tensor, n: int) -> None:
        _crt.transpose_copy(_span_bytes(block), src, n, cols, size, block.stride(1))

    def crc_then_transpose(block: torch.Tensor, src: torch.Tensor, n: int) -> None:
        _crt.crc32(src)
        transpose(block, src, n)

    def transpose_with_crc(block: torch.Tensor, src: torch.Tensor, n: int) -> None:
        _crt.transpose_copy(_span_bytes(block), src, n, cols, size, block.stride(1), 0)

    ways: Dict[str, Callable[[torch.Tensor, torch.Tensor, int], None]] = {
        "transpose": transpose,
        "crc, then transpose": crc_then_transpose,
    }
    if with_crc:
        ways["transpose with crc"] = transpose_with_crc
    total = rows * cols * size
    print(
        f"{rows} x {cols} {args.dtype} ({total / 1e9:.2f} GB) into a transposed view, "
        f"{per_slot} rows ({slot_bytes >> 10} KiB) a slot, a ring of {nslots} slots; GB/s"
    )
    print("| round | " + " | ".join(ways) + " |")
    print("|---" * (len(ways) + 1) + "|")
    for r in range(1, args.rounds + 1):
        cells = []
        for copy in ways.values():
            t0 = time.perf_counter()
            each(copy)
            cells.append(f"{total / (time.perf_counter() - t0) / 1e9:.2f}")
        print(f"| {r} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
