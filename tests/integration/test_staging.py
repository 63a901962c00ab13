"""The staging ring under real DCP loads (SeaweedFS): destinations that cannot take a GET
directly (non-contiguous CPU views here; CUDA tensors in tests/gpu/) stream through a fixed
ring of slots. Also run with every tensor forced through the ring, so the path CUDA loads
take is exercised on every CI run without a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from s3torch._servers import ACCESS_KEY, REGION, SECRET_KEY
from s3torch.dcp import S3StorageReader
from tests.conftest import BUCKET, make_client
from tests.integration.test_dcp import assert_same, empty_like_sd, reader, state_dict, writer

MiB = 1024 * 1024


def _forced(server, path: str, **kw) -> S3StorageReader:  # type: ignore[no-untyped-def]
    r = reader(server, path, **kw)
    r._force_staging = True
    return r


@pytest.mark.parametrize("slot", [512, 64 * 1024, 1 * MiB])
def test_forced_staging_round_trip(seaweed, prefix: str, slot: int) -> None:  # type: ignore[no-untyped-def]
    """Every tensor of the conformance state dict through rings of 1 and 3 slots of 512 B
    (hundreds of slots per tensor), 64 KiB and 1 MiB (larger than every tensor). The two
    large tensors stream through the ring; the small records come whole with the probe."""
    sd = state_dict()
    path = f"s3://{BUCKET}/{prefix}ckpt"
    dcp.save(sd, storage_writer=writer(seaweed, path))
    for nslots in (1, 3):
        out = empty_like_sd(sd)
        r = _forced(seaweed, path, staging_bytes=nslots * slot, staging_slot_bytes=slot)
        dcp.load(out, storage_reader=r)
        assert_same(sd, out)
        stats = r.last_load_stats
        assert stats["direct"] == 0 and stats["fallback"] == 0 and stats["staged"] == 2, stats
        assert stats["ring_slot_uses"] >= stats["staged"]


def test_non_contiguous_destinations_stream_through_the_ring(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(3)
    sd = {
        "w": torch.randn(300, 200, generator=g),
        "saved_t": torch.randn(300, 150, generator=g).t(),
        "cube": torch.randn(6, 60, 80, generator=g),
        "i": torch.arange(14000).reshape(140, 100),
    }
    path = f"s3://{BUCKET}/{prefix}nc"
    dcp.save(sd, storage_writer=writer(seaweed, path))
    out = {
        "w": torch.zeros(200, 300).t(),  # transposed destination
        "saved_t": torch.zeros(150, 300),  # contiguous destination of a stored transpose
        "cube": torch.zeros(6, 80, 60).transpose(1, 2),
        "i": torch.zeros(140, 200, dtype=torch.int64)[:, ::2],
    }  # strided view
    r = reader(seaweed, path, staging_bytes=64 * 1024, staging_slot_bytes=16 * 1024)
    dcp.load(out, storage_reader=r)
    for k in sd:
        assert torch.equal(out[k], sd[k]), k
    assert r.last_load_stats["staged"] == 4 and r.last_load_stats["fallback"] == 0, r.last_load_stats


def test_corrupt_bytes_through_the_ring_name_the_item(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    from tests.integration.test_dcp import _corrupt

    def flip(d: bytearray) -> bytearray:
        d[len(d) // 2] ^= 0xFF
        return d

    path = _corrupt(seaweed, prefix, flip)
    dst = torch.zeros(256, 256).t()
    with pytest.raises(CheckpointException) as ei:
        dcp.load({"w": dst}, storage_reader=reader(seaweed, path, staging_bytes=8192, staging_slot_bytes=4096))
    assert "CRC32" in str(ei.value) and "item w" in str(ei.value) and "__0_0.distcp" in str(ei.value)


def load_with_a_held_slot(seaweed, prefix: str, out: torch.Tensor) -> tuple:  # type: ignore[no-untyped-def]
    """Save a 1 MiB tensor (16 slots of 64 KiB), then load it into ``out`` through a ring of 4
    slots while a proxy holds the GET of its first slot for 2 s. Returns (the saved tensor,
    the load's stats, how many GETs the proxy held)."""
    from tests.faults.proxy import Fault, FaultProxy

    slot = 64 * 1024
    src = torch.randn(256, 1024, generator=torch.Generator().manual_seed(9))
    path = f"s3://{BUCKET}/{prefix}slow"
    dcp.save({"w": src}, storage_writer=writer(seaweed, path))
    client = make_client(seaweed)
    data = client.get_object(BUCKET, f"{prefix}slow/__0_0.distcp").read()
    start = data.find(src.numpy().tobytes()[:4096])
    assert start > 0
    with FaultProxy.in_front_of(seaweed.endpoint) as proxy:
        held = proxy.add(Fault("slow", method="GET", range=f"^bytes={start}-{start + slot - 1}$", delay=2.0))
        r = S3StorageReader(
            REGION,
            path,
            s3client_config=client.s3client_config,
            endpoint=proxy.endpoint,
            staging_bytes=4 * slot,
            staging_slot_bytes=slot,
        )
        dcp.load({"w": out}, storage_reader=r)
    return src, r.last_load_stats, held.injected


def test_a_slow_get_holds_only_its_own_slot(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """The proxy holds the GET of a staged tensor's first slot for 2 s: the ring's other slots
    land, copy and start GETs around it (completion order, not start order), and the load is
    byte-exact and CRC checked."""
    out = torch.zeros(1024, 256).t()  # transposed: through the ring
    src, stats, held = load_with_a_held_slot(seaweed, prefix, out)
    assert held == 1
    assert torch.equal(out, src)
    assert stats["staged"] == 1 and stats["ring_slot_uses"] == 16, stats
    # FIFO landing would wait for the held slot before any other: here at least the ring's
    # other three slots landed (and were reused) while it was held.
    assert stats["ring_out_of_order"] >= 3, stats


def test_ring_too_small_for_a_slot_is_refused(seaweed) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="too small for one slot"):
        reader(seaweed, f"s3://{BUCKET}/x", staging_bytes=4096, staging_slot_bytes=8192)


_RSS_CHILD = r"""
import json, sys, torch
import torch.distributed.checkpoint as dcp
from s3torch import S3ClientConfig
from s3torch.dcp import S3StorageReader
a = json.loads(sys.argv[1])
out = {k: torch.zeros(s[::-1]).t() for k, s in a["shapes"].items()}  # transposed: all staged
for t in out.values():
    t.fill_(1.0)
def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: what came before does not count
base = status("VmRSS")
r = S3StorageReader(a["region"], a["path"], endpoint=a["endpoint"], staging_bytes=a["ring"],
                    s3client_config=S3ClientConfig(force_path_style=True, access_key_id=a["ak"],
                                                   secret_access_key=a["sk"]))
dcp.load(out, storage_reader=r)
peak = status("VmHWM")
ok = all(bool((t == float(i)).all()) for i, t in enumerate(out.values()))
print(json.dumps({"growth": peak - base, "ok": ok, "stats": r.last_load_stats}))
"""


def test_staged_1gib_load_stays_within_the_ring(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """Peak RSS growth of a 1 GiB load into transposed destinations: ring + 128 MiB at most,
    measured in a fresh process."""
    shapes = {f"t{i}": (4096, 8192) for i in range(8)}  # 8 x 128 MiB fp32
    path = f"s3://{BUCKET}/{prefix}big"
    sd = {k: torch.full(s, float(i)) for i, (k, s) in enumerate(shapes.items())}
    dcp.save(sd, storage_writer=writer(seaweed, path, thread_count=2))
    del sd
    ring = 256 * MiB
    arg = json.dumps(
        {
            "shapes": shapes,
            "path": path,
            "endpoint": seaweed.endpoint,
            "region": REGION,
            "ak": ACCESS_KEY,
            "sk": SECRET_KEY,
            "ring": ring,
        }
    )
    res = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, arg],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "AWS_EC2_METADATA_DISABLED": "true"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["ok"] and got["stats"]["staged"] == 8, got
    assert got["growth"] <= ring + 128 * MiB, f"peak RSS grew {got['growth'] / MiB:.0f} MiB"
