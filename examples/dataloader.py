"""A DataLoader over every object under an S3 prefix, map-style and iterable.

    python examples/dataloader.py   # endpoint and bucket as in dcp_save_load.py

Writes 32 small samples under a fresh prefix first, reads them back through S3MapDataset
(random access, shuffling) and S3IterableDataset (streaming, sharded across workers), then
removes them.
"""

import os
import uuid

import torch
from torch.utils.data import DataLoader

from s3torch import S3Client, S3ClientConfig, S3IterableDataset, S3MapDataset, S3Reader

REGION = os.environ.get("AWS_REGION", "us-east-1")
BUCKET = os.environ.get("S3TORCH_BUCKET", "s3torch")
CONFIG = S3ClientConfig(force_path_style=bool(os.environ.get("AWS_ENDPOINT_URL")))


def to_tensor(reader: S3Reader) -> torch.Tensor:
    """One sample: the object's bytes as a uint8 tensor (decode images, tokens, ... here)."""
    return torch.frombuffer(bytearray(reader.read()), dtype=torch.uint8)


if __name__ == "__main__":  # DataLoader workers import this file
    client = S3Client(REGION, s3client_config=CONFIG)
    prefix = f"examples/samples-{uuid.uuid4().hex[:8]}/"
    for i in range(32):
        with client.put_object(BUCKET, f"{prefix}{i:03d}.bin") as w:
            w.write(bytes([i]) * 1024)
    uri = f"s3://{BUCKET}/{prefix}"

    mapped = S3MapDataset.from_prefix(uri, region=REGION, s3client_config=CONFIG, transform=to_tensor)
    seen = sorted(int(batch[j, 0]) for batch in DataLoader(mapped, batch_size=8, shuffle=True) for j in range(8))
    assert seen == list(range(32))

    streamed = S3IterableDataset.from_prefix(
        uri, region=REGION, s3client_config=CONFIG, transform=to_tensor, enable_sharding=True
    )
    loader = DataLoader(streamed, batch_size=8, num_workers=2)  # each object goes to one worker
    assert sorted(int(b[j, 0]) for b in loader for j in range(len(b))) == list(range(32))
    print(f"read {len(mapped)} objects from {uri} map-style and streamed, with 2 workers")

    for i in range(32):
        client.delete_object(BUCKET, f"{prefix}{i:03d}.bin")
