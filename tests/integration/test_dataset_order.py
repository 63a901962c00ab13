"""S3IterableDataset's seeded shuffle, epochs, sharding and exact mid-epoch resume (torchdata's
StatefulDataLoader), against SeaweedFS; S3MapDataset's shuffled batches still fetched together.

GETs are counted by tests/faults/proxy.py in front of the server: a resumed epoch GETs no
object that was already consumed."""

from __future__ import annotations

import collections
import gc
import operator
import re
import time
from typing import Any, List, Tuple

import pytest
import torch
from torch.utils.data import DataLoader

from s3torch import S3IterableDataset, S3MapDataset
from s3torch._servers import REGION
from tests.conftest import BUCKET, make_client
from tests.faults.proxy import Fault, FaultProxy

N = 37  # not a multiple of any number of consumers: the streams have unequal lengths

key = operator.attrgetter("key")


@pytest.fixture(scope="module")
def objects(seaweed) -> Tuple[str, List[str]]:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    base = f"order/{time.monotonic_ns()}/"
    keys = [f"{base}k{i:03d}" for i in range(N)]
    for k in keys:
        client.put(BUCKET, k, k.encode())
    return f"s3://{BUCKET}/{base}", keys


def _kw(server: Any, endpoint: str = "", **extra: Any) -> dict:
    kw: dict = dict(
        region=REGION,
        endpoint=endpoint or server.endpoint,
        s3client_config=make_client(server).s3client_config,
        transform=key,
    )
    kw.update(extra)
    return kw


def _prefix_ds(server: Any, prefix: str, epoch: int = 0, **kw: Any) -> S3IterableDataset:
    ds = S3IterableDataset.from_prefix(prefix, **_kw(server, **kw))
    ds.set_epoch(epoch)
    return ds


def test_seeded_order_same_seed_same_order_epochs_differ(seaweed, objects) -> None:  # type: ignore[no-untyped-def]
    prefix, keys = objects
    e0 = list(_prefix_ds(seaweed, prefix, shuffle=True, seed=7))
    assert e0 == list(_prefix_ds(seaweed, prefix, shuffle=True, seed=7))
    assert sorted(e0) == keys and e0 != keys
    e1 = list(_prefix_ds(seaweed, prefix, 1, shuffle=True, seed=7))
    assert sorted(e1) == keys and e1 != e0
    assert list(_prefix_ds(seaweed, prefix, shuffle=True, seed=8)) != e0
    assert list(_prefix_ds(seaweed, prefix, 1, shuffle=False)) == keys  # no shuffle: listing order, any epoch
    # from_objects: a permutation of the list given, fixed by (seed, epoch) alone
    uris = [f"s3://{BUCKET}/{k}" for k in reversed(keys)]
    a = S3IterableDataset.from_objects(uris, **_kw(seaweed, shuffle=True, seed=7))
    b = S3IterableDataset.from_objects(uris, **_kw(seaweed, shuffle=True, seed=7, prefetch_count=0))
    assert list(a) == list(b) and sorted(a) == keys and list(a) != keys[::-1]
    # the global order is the listing permuted the same way, whatever the source
    assert [keys[::-1].index(k) for k in list(a)] == [keys.index(k) for k in e0]


def test_every_object_once_per_epoch_for_1_2_ranks_and_1_2_4_workers(seaweed, objects, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Ranks simulated by RANK/WORLD_SIZE (what torchrun sets); fork-started workers. With
    batch_size=None a rank's loader yields its share of the global order, in that order."""
    prefix, keys = objects
    glob = list(_prefix_ds(seaweed, prefix, 2, shuffle=True, seed=3))
    for world in (1, 2):
        for workers in (1, 2, 4):
            seen: List[str] = []
            for rank in range(world):
                monkeypatch.setenv("RANK", str(rank))
                monkeypatch.setenv("WORLD_SIZE", str(world))
                ds = _prefix_ds(seaweed, prefix, 2, shuffle=True, seed=3, enable_sharding=True)
                got = list(DataLoader(ds, batch_size=None, num_workers=workers))
                assert got == glob[rank::world], (world, workers, rank)
                seen += got
            assert collections.Counter(seen) == collections.Counter(keys), (world, workers)


def _settled(proxy: FaultProxy) -> int:
    """The number of GETs so far, once no more arrive: a GET the interrupted run's prefetch sent
    just before it was cancelled may reach the proxy after the run is gone."""
    n = -1
    while n != (n := len(proxy.targets("GET"))):
        time.sleep(0.3)
    return n


def _object_gets(proxy: FaultProxy, since: int) -> List[str]:
    """Keys of the object GETs since the ``since``-th GET (listings left out)."""
    out = []
    for t in proxy.targets("GET")[since:]:
        m = re.match(rf"/{BUCKET}/([^?]+)", t)
        if m and "list-type" not in t:
            out.append(m.group(1))
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_with_stateful_dataloader(seaweed, objects, proxy, workers) -> None:  # type: ignore[no-untyped-def]
    from torchdata.stateful_dataloader import StatefulDataLoader

    prefix, keys = objects

    def loader() -> StatefulDataLoader:
        ds = _prefix_ds(seaweed, prefix, 4, endpoint=proxy.endpoint, shuffle=True, seed=11, enable_sharding=True)
        return StatefulDataLoader(ds, batch_size=None, num_workers=workers, snapshot_every_n_steps=1)

    full = list(loader())
    assert sorted(full) == keys
    for k in (1, 16, N - 1):
        it = iter(first_loader := loader())
        first = [next(it) for _ in range(k)]
        state = first_loader.state_dict()
        del it, first_loader
        gc.collect()  # workers and prefetch windows gone: every later GET is the resumed run's
        assert first == full[:k]
        mark = _settled(proxy)
        resumed = loader()
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert rest == full[k:], (workers, k)
        gets = _object_gets(proxy, mark)
        assert not set(gets) & set(first), f"GETs of consumed objects: {sorted(set(gets) & set(first))}"
        assert collections.Counter(gets) == collections.Counter(full[k:]), (workers, k)
    # the state is small: no object list in it
    ds = _prefix_ds(seaweed, prefix, shuffle=True, seed=11)
    next(iter(ds))
    assert len(repr(ds.state_dict())) < 400


def test_bad_input_and_states_from_other_datasets(seaweed, objects) -> None:  # type: ignore[no-untyped-def]
    prefix, keys = objects
    with pytest.raises(ValueError, match="seed"):
        S3IterableDataset.from_prefix(prefix, **_kw(seaweed, seed="1"))
    with pytest.raises(ValueError, match="shuffle"):
        S3IterableDataset.from_prefix(prefix, **_kw(seaweed, shuffle="yes"))
    ds = _prefix_ds(seaweed, prefix, shuffle=True)
    for bad in (1.5, "2", True, -1):
        with pytest.raises(ValueError, match="epoch"):
            ds.set_epoch(bad)  # type: ignore[arg-type]
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    assert state["position"] == 1 and state["count"] == N and state["epoch"] == 0
    other = S3IterableDataset.from_prefix(prefix + "k00", **_kw(seaweed, shuffle=True))
    with pytest.raises(ValueError, match="source"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="seed"):
        _prefix_ds(seaweed, prefix, shuffle=True, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        ds.load_state_dict({"position": 3})
    # the same prefix with another object count: found when the listing is compared
    grown = _prefix_ds(seaweed, prefix, shuffle=True)
    grown.load_state_dict(dict(state, count=N + 1))
    with pytest.raises(ValueError, match=f"{N + 1} items when it was saved, {N} now"):
        list(grown)
    # another split (2 workers saved, 1 here)
    split = _prefix_ds(seaweed, prefix, shuffle=True, enable_sharding=True)
    split.load_state_dict(dict(state, consumers=2))
    with pytest.raises(ValueError, match="number of consumers"):
        list(split)
    # an empty prefix: an empty epoch, shuffled or resumed
    empty = f"s3://{BUCKET}/order/none-{time.monotonic_ns()}/"
    assert list(_prefix_ds(seaweed, empty, shuffle=True)) == []
    e = _prefix_ds(seaweed, empty, shuffle=True)
    e.load_state_dict(e.state_dict())
    assert list(e) == []
    # a state round-trips: the same dataset resumes where it was
    again = _prefix_ds(seaweed, prefix, shuffle=True)
    again.load_state_dict(state)
    assert again.state_dict() == state
    assert [k for k in again] == list(_prefix_ds(seaweed, prefix, shuffle=True))[1:]


def test_map_dataset_shuffled_batches_are_fetched_concurrently(seaweed, objects, proxy) -> None:  # type: ignore[no-untyped-def]
    """A shuffled DataLoader hands S3MapDataset.__getitems__ a batch of random indices: its
    GETs overlap (16 objects each held 0.3 s by the proxy arrive in well under 16 x 0.3 s)."""
    prefix, keys = objects
    proxy.add(Fault("slow", method="GET", path=rf"^/{BUCKET}/order/", delay=0.3))
    ds = S3MapDataset.from_prefix(prefix, **_kw(seaweed, endpoint=proxy.endpoint))
    assert len(ds) == N
    sampler = torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(ds, batch_size=16, sampler=sampler, collate_fn=list)
    indices = list(torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0)))[:16]
    t0 = time.monotonic()
    batch = next(iter(loader))
    took = time.monotonic() - t0
    assert batch == [keys[i] for i in indices]
    assert took < 16 * 0.3 / 3, f"a batch of 16 took {took:.2f} s: not concurrent"
