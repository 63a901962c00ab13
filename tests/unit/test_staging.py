"""The staging ring without a server: RingLoad over an in-memory fake of the native client, so
every slot size, shape, dtype and failure point can be driven exactly. The same ring under
real DCP loads is in tests/integration/test_staging.py; on CUDA in tests/gpu/."""

from __future__ import annotations

import random
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Set

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3torch import _crt
from s3torch.dcp import CheckpointCorruptError, CheckpointReadError, StagingError
from s3torch.dcp._staging import (
    RingLoad,
    StagedTensor,
    StagingRing,
    blocks,
    borrow_ring,
    check_ring_size,
    release_staging_memory,
)
from tests.unit.test_torch_save import DTYPES as TORCH_SAVE_DTYPES

DTYPES = [*TORCH_SAVE_DTYPES, torch.int16]


class _Handle:
    etag = '"1"'  # one version of every object

    def __init__(self, n: int, error: Optional[BaseException], finished: Any = None) -> None:
        self.n, self.error, self.cancelled, self.waited = n, error, False, False
        self._finished = finished  # a delayed GET: done() asks this

    def wait(self) -> int:
        self.waited = True
        if self.error is not None:
            raise self.error
        if self.cancelled:
            raise _crt.S3CancelledError("cancelled")
        return self.n

    def done(self) -> bool:
        return self._finished is None or self._finished()

    def cancel(self) -> None:
        self.cancelled = True


class FakeNative:
    """start_get_into copies from in-memory objects at once; records every destination
    address; can fail the k-th GET (at start or at wait) or return a short read.

    ``wait_any`` decides which GET "finishes" first (every fake one is done at once):
    ``order`` "fifo" (the oldest), "lifo" (the newest) or "random" (seeded). GETs whose
    number is in ``slow`` (a delayed slot) are not done while the other ``total`` GETs of the
    load have not all landed: the ring has to work around them, whatever the CRC threads'
    timing."""

    def __init__(self, objects: Dict[str, bytes], order: str = "fifo", seed: int = 0) -> None:
        self.objects = objects
        self.addresses: List[int] = []
        self.fail_at: Optional[int] = None
        self.fail_on_start = False
        self.short_at: Optional[int] = None
        self.handles: List[_Handle] = []
        self.order, self.rng = order, random.Random(seed)
        self.slow: Set[int] = set()
        self.total = 0  # with slow: how many GETs the load makes
        self.landed: List[int] = []  # GET numbers in the order wait_any handed them out

    def wait_any(self, handles: List[_Handle], timeout: Optional[float] = None) -> Optional[int]:
        number = {id(h): k for k, h in enumerate(self.handles)}
        fast = [i for i, h in enumerate(handles) if h.done()]
        assert fast, "wait_any with no GET that can finish: the load would hang"
        i = {"fifo": fast[0], "lifo": fast[-1]}.get(self.order)
        if i is None:
            i = self.rng.choice(fast)
        self.landed.append(number[id(handles[i])])
        return i

    def start_get_into(self, bucket: str, key: str, buf: torch.Tensor, offset: int, length: int) -> _Handle:
        k = len(self.addresses)
        self.addresses.append(buf.data_ptr())
        err = None
        if self.fail_at == k:
            err = _crt.S3Exception(f"injected failure of GET {k}")
            if self.fail_on_start:
                raise err
        data = self.objects[key][offset : offset + length]
        if self.short_at == k:
            data = data[: len(data) // 2]
        if data:
            buf[: len(data)].copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        h = _Handle(len(data), err, self._released if k in self.slow else None)
        self.handles.append(h)
        return h

    def _released(self) -> bool:
        return len(self.landed) >= self.total - len(self.slow)


def _raw(t: torch.Tensor) -> bytes:
    c = t.contiguous().reshape(-1)
    return c.view(torch.uint8).numpy().tobytes() if c.numel() else b""


def _staged(key: str, src: torch.Tensor, dst: torch.Tensor, done: List[str], start: int = 0) -> StagedTensor:
    raw = _raw(src)
    return StagedTensor(
        key, start, len(raw), dst, zlib.crc32(raw), f"s3://b/{key} item {key}", lambda: done.append(key)
    )


def _random(shape: List[int], dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point or dtype.is_complex:
        return torch.randn(shape, generator=g).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=g).to(dtype)


POOL = ThreadPoolExecutor(2)


def _run(
    objects: Dict[str, bytes], tensors: List[StagedTensor], nslots: int, slot: int, order: str = "fifo"
) -> FakeNative:
    native = FakeNative(objects, order)
    ring = StagingRing(nslots * slot, slot, pinned=False)
    RingLoad(native, "b", ring, POOL).run(tensors)
    assert len(ring.free) == ring.nslots
    return native


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.lists(st.integers(0, 9), min_size=0, max_size=4),
    dtype=st.sampled_from(DTYPES),
    slot=st.sampled_from([64, 128, 192, 512, 4096]),
    nslots=st.integers(1, 4),
    layout=st.sampled_from(["contiguous", "transposed", "strided"]),
    order=st.sampled_from(["fifo", "lifo", "random"]),
)
def test_ring_lands_every_byte(
    shape: List[int], dtype: torch.dtype, slot: int, nslots: int, layout: str, order: str
) -> None:
    """Tensors smaller than, equal to and many times a slot, into contiguous, transposed and
    strided destinations, byte-exact, whatever order the slots' GETs finish in."""
    src = _random(shape, dtype, seed=len(shape) * 31 + slot)
    if layout == "transposed" and src.dim() >= 2:
        dst = (
            torch.zeros(list(reversed(shape)), dtype=dtype).t()
            if src.dim() == 2
            else torch.zeros(shape[::-1], dtype=dtype).permute(*reversed(range(src.dim())))
        )
    elif layout == "strided" and src.dim() >= 1:
        dst = torch.zeros(shape[:-1] + [shape[-1] * 2], dtype=dtype)[..., ::2]
    else:
        dst = torch.zeros(shape, dtype=dtype)
    assert dst.shape == src.shape
    done: List[str] = []
    _run({"k": b"pad" + _raw(src)}, [_staged("k", src, dst, done, start=3)], nslots, slot, order)
    assert torch.equal(dst, src) and done == ["k"]


def _three_tensors(slot: int) -> Dict[str, torch.Tensor]:
    return {f"t{i}": _random([slot // 4 * 3], torch.float32, i) for i in range(3)}  # 3 slots each


def test_a_delayed_slot_holds_only_itself() -> None:
    """The first GET is slow: the other slots land, are copied and reused around it, the
    tensors behind it are committed first, and its own tensor once it lands, CRC checked."""
    slot, nslots = 256, 3
    srcs = _three_tensors(slot)
    dsts = {k: torch.zeros_like(v) for k, v in srcs.items()}
    done: List[str] = []
    native = FakeNative({k: _raw(v) for k, v in srcs.items()})
    native.slow, native.total = {0}, 9
    ring = StagingRing(nslots * slot, slot, pinned=False)
    run = RingLoad(native, "b", ring, POOL)
    run.run([_staged(k, srcs[k], dsts[k], done) for k in srcs])
    assert all(torch.equal(dsts[k], srcs[k]) for k in srcs)
    assert done == ["t1", "t2", "t0"]  # t0 waited for its slow first slot, nothing else did
    assert native.landed[-1] == 0 and run.landed_out_of_order >= 1
    # With the ring's 3 slots and one held: the other two carried all 8 other GETs.
    assert len(native.addresses) == 9 and len(ring.free) == nslots


@pytest.mark.parametrize("order", ["lifo", "random"])
def test_out_of_order_crc_mismatch_is_never_committed(order: str) -> None:
    """A flipped byte in a slot that lands out of order: the tensor fails its CRC check (the
    slot CRCs combine in byte order, not landing order) and is not committed."""
    slot = 256
    srcs = _three_tensors(slot)
    objects = {k: _raw(v) for k, v in srcs.items()}
    bad = bytearray(objects["t1"])
    bad[slot + 7] ^= 0x10  # in t1's second slot
    objects["t1"] = bytes(bad)
    done: List[str] = []
    native = FakeNative(objects, order, seed=3)
    ring = StagingRing(2 * slot, slot, pinned=False)
    with pytest.raises(CheckpointCorruptError, match=r"s3://b/t1 item t1: tensor bytes fail their CRC32 check"):
        RingLoad(native, "b", ring, POOL).run([_staged(k, srcs[k], torch.zeros_like(srcs[k]), done) for k in srcs])
    assert "t1" not in done and len(ring.free) == ring.nslots


class _CountingPool(ThreadPoolExecutor):
    """A CRC pool that counts the slots it is given."""

    def __init__(self) -> None:
        super().__init__(2)
        self.submitted = 0

    def submit(self, *a: Any, **k: Any) -> Any:  # type: ignore[override]
        self.submitted += 1
        return super().submit(*a, **k)


@pytest.mark.parametrize("order", ["fifo", "lifo", "random"])
def test_transposed_slots_are_checked_by_the_transposes_own_crc(order: str) -> None:
    """Into a transposed destination the tiled transpose computes each slot's CRC32 as it
    reads the slot: the CRC pool gets nothing, the slot CRCs still combine in byte order
    (slots landing in any order), a flipped byte still fails the tensor, and a contiguous
    destination's slots still go to the pool."""
    slot = 64 * 4 * 4  # 4 rows of 64 float32 per slot
    src = _random([40, 64], torch.float32, 7)  # 10 slots
    raw = _raw(src)
    pool = _CountingPool()
    try:
        dst = torch.zeros(64, 40).t()
        done: List[str] = []
        native = FakeNative({"k": raw}, order, seed=1)
        RingLoad(native, "b", StagingRing(3 * slot, slot, pinned=False), pool).run([_staged("k", src, dst, done)])
        assert torch.equal(dst, src) and done == ["k"] and pool.submitted == 0
        if order == "lifo":
            assert native.landed != sorted(native.landed)
        bad = bytearray(raw)
        bad[5 * slot + 9] ^= 0x04  # in the sixth slot
        ring = StagingRing(3 * slot, slot, pinned=False)
        with pytest.raises(CheckpointCorruptError, match=r"s3://b/k item k: tensor bytes fail their CRC32 check"):
            RingLoad(FakeNative({"k": bytes(bad)}, order, seed=1), "b", ring, pool).run(
                [_staged("k", src, torch.zeros(64, 40).t(), done)]
            )
        assert done == ["k"] and len(ring.free) == ring.nslots
        flat = torch.zeros(40, 64)
        RingLoad(FakeNative({"k": raw}), "b", StagingRing(3 * slot, slot, pinned=False), pool).run(
            [_staged("k", src, flat, done)]
        )
        assert torch.equal(flat, src) and pool.submitted == 10
    finally:
        pool.shutdown()


@pytest.mark.parametrize("order", ["fifo", "lifo", "random"])
def test_slot_crcs_combine_in_byte_order_whatever_the_landing_order(order: str) -> None:
    slot = 64
    src = _random([16 * 11], torch.float32, 5)  # 11 slots
    dst = torch.zeros_like(src)
    done: List[str] = []
    native = _run({"k": _raw(src)}, [_staged("k", src, dst, done)], 4, slot, order)
    assert torch.equal(dst, src) and done == ["k"]
    if order == "lifo":
        assert native.landed != sorted(native.landed)


def test_exact_multiple_and_many_tensors_share_the_ring() -> None:
    slot = 256
    tensors = {f"t{i}": _random([n], torch.float32, i) for i, n in enumerate([64, 1, 640, 63, 65, 0, 1000])}
    objects = {k: _raw(v) for k, v in tensors.items()}
    dsts = {k: torch.zeros_like(v) for k, v in tensors.items()}
    done: List[str] = []
    native = _run(objects, [_staged(k, tensors[k], dsts[k], done) for k in tensors], 3, slot)
    for k in tensors:
        assert torch.equal(dsts[k], tensors[k]), k
    assert sorted(done) == sorted(tensors)  # each committed once, the empty one too
    assert [k for k in done if k != "t5"] == [k for k in tensors if k != "t5"]  # in order
    expected = sum(-(-v.numel() * 4 // slot) for v in tensors.values())
    assert len(native.addresses) == expected


def test_slots_are_reused_in_ring_order() -> None:
    slot, nslots = 128, 3
    src = _random([32 * 10], torch.float32, 0)  # 10 slots' worth
    dst = torch.zeros_like(src)
    native = FakeNative({"k": _raw(src)})
    ring = StagingRing(nslots * slot, slot, pinned=False)
    RingLoad(native, "b", ring, POOL).run([_staged("k", src, dst, [])])
    slot_of = {ring.slot(i, 1).data_ptr(): i for i in range(nslots)}
    order = [slot_of[a] for a in native.addresses]
    assert order == [0, 1, 2] * 3 + [0]
    assert ring.uses == 10 and torch.equal(dst, src)


def test_host_destinations_are_handed_to_the_prefaulter_before_any_get(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each host destination's whole span (first element to last, a transposed view's storage
    included) goes to the prefaulting thread before the first GET; an empty one does not."""
    from s3torch.dcp import _staging
    from tests.unit.test_prefault import PrefaulterRecorder

    rec = PrefaulterRecorder(lambda: len(native.addresses))
    monkeypatch.setattr(_staging, "Prefaulter", rec.cls)
    srcs = {"t": _random([40, 30], torch.float32, 1), "s": _random([6, 8, 10], torch.int16, 2), "e": torch.zeros(0)}
    base = torch.zeros(30, 40)
    strided = torch.zeros(6, 16, 10, dtype=torch.int16)
    dsts = {"t": base.t(), "s": strided[:, ::2], "e": torch.zeros(0)}
    native = FakeNative({k: _raw(v) for k, v in srcs.items()})
    RingLoad(native, "b", StagingRing(3 * 256, 256, pinned=False), POOL).run(
        [_staged(k, srcs[k], dsts[k], []) for k in srcs]
    )
    assert all(torch.equal(dsts[k], srcs[k]) for k in srcs)
    span_s = ((6 - 1) * 160 + (8 - 1) * 20 + (10 - 1) + 1) * 2  # first to last element, in bytes
    assert rec.handed == [[(base.data_ptr(), 30 * 40 * 4), (strided.data_ptr(), span_s)]]
    assert rec.gets_before == [0]


def test_a_ring_of_one_slot() -> None:
    src = _random([7, 33], torch.bfloat16, 1)
    dst = torch.zeros(33, 7, dtype=torch.bfloat16).t()
    native = _run({"k": _raw(src)}, [_staged("k", src, dst, [])], 1, 64)
    assert torch.equal(dst, src) and len(set(native.addresses)) == 1


@pytest.mark.parametrize("where", ["wait", "start"])
def test_error_mid_load_returns_every_slot(where: str) -> None:
    slot, nslots = 64, 4
    srcs = {f"t{i}": _random([160], torch.float32, i) for i in range(3)}  # 10 slots each
    native = FakeNative({k: _raw(v) for k, v in srcs.items()})
    native.fail_at, native.fail_on_start = 13, where == "start"
    ring = StagingRing(nslots * slot, slot, pinned=False)
    with pytest.raises(CheckpointReadError, match=r"s3://b/t1 item t1: cannot read its bytes: injected"):
        RingLoad(native, "b", ring, POOL).run([_staged(k, v, torch.zeros_like(v), []) for k, v in srcs.items()])
    assert len(ring.free) == nslots  # every slot back
    # Nothing still writes into a slot: every GET was waited for (the ones in flight cancelled).
    assert all(h.waited for h in native.handles)


def test_access_errors_pass_through_unchanged() -> None:
    src = _random([64], torch.float32, 0)
    native = FakeNative({"k": _raw(src)})
    native.fail_at = 0
    orig = native.start_get_into

    def denied(*a: Any) -> Any:
        h = orig(*a)
        h.error = _crt.S3PermissionError("access denied")
        return h

    native.start_get_into = denied  # type: ignore[method-assign]
    ring = StagingRing(128, 64, pinned=False)
    with pytest.raises(_crt.S3PermissionError, match="access denied"):
        RingLoad(native, "b", ring, POOL).run([_staged("k", src, torch.zeros_like(src), [])])
    assert len(ring.free) == ring.nslots


def test_crc_mismatch_names_the_item() -> None:
    src = _random([100], torch.float32, 0)
    raw = bytearray(_raw(src))
    raw[250] ^= 1
    ring = StagingRing(256, 64, pinned=False)
    done: List[str] = []
    t = _staged("k", src, torch.zeros_like(src), done)
    with pytest.raises(CheckpointCorruptError, match=r"s3://b/k item k: tensor bytes fail their CRC32 check"):
        RingLoad(FakeNative({"k": bytes(raw)}), "b", ring, POOL).run([t])
    assert done == [] and len(ring.free) == ring.nslots
    # verify=False loads the bytes as they are
    dst = torch.zeros_like(src)
    RingLoad(FakeNative({"k": bytes(raw)}), "b", ring, None).run([_staged("k", src, dst, done)])
    assert done == ["k"] and not torch.equal(dst, src)


def test_short_read_names_the_item() -> None:
    src = _random([100], torch.float32, 0)
    native = FakeNative({"k": _raw(src)})
    native.short_at = 2
    ring = StagingRing(128, 64, pinned=False)
    with pytest.raises(CheckpointCorruptError, match=r"item k: expected 400 tensor bytes, the file has 160"):
        RingLoad(native, "b", ring, POOL).run([_staged("k", src, torch.zeros_like(src), [])])
    assert len(ring.free) == ring.nslots


def test_a_failing_copy_is_a_staging_error() -> None:
    src = _random([100], torch.float32, 0)
    dst = torch.zeros(100, dtype=torch.float32)
    t = _staged("k", src, dst, [])

    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    import s3torch.dcp._staging as staging

    orig = staging.land
    staging.land = boom  # type: ignore[assignment]
    try:
        ring = StagingRing(128, 64, pinned=False)
        with pytest.raises(
            StagingError,
            match=r"s3://b/k item k: copying its bytes into the destination on cpu "
            r"failed: RuntimeError: CUDA error",
        ):
            RingLoad(FakeNative({"k": _raw(src)}), "b", ring, POOL).run([t])
        assert len(ring.free) == ring.nslots
    finally:
        staging.land = orig  # type: ignore[assignment]


def test_memory_that_cannot_be_allocated_is_a_staging_error() -> None:
    import s3torch.dcp._staging as staging

    src = _random([100], torch.float32, 0)

    class NoMemory(StagingRing):
        made = 0

        def _new_slot(self, i: int) -> torch.Tensor:  # the first slot, then no more memory
            NoMemory.made += 1
            if NoMemory.made > 1:
                raise RuntimeError("CUDA error: out of memory (cudaHostAlloc)")
            return super()._new_slot(i)

    orig = staging.StagingRing
    staging.StagingRing = NoMemory  # type: ignore[misc]
    release_staging_memory()
    try:
        with pytest.raises(StagingError, match="cannot allocate the staging ring's memory: CUDA error: out of memory"):
            with borrow_ring(256, 64, False) as ring:
                RingLoad(FakeNative({"k": _raw(src)}), "b", ring, POOL).run(
                    [_staged("k", src, torch.zeros_like(src), [])]
                )
        assert len(ring.free) == ring.nslots
        assert not staging._pool  # the broken ring was not kept for the next load
    finally:
        staging.StagingRing = orig  # type: ignore[misc]


def test_blocks_cover_in_row_major_order() -> None:
    t = torch.arange(2 * 3 * 50, dtype=torch.float32).reshape(2, 3, 50)
    got = list(blocks(t, 64))  # a row of 50 floats (200 B) is larger than a block
    assert all(b.numel() * 4 <= 64 for b in got)
    assert torch.equal(torch.cat([b.reshape(-1) for b in got]), t.reshape(-1))
    assert [b.shape for b in blocks(torch.zeros(10, 4), 48)] == [torch.Size([3, 4])] * 3 + [torch.Size([1, 4])]
    assert [b.shape for b in blocks(torch.tensor(1.5), 64)] == [torch.Size([1])]
    assert list(blocks(torch.zeros(0, 3), 64)) == []


def test_crc32_combine_matches_zlib() -> None:
    import os
    import random

    from s3torch._crc import crc32_combine

    rnd = random.Random(0)
    for _ in range(300):
        a, b = os.urandom(rnd.randint(0, 5000)), os.urandom(rnd.randint(0, 5000))
        assert crc32_combine(zlib.crc32(a), zlib.crc32(b), len(b)) == zlib.crc32(a + b)
    big = os.urandom(1 << 20)
    assert crc32_combine(zlib.crc32(big), zlib.crc32(b"x"), 1) == zlib.crc32(big + b"x")


def test_pieced_crc_of_a_tensor() -> None:
    from s3torch.dcp import _parallel_load as pl

    data = torch.randint(0, 256, (3 * 1024 * 1024 + 17,), dtype=torch.uint8)
    old = pl.CRC_PIECE
    pl.CRC_PIECE = 1 << 20  # several pieces
    try:
        assert pl.crc32_on(POOL, data)() == zlib.crc32(data.numpy().tobytes())
    finally:
        pl.CRC_PIECE = old


def test_ring_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="too small for one slot"):
        check_ring_size(1000, 4096)
    with pytest.raises(ValueError, match="multiple of 64"):
        check_ring_size(4096, 100)
    with pytest.raises(TypeError):
        check_ring_size(4096.0, 64)  # type: ignore[arg-type]
    ring = StagingRing(1000, 64, pinned=False)
    assert ring.nslots == 15 and ring.nbytes == 960


def test_rings_are_pooled_per_process() -> None:
    release_staging_memory()
    with borrow_ring(4096, 64, False) as a:
        with borrow_ring(4096, 64, False) as b:  # a second load at the same time gets its own
            assert a is not b
    with borrow_ring(4096, 64, False) as c:
        assert c is a or c is b  # reused, not reallocated
    release_staging_memory()
    with borrow_ring(4096, 64, False) as d:
        assert d is not a and d is not b


class _FakeCudart:
    """torch.cuda.cudart() for a CPU-only machine: records the page-locking calls."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list = []
        self.fail = fail

    def cudaHostRegister(self, ptr: int, n: int, flags: int) -> int:  # noqa: N802 (CUDA's name)
        self.calls.append(("register", ptr, n, flags))
        return 1 if self.fail else 0

    def cudaHostUnregister(self, ptr: int) -> int:  # noqa: N802
        self.calls.append(("unregister", ptr))
        return 0


def test_pinned_slots_are_locked_in_place_and_unlocked_with_the_ring(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Issue 22 (a fresh process's first CUDA load): a pinned ring's slots are page-aligned
    host memory, faulted in and registered with CUDA (portable) by the allocating threads, and
    unregistered when the ring goes, before their memory is freed. (tests/gpu checks that the
    slots are pinned for real and that copies from them are right.)"""
    import gc

    cudart = _FakeCudart()
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    slot = 64 * 1024
    ring = StagingRing(6 * slot, slot, pinned=True)
    ring.prepare(ring.nbytes)
    ptrs = sorted(ring.slot(i, slot).data_ptr() for i in range(ring.nslots))
    assert all(p % 4096 == 0 for p in ptrs)
    registered = sorted(c[1] for c in cudart.calls if c[0] == "register")
    assert registered == ptrs and {c[2:] for c in cudart.calls if c[0] == "register"} == {(slot, 1)}
    assert not [c for c in cudart.calls if c[0] == "unregister"]
    del ring
    gc.collect()
    assert sorted(c[1] for c in cudart.calls if c[0] == "unregister") == ptrs


def test_a_slot_that_cannot_be_registered_comes_from_torchs_pinned_allocator(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    cudart = _FakeCudart(fail=True)
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    real_empty = torch.empty
    pinned_asked = []

    def empty(*a, **k):  # type: ignore[no-untyped-def]
        pinned_asked.append(k.pop("pin_memory", False))
        return real_empty(*a, **k)

    monkeypatch.setattr(torch, "empty", empty)
    ring = StagingRing(2 * 4096, 4096, pinned=True)
    assert ring.slot(0, 4096).numel() == 4096
    assert pinned_asked == [True] and [c[0] for c in cudart.calls] == ["register"]


@pytest.mark.parametrize("pinned", [False, True])
def test_a_slot_is_allocated_once_whoever_needs_it_first(monkeypatch, pinned: bool) -> None:  # type: ignore[no-untyped-def]
    """A slot the loading thread allocated itself (no prepare covered it) is never allocated
    again when a later prepare covers it: that swapped the memory under a copy in flight,
    and the upload then read the new, unwritten slot (a GPU save wrote another test's bytes
    into the first rows of a tensor)."""
    if pinned:
        monkeypatch.setattr(torch.cuda, "cudart", lambda: _FakeCudart())
    slot = 64 * 1024
    ring = StagingRing(4 * slot, slot, pinned=pinned)
    ring.prepare(slot)  # slot 0 in the background
    mine = ring.slot(2, slot)  # not prepared: allocated by this thread
    mine.fill_(7)
    ring.prepare(ring.nbytes)  # covers slots 1-3: must not allocate slot 2 again
    for i in range(ring.nslots):
        ring.slot(i, slot)
    assert ring.slot(2, slot).data_ptr() == mine.data_ptr() and bool((ring.slot(2, slot) == 7).all())
    assert len({ring.slot(i, slot).data_ptr() for i in range(ring.nslots)}) == ring.nslots


def test_a_forked_child_never_unlocks_its_parents_slots(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """CUDA does not survive fork(): a child that drops an inherited pinned ring must not call
    into CUDA to unlock memory it only has a copy of."""
    import gc
    import os

    cudart = _FakeCudart()
    monkeypatch.setattr(torch.cuda, "cudart", lambda: cudart)
    ring = StagingRing(2 * 4096, 4096, pinned=True)
    ring.slot(0, 4096)
    ring.slot(1, 4096)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop the ring, report what it called
        try:
            cudart.calls.clear()
            del ring
            gc.collect()
            os.write(w, str(len([c for c in cudart.calls if c[0] == "unregister"])).encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    assert os.read(r, 16) == b"0"
    os.close(r)
    del ring
    gc.collect()
    assert len([c for c in cudart.calls if c[0] == "unregister"]) == 2
