"""Lightning integration: S3LightningCheckpoint, a CheckpointIO that saves to and loads from
s3:// paths (``pip install "s3torch[lightning]"``)."""

from .s3_lightning_checkpoint import S3LightningCheckpoint

__all__ = ["S3LightningCheckpoint"]
