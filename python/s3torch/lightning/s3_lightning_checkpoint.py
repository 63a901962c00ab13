"""S3LightningCheckpoint: Lightning's CheckpointIO on s3torch's reader and writer."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any, Dict, Optional, Union, cast

import lightning
import torch
from lightning.pytorch.plugins.io import CheckpointIO

from .._client import S3Client
from .._config import S3ClientConfig
from .._saved_size import saved_size
from .._uri import parse_s3_uri, s3_path
from .._user_agent import UserAgent
from ..s3reader.constructor import ReaderConstructor

# Lightning before 2.6 loaded every checkpoint with weights_only=False; 2.6 leaves it to torch.
_LIGHTNING_BEFORE_2_6 = tuple(int(p) for p in lightning.__version__.split(".")[:2] if p.isdigit()) < (2, 6)


class S3LightningCheckpoint(CheckpointIO):
    """Save, load and remove Lightning checkpoints at s3:// paths. Works inside Lightning's
    ``AsyncCheckpointIO`` too (saves then run on its thread; the GIL is released during
    uploads)."""

    def __init__(
        self,
        region: Optional[str] = None,
        s3client_config: Optional[S3ClientConfig] = None,
        endpoint: Optional[str] = None,
        reader_constructor: Optional[ReaderConstructor] = None,
    ) -> None:
        super().__init__()
        user_agent = UserAgent(["lightning", lightning.__version__])
        self._client = S3Client(region, endpoint=endpoint, s3client_config=s3client_config, user_agent=user_agent)
        self.region = self._client.region
        self._reader_constructor = reader_constructor

    def save_checkpoint(
        self, checkpoint: Dict[str, Any], path: Union[str, Path], storage_options: Optional[Any] = None
    ) -> None:
        """torch.save ``checkpoint`` to the ``s3://`` path (the object appears only if the save completes)."""
        if storage_options is not None:
            raise TypeError(f"S3LightningCheckpoint.save_checkpoint takes no storage_options, got {storage_options!r}")
        bucket, key = parse_s3_uri(s3_path(path), need_key=True)
        # About its size, so that a checkpoint past S3's 10,000 parts of part_size gets larger parts.
        hint = saved_size(checkpoint)
        with self._client.put_object(
            bucket, key, size_hint=hint
        ) as writer:  # aborted, not completed, if torch.save fails
            torch.save(checkpoint, cast(IO[bytes], writer))

    def load_checkpoint(
        self, path: Union[str, Path], map_location: Optional[Any] = None, weights_only: Optional[bool] = None
    ) -> Dict[str, Any]:
        """torch.load the checkpoint at the ``s3://`` path.

        ``weights_only`` as Lightning's own loader takes it for a local or fsspec path: given
        (``Trainer.fit(weights_only=...)``), it is used; None lets torch decide on Lightning 2.6
        and later (weights only, unless ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says otherwise),
        and is full unpickling before 2.6, as Lightning itself did then. Full unpickling runs
        whatever code the checkpoint names: pass ``weights_only=False`` only for checkpoints
        you trust."""
        bucket, key = parse_s3_uri(s3_path(path), need_key=True)
        if weights_only is None and _LIGHTNING_BEFORE_2_6:
            weights_only = False
        with self._client.get_object(bucket, key, reader_constructor=self._reader_constructor) as reader:
            return torch.load(cast(IO[bytes], reader), map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: Union[str, Path]) -> None:
        """Delete the checkpoint object at the ``s3://`` path."""
        bucket, key = parse_s3_uri(s3_path(path), need_key=True)
        self._client.delete_object(bucket, key)

    def teardown(self) -> None:
        """Nothing to release: the client holds no per-run state."""
        pass
