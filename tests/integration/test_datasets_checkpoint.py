"""Datasets through DataLoader, checkpoints of real modules, and bad inputs (SeaweedFS)."""

from __future__ import annotations

import collections

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from s3torch import S3Checkpoint, S3InvalidArgumentError, S3IterableDataset, S3MapDataset, S3ReaderConstructor
from s3torch._servers import REGION
from tests.conftest import BUCKET, make_client

N_OBJECTS = 10


@pytest.fixture(scope="module")
def dataset_prefix(seaweed) -> str:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    for i in range(N_OBJECTS):
        client.put(BUCKET, f"ds/images/{i:03d}.bin", f"object-{i}".encode() * (i + 1))
    return f"s3://{BUCKET}/ds/images/"


def _cfg(server):  # type: ignore[no-untyped-def]
    return make_client(server).s3client_config


def read_item(reader):  # type: ignore[no-untyped-def]
    return reader.key, reader.read()


def _expected() -> dict:
    return {f"ds/images/{i:03d}.bin": f"object-{i}".encode() * (i + 1) for i in range(N_OBJECTS)}


def _collect(loader) -> collections.Counter:  # type: ignore[no-untyped-def]
    seen: collections.Counter = collections.Counter()
    for key, data in loader:
        assert data == _expected()[key]
        seen[key] += 1
    return seen


@pytest.mark.parametrize("workers, ctx", [(0, None), (2, "fork"), (2, "spawn"), (2, "forkserver")])
def test_map_dataset_in_dataloader(seaweed, dataset_prefix: str, workers: int, ctx) -> None:  # type: ignore[no-untyped-def]
    ds = S3MapDataset.from_prefix(
        dataset_prefix, region=REGION, endpoint=seaweed.endpoint, transform=read_item, s3client_config=_cfg(seaweed)
    )
    assert len(ds) == N_OBJECTS
    loader = DataLoader(ds, batch_size=None, num_workers=workers, multiprocessing_context=ctx, shuffle=True)
    assert _collect(loader) == collections.Counter(_expected().keys())


@pytest.mark.parametrize("workers, ctx", [(0, None), (2, "fork"), (2, "spawn")])
@pytest.mark.parametrize("sharding", [True, False])
def test_iterable_dataset_in_dataloader(seaweed, dataset_prefix: str, workers: int, ctx, sharding: bool) -> None:  # type: ignore[no-untyped-def]
    ds = S3IterableDataset.from_prefix(
        dataset_prefix,
        region=REGION,
        endpoint=seaweed.endpoint,
        transform=read_item,
        s3client_config=_cfg(seaweed),
        enable_sharding=sharding,
    )
    loader = DataLoader(ds, batch_size=None, num_workers=workers, multiprocessing_context=ctx)
    seen = _collect(loader)
    copies = 1 if sharding or workers == 0 else workers  # unsharded: every worker sees every object
    assert seen == collections.Counter({k: copies for k in _expected()})


def test_map_dataset_with_distributed_sampler(seaweed, dataset_prefix: str) -> None:  # type: ignore[no-untyped-def]
    ds = S3MapDataset.from_prefix(
        dataset_prefix, region=REGION, endpoint=seaweed.endpoint, transform=read_item, s3client_config=_cfg(seaweed)
    )
    seen: collections.Counter = collections.Counter()
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        seen += _collect(DataLoader(ds, batch_size=None, sampler=sampler, num_workers=0))
    assert seen == collections.Counter(_expected().keys())


def test_iterable_sharding_across_ranks_and_workers(seaweed, dataset_prefix: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # Pretend to be rank r of 2 (as torch.distributed would say) with 2 workers each.
    seen: collections.Counter = collections.Counter()
    for rank in range(2):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        ds = S3IterableDataset.from_prefix(
            dataset_prefix,
            region=REGION,
            endpoint=seaweed.endpoint,
            transform=read_item,
            s3client_config=_cfg(seaweed),
            enable_sharding=True,
        )
        seen += _collect(DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork"))
    assert seen == collections.Counter(_expected().keys())


def test_from_objects_and_reader_constructors(seaweed, dataset_prefix: str) -> None:  # type: ignore[no-untyped-def]
    uris = [dataset_prefix + "003.bin", dataset_prefix + "007.bin"]
    for ctor in [None, S3ReaderConstructor.sequential(), S3ReaderConstructor.range_based(buffer_size=4)]:
        ds = S3MapDataset.from_objects(
            uris, region=REGION, endpoint=seaweed.endpoint, s3client_config=_cfg(seaweed), reader_constructor=ctor
        )
        item = ds[1]
        assert item.bucket == BUCKET and item.key == "ds/images/007.bin"
        assert item.read() == _expected()["ds/images/007.bin"]
    it = S3IterableDataset.from_objects(
        uris[0], region=REGION, endpoint=seaweed.endpoint, s3client_config=_cfg(seaweed)
    )
    assert [r.key for r in it] == ["ds/images/003.bin"]


def _failing_transform(reader):  # type: ignore[no-untyped-def]
    raise KeyError("bad label")


@pytest.mark.parametrize("workers", [0, 2])
def test_transform_error_names_the_object(seaweed, dataset_prefix: str, workers: int) -> None:  # type: ignore[no-untyped-def]
    ds = S3MapDataset.from_prefix(
        dataset_prefix,
        region=REGION,
        endpoint=seaweed.endpoint,
        transform=_failing_transform,
        s3client_config=_cfg(seaweed),
    )
    loader = DataLoader(ds, batch_size=None, num_workers=workers, multiprocessing_context="fork" if workers else None)
    it = iter(loader)
    try:
        with pytest.raises(KeyError) as ei:
            list(it)
    finally:
        if hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()  # now, not whenever the iterator is collected
    text = str(ei.value) + "".join(getattr(ei.value, "__notes__", []))
    assert "s3://" + BUCKET + "/ds/images/" in text


@pytest.mark.parametrize("uri", ["http://bucket/key", "bucket/key", "s3://", "s3:///key", ""])
def test_bad_dataset_uris(uri: str) -> None:
    with pytest.raises(S3InvalidArgumentError):
        S3MapDataset.from_prefix(uri, region=REGION)
    with pytest.raises(S3InvalidArgumentError):
        S3IterableDataset.from_objects([uri], region=REGION)


def test_checkpoint_round_trip_of_a_module(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.LayerNorm(128), torch.nn.Linear(128, 10)
    )
    ckpt = S3Checkpoint(REGION, endpoint=seaweed.endpoint, s3client_config=_cfg(seaweed))
    uri = f"s3://{BUCKET}/{prefix}model.ckpt"
    with ckpt.writer(uri) as writer:
        torch.save(model.state_dict(), writer)
    fresh = torch.nn.Sequential(
        torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.LayerNorm(128), torch.nn.Linear(128, 10)
    )
    with ckpt.reader(uri) as reader:
        fresh.load_state_dict(torch.load(reader, weights_only=True))
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    for bad in ["s3://bucket", "s3://bucket/", "file:///tmp/x"]:
        with pytest.raises(S3InvalidArgumentError):
            ckpt.writer(bad)
        with pytest.raises(S3InvalidArgumentError):
            ckpt.reader(bad)
