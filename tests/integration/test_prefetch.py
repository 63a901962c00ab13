"""Datasets with many objects in flight (the prefetch window and S3MapDataset.__getitems__),
against SeaweedFS: the same items in the same order as without prefetch, memory bounded by the
budget, nothing left in flight after an early break, errors naming the object."""

from __future__ import annotations

import gc
import importlib.util
import multiprocessing
import os
import pickle
import time
import types
from pathlib import Path
from typing import Any, List, Tuple
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from s3torch import S3IterableDataset, S3MapDataset, S3NotFoundError, S3ReaderConstructor
from s3torch._prefetch import PrefetchedS3Reader, PrefetchWindow
from s3torch._servers import REGION
from tests.conftest import BUCKET, make_client
from tests.faults.proxy import FaultProxy

KiB = 1024
MiB = 1024 * KiB
# Sizes around the window's edges: empty, tiny, around the smallest and the first probe
# (64 KiB, 256 KiB), and larger than the small budgets the tests use.
POOL_SIZES = [0, 1, 100, 4095, 4096, 65535, 65536, 65537, 100_000, 262_144, 262_145, 300_000, 7, 20_000]


def _payload(i: int, n: int) -> bytes:
    block = f"<object {i}>".encode()
    return (block * (n // len(block) + 1))[:n]


@pytest.fixture(scope="module")
def pool(seaweed) -> Tuple[str, List[str]]:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    prefix = f"pf/{os.getpid()}/pool/"
    for i, n in enumerate(POOL_SIZES):
        client.put(BUCKET, f"{prefix}{i:03d}", _payload(i, n))
    return f"s3://{BUCKET}/{prefix}", [f"s3://{BUCKET}/{prefix}{i:03d}" for i in range(len(POOL_SIZES))]


def key_and_bytes(reader):  # type: ignore[no-untyped-def]
    return reader.key, reader.read()


def _kw(server, **extra: Any) -> dict:  # type: ignore[no-untyped-def]
    kw: dict = dict(
        region=REGION,
        endpoint=server.endpoint,
        s3client_config=make_client(server).s3client_config,
        transform=key_and_bytes,
    )
    kw.update(extra)
    return kw


# --- same items, same order -------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    picks=st.lists(st.integers(0, len(POOL_SIZES) - 1), max_size=20),
    budget=st.sampled_from([1, 4096, 65536, 100_000, 300_000, 128 * MiB]),
    count=st.integers(1, 8),
    shard=st.sampled_from([(0, 1), (0, 2), (1, 2), (2, 3)]),
    from_prefix=st.booleans(),
)
def test_iterable_same_items_with_and_without_prefetch(seaweed, pool, picks, budget, count, shard, from_prefix) -> None:  # type: ignore[no-untyped-def]
    prefix, uris = pool

    def make(**prefetch: int) -> S3IterableDataset:
        if from_prefix:
            return S3IterableDataset.from_prefix(prefix, enable_sharding=True, **_kw(seaweed, **prefetch))
        return S3IterableDataset.from_objects(
            [uris[i] for i in picks], enable_sharding=True, **_kw(seaweed, **prefetch)
        )

    worker = types.SimpleNamespace(id=shard[0], num_workers=shard[1])
    with mock.patch("torch.utils.data.get_worker_info", return_value=worker):
        plain = list(make(prefetch_count=0))
        ahead = list(make(prefetch_bytes=budget, prefetch_count=count))
    assert ahead == plain
    all_items = [(u.split("/", 3)[3], _payload(i, POOL_SIZES[i])) for i, u in enumerate(uris)]
    expected = all_items if from_prefix else [all_items[i] for i in picks]
    assert plain == expected[shard[0] :: shard[1]]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.lists(st.integers(0, len(POOL_SIZES) - 1), max_size=24),
    budget=st.sampled_from([1, 65536, 300_000, 128 * MiB]),
    count=st.integers(0, 8),
    from_prefix=st.booleans(),
)
def test_map_getitems_same_items_as_getitem(seaweed, pool, batch, budget, count, from_prefix) -> None:  # type: ignore[no-untyped-def]
    prefix, uris = pool
    kw = _kw(seaweed, prefetch_bytes=budget, prefetch_count=count)
    ds = S3MapDataset.from_prefix(prefix, **kw) if from_prefix else S3MapDataset.from_objects(uris, **kw)
    assert ds.__getitems__(batch) == [ds[i] for i in batch]


def test_prefetched_readers_behave_as_sequential_readers(seaweed, pool) -> None:  # type: ignore[no-untyped-def]
    prefix, uris = pool
    for ds in (
        S3IterableDataset.from_prefix(prefix, **_kw(seaweed, transform=lambda r: r)),
        S3IterableDataset.from_objects(uris, **_kw(seaweed, transform=lambda r: r)),
    ):
        for i, reader in enumerate(ds):
            data = _payload(i, POOL_SIZES[i])
            assert isinstance(reader, PrefetchedS3Reader)
            assert reader.bucket == BUCKET and reader.uri.endswith(f"{i:03d}")
            assert reader.seek(0, os.SEEK_END) == len(data)
            reader.seek(len(data) // 2)
            assert reader.read(10) == data[len(data) // 2 : len(data) // 2 + 10]
            reader.seek(0)
            buf = bytearray(len(data) + 3)
            assert reader.readinto(buf) == len(data) and bytes(buf[: len(data)]) == data
            assert reader.read() == b""
            assert reader.get_object_info().size == len(data)
            reader.close()
            with pytest.raises(ValueError):
                reader.read()


def test_range_based_reader_is_not_prefetched(seaweed, pool) -> None:  # type: ignore[no-untyped-def]
    prefix, _ = pool
    ds = S3IterableDataset.from_prefix(
        prefix, **_kw(seaweed, transform=lambda r: r, reader_constructor=S3ReaderConstructor.range_based())
    )
    readers = list(ds)
    assert readers and not any(isinstance(r, PrefetchedS3Reader) for r in readers)
    assert readers[8].read() == _payload(8, POOL_SIZES[8])


@pytest.mark.parametrize(
    "workers, ctx, kind",
    [
        (0, None, "iter"),
        (0, None, "map"),
        (2, "fork", "iter"),
        (2, "fork", "map"),
        (2, "spawn", "iter"),
        (2, "spawn", "map"),
    ],
)
def test_dataloader_same_items_with_and_without_prefetch(seaweed, pool, workers, ctx, kind) -> None:  # type: ignore[no-untyped-def]
    prefix, uris = pool

    def items(**prefetch: int) -> list:
        if kind == "iter":
            ds: Any = S3IterableDataset.from_prefix(prefix, enable_sharding=True, **_kw(seaweed, **prefetch))
            loader = DataLoader(ds, batch_size=None, num_workers=workers, multiprocessing_context=ctx)
            return [tuple(x) for x in loader]  # the default conversion turns tuples into lists
        ds = S3MapDataset.from_objects(uris, **_kw(seaweed, **prefetch))
        loader = DataLoader(ds, batch_size=5, num_workers=workers, multiprocessing_context=ctx, collate_fn=list)
        return [x for batch in loader for x in batch]

    plain = items(prefetch_count=0)
    assert items(prefetch_bytes=100_000, prefetch_count=4) == plain
    assert sorted(plain) == sorted((u.split("/", 3)[3], _payload(i, POOL_SIZES[i])) for i, u in enumerate(uris))
    if kind == "map":  # in index order, whatever the workers
        assert [k for k, _ in plain] == [u.split("/", 3)[3] for u in uris]


def test_datasets_pickle_with_their_prefetch_settings(seaweed, pool) -> None:  # type: ignore[no-untyped-def]
    prefix, uris = pool
    ds = S3IterableDataset.from_prefix(prefix, **_kw(seaweed, prefetch_bytes=12345, prefetch_count=3))
    first = next(iter(ds))
    back = pickle.loads(pickle.dumps(ds))
    assert (back.prefetch_bytes, back.prefetch_count) == (12345, 3)
    assert next(iter(back)) == first
    m = S3MapDataset.from_objects(uris, **_kw(seaweed, prefetch_bytes=777, prefetch_count=2))
    m2 = pickle.loads(pickle.dumps(m))
    assert (m2.prefetch_bytes, m2.prefetch_count) == (777, 2)
    assert m2.__getitems__([3, 1]) == m.__getitems__([3, 1])


# --- memory and teardown ----------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def big(seaweed) -> str:  # type: ignore[no-untyped-def]
    """48 objects of 2 MiB (96 MiB in all)."""
    client = make_client(seaweed)
    prefix = f"pf/{os.getpid()}/big/"
    blob = os.urandom(2 * MiB)
    for i in range(48):
        client.put(BUCKET, f"{prefix}{i:03d}", blob)
    return f"s3://{BUCKET}/{prefix}"


def _quiet(native) -> None:  # type: ignore[no-untyped-def]
    """Wait until every GET the window had started has finished (it only starts GETs when the
    consumer asks for an item, so none start meanwhile)."""
    for _ in range(6000):  # a guard against hanging, far above what the GETs take
        if not native.in_flight:
            return
        time.sleep(0.01)
    raise AssertionError(f"{native.in_flight} GETs still in flight after 60 s")


@pytest.mark.parametrize("from_prefix", [True, False])
def test_memory_bounded_by_the_budget_while_the_consumer_sleeps(seaweed, big, from_prefix) -> None:  # type: ignore[no-untyped-def]
    budget = 8 * MiB
    kw = _kw(seaweed, transform=lambda r: r, prefetch_bytes=budget, prefetch_count=1000)
    if from_prefix:
        ds: Any = S3IterableDataset.from_prefix(big, **kw)
    else:
        ds = S3IterableDataset.from_objects([f"{big}{i:03d}" for i in range(48)], **kw)
    native = ds._get_client()._get_native()
    gc.collect()
    before = _rss()
    it = iter(ds)
    first = next(it)
    _quiet(native)  # the consumer "sleeps": everything the window launched has landed
    grown = _rss() - before
    # The window holds at most the budget (one 2 MiB object is the consumer's); the dataset is
    # 96 MiB. The slack covers the CRT's connections and allocator noise.
    assert grown < budget + 2 * MiB + 16 * MiB, grown
    assert first.read() == next(it).read()
    del it, first
    gc.collect()


def test_window_reserves_at_most_the_budget(seaweed, big) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    native = client._get_native()
    entries = [
        (BUCKET, page_info.key, page_info)
        for page in client.list_objects(BUCKET, big.split("/", 3)[3])
        for page_info in page.object_info
    ]
    for budget in (1, 3 * MiB, 5 * MiB, 64 * MiB):
        with PrefetchWindow(native, entries, budget=budget, count=100) as window:
            n = 0
            for reader in window:
                assert window.reserved_bytes <= max(budget, 2 * MiB)
                assert window.pending <= 100
                n += 1
                del reader
            assert n == len(entries)


@pytest.mark.parametrize("kind", ["iter", "map"])
def test_early_break_leaves_nothing_in_flight(seaweed, big, kind) -> None:  # type: ignore[no-untyped-def]
    kw = _kw(seaweed, transform=lambda r: r.read(10), prefetch_bytes=64 * MiB, prefetch_count=32)
    if kind == "iter":
        ds: Any = S3IterableDataset.from_prefix(big, **kw)
        loader = DataLoader(ds, batch_size=None, num_workers=0)
    else:
        ds = S3MapDataset.from_prefix(big, **kw)
        loader = DataLoader(ds, batch_size=16, num_workers=0, collate_fn=list)
    native = ds._get_client()._get_native()
    gc.collect()
    before = _rss()
    for _round in range(3):
        for i, _ in enumerate(loader):
            if i == 1:
                break
        gc.collect()
        assert native.in_flight == 0
    assert _rss() - before < 48 * MiB  # one loop's window, not three, and not the dataset


def test_early_break_with_workers_stops_them(seaweed, big) -> None:  # type: ignore[no-untyped-def]
    ds = S3IterableDataset.from_prefix(big, enable_sharding=True, **_kw(seaweed, transform=lambda r: r.read(10)))
    it = iter(DataLoader(ds, batch_size=None, num_workers=2, multiprocessing_context="fork"))
    next(it)
    pids = [w.pid for w in it._workers]
    it._shutdown_workers()
    del it
    gc.collect()
    alive = {p.pid for p in multiprocessing.active_children()}
    assert not alive.intersection(pids)
    for pid in pids:  # reaped: no process left behind
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0, -1, 1.5, "64MiB", None, True])
def test_bad_budget_is_a_clear_error(budget) -> None:  # type: ignore[no-untyped-def]
    for make in (S3IterableDataset.from_prefix, S3MapDataset.from_prefix):
        with pytest.raises(ValueError, match="prefetch_bytes must be a positive int"):
            make(f"s3://{BUCKET}/x/", region=REGION, prefetch_bytes=budget)
    with pytest.raises(ValueError, match="prefetch_bytes"):
        S3IterableDataset.from_objects([f"s3://{BUCKET}/x"], region=REGION, prefetch_bytes=budget)


@pytest.mark.parametrize("count", [-1, 2.0, None])
def test_bad_count_is_a_clear_error(count) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="prefetch_count must be an int >= 0"):
        S3MapDataset.from_objects([f"s3://{BUCKET}/x"], region=REGION, prefetch_count=count)


@pytest.mark.parametrize("from_prefix", [True, False])
def test_object_deleted_after_listing_fails_at_its_item(seaweed, prefix: str, from_prefix: bool) -> None:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    for i in range(8):
        client.put(BUCKET, f"{prefix}{i}", _payload(i, 1000 + i))
    uris = [f"s3://{BUCKET}/{prefix}{i}" for i in range(8)]
    kw = _kw(seaweed, prefetch_count=2)
    ds: Any = (
        S3IterableDataset.from_prefix(f"s3://{BUCKET}/{prefix}", **kw)
        if from_prefix
        else S3IterableDataset.from_objects(uris, **kw)
    )
    it = iter(ds)
    got = [next(it)]  # listed; objects 1 and 2 are in flight, 5 not yet
    client.delete_object(BUCKET, f"{prefix}5")
    for _ in range(4):
        got.append(next(it))
    assert got == [(f"{prefix}{i}", _payload(i, 1000 + i)) for i in range(5)]
    with pytest.raises(S3NotFoundError) as ei:
        next(it)
    text = str(ei.value) + "".join(getattr(ei.value, "__notes__", []))
    assert f"{prefix}5" in text
    native = ds._get_client()._get_native()
    del it
    gc.collect()
    assert native.in_flight == 0

    m = S3MapDataset.from_prefix(f"s3://{BUCKET}/{prefix}", **_kw(seaweed)) if from_prefix else None
    if m is not None:
        assert len(m) == 7  # listed after the delete
    m = S3MapDataset.from_objects(uris, **_kw(seaweed))
    with pytest.raises(S3NotFoundError, match=f"{prefix}5"):
        m.__getitems__([0, 5, 1])
    assert m.__getitems__([4, 6]) == [(f"{prefix}{i}", _payload(i, 1000 + i)) for i in (4, 6)]


class _Boom(Exception):
    pass


def _raise_on_three(reader):  # type: ignore[no-untyped-def]
    if reader.key.endswith("003"):
        raise _Boom("bad label")
    return reader.key


@pytest.mark.parametrize("kind", ["iter", "map"])
def test_transform_error_names_the_object_and_leaves_nothing_in_flight(seaweed, pool, kind) -> None:  # type: ignore[no-untyped-def]
    prefix, uris = pool
    kw = _kw(seaweed, transform=_raise_on_three)
    got: list = []
    with pytest.raises(_Boom) as ei:
        if kind == "iter":
            ds: Any = S3IterableDataset.from_prefix(prefix, **kw)
            for k in ds:
                got.append(k)
        else:
            ds = S3MapDataset.from_prefix(prefix, **kw)
            ds.__getitems__(list(range(len(uris))))
    assert any(f"{prefix}003" in n for n in getattr(ei.value, "__notes__", []))
    if kind == "iter":
        assert got == [u.split("/", 3)[3] for u in uris[:3]]
    gc.collect()
    assert ds._get_client()._get_native().in_flight == 0


# --- objects of unknown size (from_objects): GETs per object --------------------------------------


@pytest.fixture(scope="module")
def alike(seaweed) -> List[str]:  # type: ignore[no-untyped-def]
    """24 objects of 1.5 MiB: alike in size, and above the 1 MiB the probes once stopped at."""
    client = make_client(seaweed)
    prefix = f"pf/{os.getpid()}/alike/"
    for i in range(24):
        client.put(BUCKET, f"{prefix}{i:03d}", _payload(i, 3 * MiB // 2))
    return [f"s3://{BUCKET}/{prefix}{i:03d}" for i in range(24)]


@pytest.mark.parametrize("kind", ["iter", "map"])
def test_objects_alike_in_size_cost_one_get_each_once_one_size_is_known(seaweed, alike, kind) -> None:  # type: ignore[no-untyped-def]
    want = [(u.split("/", 3)[3], _payload(i, 3 * MiB // 2)) for i, u in enumerate(alike)]
    path = alike[0].split("/", 3)[3].rsplit("/", 1)[0] + "/"
    with FaultProxy.in_front_of(seaweed.endpoint) as proxy:
        kw = _kw(seaweed, prefetch_count=8)
        kw["endpoint"] = proxy.endpoint
        if kind == "iter":
            assert list(S3IterableDataset.from_objects(alike, **kw)) == want
            # The first window's first 8 probes went out before any size was known (256 KiB
            # each): those objects took two GETs; every later one, one.
            assert proxy.requests_to(path, "GET") == len(alike) + 8
        else:
            ds = S3MapDataset.from_objects(alike, **kw)
            got, per_batch = [], []
            for batch in DataLoader(ds, batch_size=8, collate_fn=list):
                got += batch
                per_batch.append(proxy.requests_to(path, "GET") - sum(per_batch))
            assert got == want
            # Each batch is a new window; the sizes the first one learnt carry over.
            assert per_batch == [16, 8, 8]


def test_a_probe_of_a_whole_part_still_finds_a_larger_object(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    # With 5 MiB parts, objects of exactly 5 MiB make the probe a whole part: it must still be
    # a probe (the object must fit; a larger one says its size and the rest follows).
    client = make_client(seaweed, part_size=5 * MiB)
    sizes = [5 * MiB, 5 * MiB, 5 * MiB, 6 * MiB + 3, 5 * MiB, 1]
    uris = []
    for i, n in enumerate(sizes):
        client.put(BUCKET, f"{prefix}{i}", _payload(i, n))
        uris.append(f"s3://{BUCKET}/{prefix}{i}")
    kw = _kw(seaweed, s3client_config=client.s3client_config, prefetch_count=1)
    got = list(S3IterableDataset.from_objects(uris, **kw))
    assert got == [(f"{prefix}{i}", _payload(i, n)) for i, n in enumerate(sizes)]


# --- the latency proxy of the benchmarks ----------------------------------------------------------


def _latency_proxy() -> Any:
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "latency_proxy.py"
    spec = importlib.util.spec_from_file_location("latency_proxy", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_datasets_through_the_latency_proxy(seaweed, pool) -> None:  # type: ignore[no-untyped-def]
    prefix, uris = pool
    host, port = seaweed.endpoint.split("://", 1)[1].rsplit(":", 1)
    with _latency_proxy().LatencyProxy(host, int(port), 0.005, idle_seconds=30) as proxy:
        kw = _kw(seaweed)
        kw["endpoint"] = proxy.endpoint
        direct = list(S3IterableDataset.from_prefix(prefix, **_kw(seaweed)))
        assert list(S3IterableDataset.from_prefix(prefix, **kw)) == direct
        assert S3MapDataset.from_objects(uris, **kw).__getitems__([5, 2]) == [direct[5], direct[2]]
        assert proxy.requests >= len(uris) + 2
    with pytest.raises(ValueError):
        _latency_proxy().LatencyProxy(host, int(port), -1)


def test_torch_sees_getitems(seaweed, pool) -> None:  # type: ignore[no-untyped-def]
    # DataLoader's fetcher calls __getitems__ for batches when the dataset defines it.
    prefix, _ = pool
    ds = S3MapDataset.from_prefix(prefix, **_kw(seaweed))
    with mock.patch.object(S3MapDataset, "__getitem__", side_effect=AssertionError("per item")):
        batches = list(DataLoader(ds, batch_size=4, collate_fn=list))
    assert sum(len(b) for b in batches) == len(POOL_SIZES)
    assert torch.utils.data.get_worker_info() is None


def test_fork_while_the_window_has_transfers_in_flight(seaweed, pool, big) -> None:  # type: ignore[no-untyped-def]
    # The main process holds a window with GETs in flight (held 200 ms each by the proxy) when
    # DataLoader forks its workers: the workers use clients of their own, and the main
    # process's window carries on.
    prefix, uris = pool
    host, port = seaweed.endpoint.split("://", 1)[1].rsplit(":", 1)
    with _latency_proxy().LatencyProxy(host, int(port), 0.2, idle_seconds=30) as proxy:
        kw = _kw(seaweed, transform=lambda r: len(r.read()), prefetch_count=16)
        kw["endpoint"] = proxy.endpoint
        outer = S3IterableDataset.from_prefix(big, **kw)
        it = iter(outer)
        sizes = [next(it)]
        assert outer._get_client()._get_native().in_flight > 0
        inner = S3IterableDataset.from_prefix(prefix, enable_sharding=True, **_kw(seaweed))
        loader = DataLoader(inner, batch_size=None, num_workers=2, multiprocessing_context="fork")
        got = sorted(tuple(x) for x in loader)
        sizes += list(it)
    assert got == sorted((u.split("/", 3)[3], _payload(i, POOL_SIZES[i])) for i, u in enumerate(uris))
    assert sizes == [2 * MiB] * 48
