"""Where S3IterableDataset(enable_sharding=True) takes its rank and world size from, and the
error when they cannot be told (no server: the rank is resolved before any request)."""

from __future__ import annotations

import pickle

import pytest
import torch

from s3torch import S3ClientConfig, S3IterableDataset

URIS = [f"s3://b/k{i}" for i in range(6)]


def _dataset() -> S3IterableDataset:
    cfg = S3ClientConfig(access_key_id="a", secret_access_key="s")
    return S3IterableDataset.from_objects(
        URIS, region="us-east-1", endpoint="http://127.0.0.1:9", s3client_config=cfg, enable_sharding=True
    )


@pytest.fixture(autouse=True)
def _no_launcher_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def _pretend_dist(monkeypatch: pytest.MonkeyPatch, rank: int, world: int) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)


def test_not_distributed_is_rank_0_of_1() -> None:
    assert _dataset()._rank_and_world_size() == (0, 1)


def test_the_pickle_carries_the_rank_of_the_process_that_pickled_it(monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _dataset()  # made before the process group: nothing recorded
    with monkeypatch.context() as m:
        _pretend_dist(m, 2, 3)
        data = pickle.dumps(ds)  # what a DataLoader sends a spawn/forkserver worker
    # In the worker, torch.distributed is not initialised.
    assert pickle.loads(data)._rank_and_world_size() == (2, 3)


def test_the_rank_at_construction_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        _pretend_dist(m, 1, 4)
        ds = _dataset()
    assert pickle.loads(pickle.dumps(ds))._rank_and_world_size() == (1, 4)


def test_the_launcher_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "5")
    assert _dataset()._rank_and_world_size() == (2, 5)


@pytest.mark.parametrize(
    "env, words",
    [
        ({"WORLD_SIZE": "3"}, "RANK=None"),
        ({"RANK": "1"}, "WORLD_SIZE=None"),
        ({"RANK": "x", "WORLD_SIZE": "3"}, "not integers"),
        ({"RANK": "3", "WORLD_SIZE": "3"}, "not in 0..WORLD_SIZE-1"),
    ],
)
def test_a_rank_that_cannot_be_told_raises_naming_what_to_set(
    monkeypatch: pytest.MonkeyPatch, env: dict, words: str
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match="set both RANK and WORLD_SIZE") as e:
        iter(_dataset())
    assert words in str(e.value)
