"""Lightning Trainer.fit for one epoch saving to S3, then resuming from S3 (SeaweedFS)."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.plugins.io import AsyncCheckpointIO

from s3torch._servers import REGION
from s3torch.lightning import S3LightningCheckpoint
from tests.conftest import BUCKET, make_client


class TinyModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)

    def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):  # type: ignore[no-untyped-def]
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):  # type: ignore[no-untyped-def]
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 8, generator=g)
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, x.sum(1, keepdim=True)), batch_size=16)


@pytest.mark.parametrize("use_async", [False, True])
def test_fit_save_and_resume_from_s3(seaweed, prefix: str, use_async: bool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    io = S3LightningCheckpoint(REGION, endpoint=seaweed.endpoint, s3client_config=make_client(seaweed).s3client_config)
    plugin = AsyncCheckpointIO(io) if use_async else io
    uri = f"s3://{BUCKET}/{prefix}epoch1.ckpt"
    model = TinyModel()
    trainer = pl.Trainer(
        max_epochs=1,
        plugins=[plugin],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model)
    trainer.save_checkpoint(uri)
    trainer.strategy.checkpoint_io.teardown()  # AsyncCheckpointIO: waits for the upload
    info = make_client(seaweed).head_object(BUCKET, prefix + "epoch1.ckpt")
    assert info.size > 0

    resumed = TinyModel()
    trainer2 = pl.Trainer(
        max_epochs=2,
        plugins=[
            S3LightningCheckpoint(
                REGION, endpoint=seaweed.endpoint, s3client_config=make_client(seaweed).s3client_config
            )
        ],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer2.fit(resumed, ckpt_path=uri)
    assert trainer2.current_epoch == 2  # resumed after epoch 1 and ran one more
    loaded = io.load_checkpoint(uri)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded["state_dict"][k], v)
    io.remove_checkpoint(uri)
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(uri)


class _RunsCode:
    """Unpickling this calls ``_mark`` (a module-level function): code a checkpoint runs."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (_mark, (self.path,))


def _mark(path: str) -> str:
    with open(path, "w") as f:
        f.write("ran")
    return path


def test_an_untrusted_checkpoint_runs_no_code_unless_asked(seaweed, prefix: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """As Lightning 2.6 loads a local or fsspec checkpoint: weights only unless the caller
    asks for full unpickling. Before, S3LightningCheckpoint unpickled everything by default."""
    import pickle

    from lightning.fabric.utilities.cloud_io import _load

    marker = tmp_path / "ran"
    ckpt = {"state_dict": {"w": torch.ones(2)}, "evil": _RunsCode(str(marker))}
    io = S3LightningCheckpoint(REGION, endpoint=seaweed.endpoint, s3client_config=make_client(seaweed).s3client_config)
    uri = f"s3://{BUCKET}/{prefix}evil.ckpt"
    io.save_checkpoint(ckpt, uri)
    local = tmp_path / "evil.ckpt"
    torch.save(ckpt, local)
    with pytest.raises(pickle.UnpicklingError):
        _load(str(local))  # Lightning's own loader refuses it ...
    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint(uri)  # ... and so does s3torch's
    assert not marker.exists()
    with pytest.raises(pickle.UnpicklingError):
        io.load_checkpoint(uri, weights_only=True)
    loaded = io.load_checkpoint(uri, weights_only=False)  # asked for: the caller trusts it
    assert marker.read_text() == "ran" and torch.equal(loaded["state_dict"]["w"], torch.ones(2))
