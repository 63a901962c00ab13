"""A training loop that saves a DCP checkpoint every few steps, keeps the last two, and, started
again, resumes from the newest complete one (a save that died has no .metadata, and is never
picked).

    python -m s3torch serve            # or any S3; then paste the environment lines it prints
    python examples/dcp_resume.py      # bucket: $S3TORCH_BUCKET (default s3torch)

Endpoint, region and credentials come from the environment (AWS_ENDPOINT_URL, AWS_REGION,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), as for any AWS tool.
"""

import os
import uuid

import torch
import torch.distributed.checkpoint as dcp

from s3torch import S3ClientConfig
from s3torch.dcp import (
    S3StorageReader,
    S3StorageWriter,
    latest_checkpoint,
    list_checkpoints,
    prune_checkpoints,
    remove_checkpoint,
)

REGION = os.environ.get("AWS_REGION", "us-east-1")
BUCKET = os.environ.get("S3TORCH_BUCKET", "s3torch")
# A custom endpoint (a local server) is addressed endpoint/bucket/key.
CONFIG = S3ClientConfig(force_path_style=bool(os.environ.get("AWS_ENDPOINT_URL")))
RUN = f"s3://{BUCKET}/examples/run-{uuid.uuid4().hex[:8]}/"
SAVE_EVERY = 5


def train(steps: int) -> int:
    """Train to ``steps``, from the newest checkpoint of the run if there is one; the last step."""
    torch.manual_seed(0)
    model = torch.nn.Linear(32, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    state = {"model": model.state_dict(), "step": torch.tensor(0)}
    ckpt = latest_checkpoint(RUN, REGION, s3client_config=CONFIG)
    if ckpt is not None:
        dcp.load(state, storage_reader=S3StorageReader(REGION, ckpt, s3client_config=CONFIG))
        model.load_state_dict(state["model"])
        print(f"resumed from {ckpt} at step {int(state['step'])}")
    for step in range(int(state["step"]) + 1, steps + 1):
        x = torch.randn(16, 32)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % SAVE_EVERY == 0:
            state = {"model": model.state_dict(), "step": torch.tensor(step)}
            path = f"{RUN}step{step}"
            dcp.save(state, storage_writer=S3StorageWriter(REGION, path, s3client_config=CONFIG))
            removed = prune_checkpoints(RUN, keep=2, region=REGION, s3client_config=CONFIG)
            print(f"step {step}: saved {path}" + (f", removed {', '.join(removed)}" if removed else ""))
    return steps


train(12)  # saves step5 and step10
assert latest_checkpoint(RUN, REGION, s3client_config=CONFIG) == f"{RUN}step10/"
train(20)  # a restart: resumes at step 10, saves step15 and step20, keeps the last two
kept = [c.path[len(RUN) :] for c in list_checkpoints(RUN, REGION, s3client_config=CONFIG)]
assert kept == ["step15/", "step20/"], kept
print(f"kept {kept}")

for c in list_checkpoints(RUN, REGION, s3client_config=CONFIG):  # remove what the example wrote
    remove_checkpoint(c.path, REGION, s3client_config=CONFIG)
