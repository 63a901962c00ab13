"""Save a model's state dict to S3 with torch.distributed.checkpoint, load it into a fresh model.

    python -m s3torch serve            # or any S3; then paste the environment lines it prints
    python examples/dcp_save_load.py   # bucket: $S3TORCH_BUCKET (default s3torch)

Endpoint, region and credentials come from the environment (AWS_ENDPOINT_URL, AWS_REGION,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), as for any AWS tool.
"""

import os
import uuid

import torch
import torch.distributed.checkpoint as dcp

from s3torch import S3Client, S3ClientConfig
from s3torch.dcp import S3StorageReader, S3StorageWriter

REGION = os.environ.get("AWS_REGION", "us-east-1")
BUCKET = os.environ.get("S3TORCH_BUCKET", "s3torch")
# A custom endpoint (a local server) is addressed endpoint/bucket/key.
CONFIG = S3ClientConfig(force_path_style=bool(os.environ.get("AWS_ENDPOINT_URL")))

model = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
path = f"s3://{BUCKET}/examples/dcp-{uuid.uuid4().hex[:8]}"

dcp.save(model.state_dict(), storage_writer=S3StorageWriter(REGION, path, s3client_config=CONFIG))

fresh = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.ReLU(), torch.nn.Linear(512, 10))
state = fresh.state_dict()
dcp.load(state, storage_reader=S3StorageReader(REGION, path, s3client_config=CONFIG))
fresh.load_state_dict(state)
assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))
print(f"saved and restored {len(state)} tensors at {path}")

client = S3Client(REGION, s3client_config=CONFIG)  # remove what the example wrote
for page in client.list_objects(BUCKET, path.split("/", 3)[3] + "/"):
    for obj in page.object_info:
        client.delete_object(BUCKET, obj.key)
