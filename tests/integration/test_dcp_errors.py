"""What dcp.load raises when there is no checkpoint to read: a missing checkpoint, bad
credentials, an endpoint that is down. torch wraps it in its CheckpointException; the one
failure inside is s3torch's typed error, after one retry round, with none of torch's
"Falling back to rank local metadata" tracebacks logged and no s3torch warning about metadata."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3torch import S3ClientConfig, S3Exception, S3NotFoundError, S3PermissionError
from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch.dcp import S3StorageReader, S3StorageWriter
from tests.conftest import BUCKET, never_answered_endpoint

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


def _load(endpoint: str, path: str, secret: str = SECRET_KEY) -> BaseException:
    cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=secret)
    with pytest.raises(CheckpointException) as info:
        dcp.load(
            {"a": torch.zeros(4)}, storage_reader=S3StorageReader(REGION, path, endpoint=endpoint, s3client_config=cfg)
        )
    (err, _tb), *others = info.value.failures.values()
    assert others == []
    last = str(info.value).rstrip().splitlines()[-1]
    assert last.startswith(f"{type(err).__module__}.{type(err).__name__}: "), last  # s3torch's, not AssertionError
    return err


@pytest.mark.parametrize("case", ["missing", "bad_credentials", "dead_endpoint"])
def test_load_without_a_readable_checkpoint(seaweed: Any, prefix: str, caplog: Any, case: str) -> None:
    caplog.set_level(logging.DEBUG)
    path = f"s3://{BUCKET}/{prefix}none"
    t0 = time.monotonic()
    if case == "missing":
        err = _load(seaweed.endpoint, path)
        assert isinstance(err, S3NotFoundError) and str(err).startswith(f"no DCP checkpoint at {path}")
    elif case == "bad_credentials":
        err = _load(seaweed.endpoint, path, secret="wrong")
        assert isinstance(err, S3PermissionError) and err.http_status == 403
        assert err.code == "SignatureDoesNotMatch" and "secret key does not match" in str(err), str(err)
    else:
        err = _load(never_answered_endpoint(), path)
        assert isinstance(err, S3Exception) and isinstance(err, ConnectionError), (type(err), str(err))
    assert time.monotonic() - t0 < 15  # one retry round: <= 10 s for a dead endpoint, 5 s margin
    # What s3torch logs, and whether torch fell back to rank-local metadata (its warnings go to
    # the root logger, which caplog always sees). Not every record caplog holds: newer pytest
    # (9.2) also attaches to torch's non-propagating DCP event logger, whose ERROR event for
    # the failed load quotes our error and mentions metadata.
    ours = [
        r.getMessage() for r in caplog.records if r.name.split(".")[0] == "s3torch" and r.levelno >= logging.WARNING
    ]
    assert not [m for m in ours if "metadata" in m.lower()], ours
    fallbacks = [r.getMessage() for r in caplog.records if "rank local metadata" in r.getMessage().lower()]
    assert fallbacks == [], fallbacks


def test_rank_local_checkpoint_still_loads(seaweed: Any, prefix: str) -> None:
    # Saved without collectives, a checkpoint has only __0.metadata: torch's fallback reads it.
    path = f"s3://{BUCKET}/{prefix}local"
    cfg = S3ClientConfig(force_path_style=True, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    sd = {"a": torch.arange(4.0)}
    dcp.save(
        sd,
        storage_writer=S3StorageWriter(REGION, path, endpoint=seaweed.endpoint, s3client_config=cfg),
        use_collectives=False,
    )
    out = {"a": torch.zeros(4)}
    dcp.load(out, storage_reader=S3StorageReader(REGION, path, endpoint=seaweed.endpoint, s3client_config=cfg))
    assert torch.equal(out["a"], sd["a"])


def test_unreadable_rank_local_metadata_is_reported(seaweed: Any, prefix: str) -> None:
    """A rank-local ``__0.metadata`` (and no global one) that cannot be used: the user gets
    s3torch's typed error, not torch 2.11's bare ``AssertionError: metadata is None`` (its
    fallback swallowed what the rank-local read raised)."""
    from s3torch.dcp import CheckpointCorruptError
    from tests.conftest import make_client

    path = f"s3://{BUCKET}/{prefix}local"
    make_client(seaweed).put(BUCKET, f"{prefix}local/__0.metadata", b"not a pickle at all")
    err = _load(seaweed.endpoint, path)
    assert isinstance(err, CheckpointCorruptError) and "__0.metadata" in str(err), (type(err), str(err))
