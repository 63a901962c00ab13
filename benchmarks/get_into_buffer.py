"""GET one object into a preallocated buffer through s3torch's Python API; print JSON with
GB/s and CPU-s/GB of this process (user+sys, measured around the transfers only).

    python benchmarks/get_into_buffer.py --endpoint http://127.0.0.1:8088 --bucket bench --key obj1g

Against nginx (shared/servers/nginx_up.sh), which ignores signatures: requests go unsigned.
The whole-process cost (interpreter start and import included) is what `/usr/bin/time`
reports around this command.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

from s3torch import S3Client, S3ClientConfig


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--into", choices=["bytearray", "tensor"], default="bytearray")
    args = ap.parse_args()
    client = S3Client(
        "us-east-1", endpoint=args.endpoint, s3client_config=S3ClientConfig(unsigned=True, force_path_style=True)
    )
    size = client.head_object(args.bucket, args.key).size
    if args.into == "tensor":
        import torch

        buf = torch.empty(size, dtype=torch.uint8)
        buf.fill_(1)
    else:
        buf = bytearray(size)  # zero-filled: pages are already faulted in
    runs = []
    for _ in range(args.repeat):
        c0, t0 = cpu(), time.perf_counter()
        got = client.get_into(args.bucket, args.key, buf)
        t1, c1 = time.perf_counter(), cpu()
        assert got == size
        runs.append({"seconds": t1 - t0, "gbps": size / 1e9 / (t1 - t0), "cpu_s_per_gb": (c1 - c0) / (size / 1e9)})
    runs.sort(key=lambda r: r["gbps"])
    med = runs[len(runs) // 2]
    print(
        json.dumps(
            {
                "tool": "s3torch-python",
                "into": args.into,
                "bytes": size,
                "runs": runs,
                "median_gbps": med["gbps"],
                "median_cpu_s_per_gb": med["cpu_s_per_gb"],
                "pid": os.getpid(),
            }
        )
    )


if __name__ == "__main__":
    main()
