"""Lightning checkpoints on S3: train one epoch saving to s3://, then resume from it.

pip install ".[lightning]"
python examples/lightning_checkpoint.py   # endpoint and bucket as in dcp_save_load.py
"""

import os
import uuid

import lightning.pytorch as pl
import torch

from s3torch import S3Client, S3ClientConfig
from s3torch.lightning import S3LightningCheckpoint

REGION = os.environ.get("AWS_REGION", "us-east-1")
BUCKET = os.environ.get("S3TORCH_BUCKET", "s3torch")
CONFIG = S3ClientConfig(force_path_style=bool(os.environ.get("AWS_ENDPOINT_URL")))


class Regression(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)


def trainer(epochs: int) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        plugins=[S3LightningCheckpoint(REGION, s3client_config=CONFIG)],  # every checkpoint path is s3://
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


if __name__ == "__main__":
    uri = f"s3://{BUCKET}/examples/lightning-{uuid.uuid4().hex[:8]}/epoch1.ckpt"
    first = trainer(1)
    first.fit(Regression())
    first.save_checkpoint(uri)

    second = trainer(2)
    second.fit(Regression(), ckpt_path=uri)  # resumes at epoch 1 from S3
    assert second.current_epoch == 2
    print(f"trained to epoch 1, checkpointed to {uri}, resumed and trained to epoch 2")

    S3Client(REGION, s3client_config=CONFIG).delete_object(BUCKET, uri.split("/", 3)[3])
