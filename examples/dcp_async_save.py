"""Checkpoint in the background with dcp.async_save while training goes on.

    python examples/dcp_async_save.py   # endpoint and bucket as in dcp_save_load.py

async_save copies the state dict to CPU memory first (the "staging" step, which is all the
training loop waits for), then uploads from that copy on a background thread.
"""

import os
import uuid

import torch
import torch.distributed.checkpoint as dcp

from s3torch import S3Client, S3ClientConfig
from s3torch.dcp import S3StorageReader, S3StorageWriter

REGION = os.environ.get("AWS_REGION", "us-east-1")
BUCKET = os.environ.get("S3TORCH_BUCKET", "s3torch")
CONFIG = S3ClientConfig(force_path_style=bool(os.environ.get("AWS_ENDPOINT_URL")))

model = torch.nn.Linear(1024, 1024)
optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
path = f"s3://{BUCKET}/examples/async-{uuid.uuid4().hex[:8]}"

saved = {k: v.clone() for k, v in model.state_dict().items()}
future = dcp.async_save(model.state_dict(), storage_writer=S3StorageWriter(REGION, path, s3client_config=CONFIG))
for _ in range(3):  # training goes on while the upload runs
    optimizer.zero_grad()
    model(torch.randn(8, 1024)).square().mean().backward()
    optimizer.step()
future.result()  # the checkpoint is complete (its .metadata written last)

restored = {k: torch.empty_like(v) for k, v in saved.items()}
dcp.load(restored, storage_reader=S3StorageReader(REGION, path, s3client_config=CONFIG))
assert all(torch.equal(saved[k], restored[k]) for k in saved)  # the weights as they were at the save
print(f"async checkpoint at {path} holds the weights from before the 3 training steps")

client = S3Client(REGION, s3client_config=CONFIG)
for page in client.list_objects(BUCKET, path.split("/", 3)[3] + "/"):
    for obj in page.object_info:
        client.delete_object(BUCKET, obj.key)
