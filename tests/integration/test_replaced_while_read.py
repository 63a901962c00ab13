"""An object replaced while a load reads it (_versions.py): a DCP load or a safetensors load
whose file is overwritten between its first GET (probe, header) and the GETs of the bytes
it located fails naming the file, instead of filling tensors from the other version."""

from __future__ import annotations

from typing import Dict

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3torch._servers import REGION
from s3torch.dcp import CheckpointCorruptError, S3StorageReader, S3StorageWriter, _parallel_load
from s3torch.safetensors import FileChangedError, safe_open, save
from tests.conftest import BUCKET, make_client

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def model(seed: int) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"big": torch.randn(500, 1000, generator=g), "small": torch.randn(10, generator=g)}


@pytest.mark.parametrize("staged", [False, True])
def test_a_checkpoint_file_replaced_after_the_probe(seaweed, prefix: str, monkeypatch, staged: bool) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    cfg = client.s3client_config
    for name, seed in (("ck", 1), ("other", 2)):  # the same layout, other values
        w = S3StorageWriter(REGION, f"s3://{BUCKET}/{prefix}{name}", s3client_config=cfg, endpoint=seaweed.endpoint)
        dcp.save(model(seed), storage_writer=w)
    replacement = client.get_object(BUCKET, f"{prefix}other/__0_0.distcp").read()
    real_plan = _parallel_load.ParallelLoader._plan_tensor

    def plan_after_a_writer(self, it, planner):  # type: ignore[no-untyped-def]
        # The probe (records located, save marks checked) is done: now the file is replaced.
        client.put(BUCKET, f"{prefix}ck/__0_0.distcp", replacement)
        return real_plan(self, it, planner)

    monkeypatch.setattr(_parallel_load.ParallelLoader, "_plan_tensor", plan_after_a_writer)
    reader = S3StorageReader(REGION, f"s3://{BUCKET}/{prefix}ck", s3client_config=cfg, endpoint=seaweed.endpoint)
    reader._force_staging = staged
    out = {k: torch.zeros_like(v) for k, v in model(0).items()}
    with pytest.raises(CheckpointException) as ei:
        dcp.load(out, storage_reader=reader)
    err = ei.value.failures[0][0]
    assert isinstance(err, CheckpointCorruptError), err
    assert f"s3://{BUCKET}/{prefix}ck/__0_0.distcp item big" in str(err)
    assert "was replaced while this load read it" in str(err)


@pytest.mark.parametrize("cast", [None, torch.bfloat16])  # direct GETs / through the staging ring
def test_a_safetensors_file_replaced_after_its_header(seaweed, prefix: str, monkeypatch, cast) -> None:  # type: ignore[no-untyped-def]
    """The replacement's header is longer (its metadata): every offset the first header gave
    now points elsewhere, and safetensors files carry no checksum of their own."""
    client = make_client(seaweed)
    key = f"{prefix}m.safetensors"
    client.put(BUCKET, key, save(model(1)))
    f = safe_open(f"s3://{BUCKET}/{key}", "pt", dtype=cast, client=client, verify_checksums=False)
    client.put(BUCKET, key, save(model(2), {"note": "x" * 100}))
    with pytest.raises(FileChangedError, match=rf"s3://{BUCKET}/{key} tensor '\w+': the object was replaced"):
        f.get_tensors()
    # Opened afresh, it loads the new version whole.
    got = safe_open(f"s3://{BUCKET}/{key}", "pt", client=client).get_tensors()
    assert all(torch.equal(got[k], v) for k, v in model(2).items())
