"""S3TarDataset against SeaweedFS: samples byte-exact against the files the shards were made
from (Python's tarfile, three formats), seeded shard order and shuffle buffer, every sample once
across ranks and workers, exact resume with StatefulDataLoader (GETs counted by the fault
proxy: no shard already consumed is read again), and a truncated shard's error."""

from __future__ import annotations

import collections
import gc
import io
import random
import re
import tarfile
import time
from typing import Any, Dict, List, Tuple

import pytest
from torch.utils.data import DataLoader

from s3torch import S3TarDataset, TarShardError
from s3torch._servers import REGION
from tests.conftest import BUCKET, make_client
from tests.integration.test_dataset_order import _settled

SHARDS = 7
PER_SHARD = 9
FORMATS = (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT)


def _shard(rng: random.Random, s: int) -> Tuple[bytes, List[Dict[str, Any]]]:
    buf = io.BytesIO()
    samples = []
    with tarfile.open(fileobj=buf, mode="w", format=FORMATS[s % 3]) as tf:
        for j in range(PER_SHARD):
            key = f"s{s}/{j:06d}" if j != 4 or s % 3 == 2 else f"s{s}/" + "long" * 30 + f"/{j:06d}"
            sample: Dict[str, Any] = {"__key__": key}
            for ext in ("jpg", "cls"):
                data = rng.randbytes(rng.choice([0, 10, 512, 3000, 20_000]))
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                sample[ext] = data
            samples.append(sample)
    return buf.getvalue(), samples


@pytest.fixture(scope="module")
def shards(seaweed) -> Tuple[str, List[str], List[List[Dict[str, Any]]], Dict[str, bytes]]:  # type: ignore[no-untyped-def]
    client = make_client(seaweed)
    base = f"tars/{time.monotonic_ns()}/"
    rng = random.Random(0)
    uris, per_shard, blobs = [], [], {}
    for s in range(SHARDS):
        blob, samples = _shard(rng, s)
        key = f"{base}shard-{s:03d}.tar"
        client.put(BUCKET, key, blob)
        uri = f"s3://{BUCKET}/{key}"
        for sample in samples:
            sample["__url__"] = uri
        uris.append(uri)
        per_shard.append(samples)
        blobs[key] = blob
    return f"s3://{BUCKET}/{base}", uris, per_shard, blobs


def _kw(server: Any, endpoint: str = "", **extra: Any) -> dict:
    kw: dict = dict(
        region=REGION, endpoint=endpoint or server.endpoint, s3client_config=make_client(server).s3client_config
    )
    kw.update(extra)
    return kw


def _keys(samples: List[Dict[str, Any]]) -> List[str]:
    return [s["__key__"] for s in samples]


def test_samples_byte_exact_in_shard_order_and_seeded_shuffles(seaweed, shards) -> None:  # type: ignore[no-untyped-def]
    prefix, uris, per_shard, _ = shards
    every = [s for samples in per_shard for s in samples]
    assert list(S3TarDataset.from_prefix(prefix, **_kw(seaweed))) == every
    assert list(S3TarDataset.from_objects(uris[::-1], **_kw(seaweed))) == [s for ss in per_shard[::-1] for s in ss]
    a = list(S3TarDataset.from_prefix(prefix, **_kw(seaweed, shuffle=True, seed=4)))
    assert a == list(S3TarDataset.from_prefix(prefix, **_kw(seaweed, shuffle=True, seed=4)))
    assert a != every and sorted(_keys(a)) == sorted(_keys(every))
    # shards are what is shuffled: each shard's samples stay together, in their order
    assert [x for i in range(0, len(a), PER_SHARD) for x in a[i : i + PER_SHARD]] == a
    assert all(a[i : i + PER_SHARD] in per_shard for i in range(0, len(a), PER_SHARD))
    b = list(S3TarDataset.from_prefix(prefix, **_kw(seaweed, shuffle=True, seed=4, shuffle_buffer=10)))
    assert b != a and sorted(_keys(b)) == sorted(_keys(every))
    assert {s["__key__"]: s for s in b} == {s["__key__"]: s for s in every}
    ds = S3TarDataset.from_prefix(prefix, **_kw(seaweed, shuffle=True, seed=4, transform=lambda s: s["__key__"]))
    ds.set_epoch(1)
    assert list(ds) != _keys(a)


def test_every_sample_once_across_ranks_and_workers(seaweed, shards, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    prefix, _, per_shard, _ = shards
    every = sorted(s["__key__"] for ss in per_shard for s in ss)
    for world, workers in ((1, 2), (2, 2)):
        seen: List[str] = []
        for rank in range(world):
            monkeypatch.setenv("RANK", str(rank))
            monkeypatch.setenv("WORLD_SIZE", str(world))
            ds = S3TarDataset.from_prefix(
                prefix,
                **_kw(seaweed, shuffle=True, seed=2, enable_sharding=True, transform=lambda s: s["__key__"]),
            )
            seen += list(DataLoader(ds, batch_size=None, num_workers=workers))
        assert sorted(seen) == every, (world, workers)


@pytest.mark.parametrize("workers,buffer", [(0, 0), (2, 0), (2, 5)])
def test_resume_mid_epoch_reads_no_consumed_shard(seaweed, shards, proxy, workers, buffer) -> None:  # type: ignore[no-untyped-def]
    from torchdata.stateful_dataloader import StatefulDataLoader

    prefix = shards[0]

    def loader() -> StatefulDataLoader:
        ds = S3TarDataset.from_prefix(
            prefix,
            **_kw(seaweed, proxy.endpoint, shuffle=True, seed=9, shuffle_buffer=buffer, enable_sharding=True),
        )
        ds.set_epoch(2)
        return StatefulDataLoader(ds, batch_size=None, num_workers=workers, snapshot_every_n_steps=1)

    full = list(loader())
    assert len(full) == SHARDS * PER_SHARD
    for k in (5, 31):
        it = iter(first_loader := loader())
        first = [next(it) for _ in range(k)]
        state = first_loader.state_dict()
        del it, first_loader
        gc.collect()
        assert first == full[:k]
        mark = _settled(proxy)
        resumed = loader()
        resumed.load_state_dict(state)
        assert list(resumed) == full[k:], (workers, buffer, k)
        done = {u for u, n in collections.Counter(s["__url__"] for s in first).items() if n == PER_SHARD}
        gets = [t for t in proxy.targets("GET")[mark:] if "list-type" not in t]
        read = {m.group(1) for t in gets if (m := re.match(rf"/{BUCKET}/([^?]+)", t))}
        again = {u for u in done if u.split("/", 3)[3] in read}
        if buffer == 0:
            assert not again, f"consumed shards read again: {sorted(again)}"
        assert len(gets) <= SHARDS - len(done) + max(1, workers)


def test_truncated_and_corrupt_shards_raise_naming_shard_and_member(seaweed, shards) -> None:  # type: ignore[no-untyped-def]
    prefix, uris, per_shard, blobs = shards
    client = make_client(seaweed)
    key0 = uris[0].split("/", 3)[3]
    blob = blobs[key0]
    base = f"tars/bad-{time.monotonic_ns()}/"
    cut = blob[: len(blob) // 2]
    client.put(BUCKET, f"{base}cut.tar", cut)
    # the second member's header (it follows the first member's data) with a flipped bit
    first_size = len(per_shard[0][0]["jpg"])
    hdr = 512 * (1 + (first_size + 511) // 512)
    bad = bytearray(blob)
    bad[hdr + 1] ^= 0x01
    client.put(BUCKET, f"{base}corrupt.tar", bytes(bad))
    ds = S3TarDataset.from_objects([f"s3://{BUCKET}/{base}cut.tar"], **_kw(seaweed))
    with pytest.raises(TarShardError, match=r"truncated") as ei:
        list(ds)
    assert ei.value.shard == f"s3://{BUCKET}/{base}cut.tar" and ei.value.member.startswith("s0/")
    ds = S3TarDataset.from_prefix(f"s3://{BUCKET}/{base}corrupt", **_kw(seaweed))
    with pytest.raises(TarShardError, match="checksum") as ei:
        list(ds)
    assert ei.value.shard.endswith("corrupt.tar") and ei.value.member == "s0/000000.jpg"
    with pytest.raises(ValueError, match="shuffle_buffer"):
        S3TarDataset.from_prefix(prefix, **_kw(seaweed, shuffle_buffer=-1))
    # a state from the object dataset is not a tar state
    from s3torch import S3IterableDataset

    objs = S3IterableDataset.from_prefix(prefix, **_kw(seaweed))
    with pytest.raises(ValueError, match="dataset kind"):
        S3TarDataset.from_prefix(prefix, **_kw(seaweed)).load_state_dict(objs.state_dict())


def _even_shard(names: List[str]) -> bytes:
    """A shard whose samples all take the same bytes, so removing one moves every later sample
    back by exactly one: a resume offset then lands on another sample's first header."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name in names:
            data = name.encode() * 100
            info = tarfile.TarInfo(f"{name}.bin")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_resume_inside_a_shard_replaced_since_fails(seaweed, prefix) -> None:  # type: ignore[no-untyped-def]
    """A state saved inside a shard names the shard's version (ETag); the resumed GET from its
    offset is held to it. The shard rewritten since without its first sample: the saved offset
    now starts the sample after the one the state expects. Before, the resume skipped that
    sample without a word."""
    from s3torch import S3ObjectChangedError

    client = make_client(seaweed)
    names = [f"n{j:04d}" for j in range(8)]
    key = f"{prefix}even/shard-000.tar"
    client.put(BUCKET, key, _even_shard(names))
    source = f"s3://{BUCKET}/{prefix}even/"
    ds = S3TarDataset.from_prefix(source, **_kw(seaweed))
    it = iter(ds)
    assert _keys([next(it) for _ in range(3)]) == names[:3]
    state = ds.state_dict()
    assert state["offset"] > 0 and state["etag"] == client.head_object(BUCKET, key).etag
    same = S3TarDataset.from_prefix(source, **_kw(seaweed))
    same.load_state_dict(state)
    assert _keys(list(same)) == names[3:]  # the same version: exactly the rest
    client.put(BUCKET, key, _even_shard(names[1:]))
    resumed = S3TarDataset.from_prefix(source, **_kw(seaweed))
    resumed.load_state_dict(state)
    with pytest.raises(S3ObjectChangedError) as ei:
        list(resumed)
    notes = " ".join(getattr(ei.value, "__notes__", []))
    assert f"resuming s3://{BUCKET}/{key} at byte {state['offset']}" in notes
    assert "the shard was replaced since that state was saved" in notes
    # A state of the version before this one carried no ETag (states saved at a shard
    # boundary never need one): it resumes as before.
    old = dict(state, offset=0, etag="")
    fresh = S3TarDataset.from_prefix(source, **_kw(seaweed))
    fresh.load_state_dict({k: v for k, v in old.items() if k != "etag"})
    assert _keys(list(fresh))[0] == names[1]
