"""DCP saves from CUDA state dicts through the pinned staging ring (SeaweedFS on loopback):
the objects are byte for byte what torch's FileSystemWriter writes for the same CUDA state
dict, the host memory a save takes is the ring and the upload window, not the state dict,
and a failed device-to-host copy is a StagingError that leaves nothing behind. The same
pipeline runs on CPU in tests/integration/test_staged_save.py."""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException

from s3torch.dcp import _staging
from s3torch.dcp._errors import StagingError
from tests.conftest import BUCKET, make_client
from tests.integration.test_dcp import reader, writer
from tests.integration.test_staged_save import as_bytes, every_kind, objects, rings_whole
from tests.unit.test_staged_save import dtypes, fail_copy, views

DEV = torch.device("cuda")
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def prefix() -> str:
    import uuid

    return f"gpu-save/{uuid.uuid4().hex[:8]}/"


def cuda_state_dict() -> dict:
    """every_kind() on the GPU, with the views of every dtype (copies of non-contiguous
    float8, complex32, uint16... views run on the device)."""
    sd = every_kind(str(DEV))
    for d in dtypes():
        sd.update({f"{str(d)[6:]}_{k}": v for k, v in views(d, str(DEV)).items()})
    # A view torch itself cannot copy to the host on this torch (no kernel for its dtype) is
    # one torch cannot save either: left out, but never the common dtypes'.
    dropped = []
    for k, v in list(sd.items()):
        if isinstance(v, torch.Tensor):
            try:
                v.cpu()
            except (RuntimeError, NotImplementedError):
                dropped.append(k)
                del sd[k]
    assert not [k for k in dropped if k.startswith(("bf16_", "i32_", "float8_e4m3fn_", "float16_", "bool_"))], dropped
    return sd


def cuda_tensors(sd: dict) -> int:
    return sum(cuda_tensors(v) if isinstance(v, dict) else isinstance(v, torch.Tensor) for v in sd.values())


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("threads, ring", [(1, None), (2, (3 * 4096, 4096))])
def test_save_from_cuda_is_torch_filesystemwriters_bytes(seaweed, prefix: str, tmp_path: Path, threads, ring) -> None:  # type: ignore[no-untyped-def]
    """Every dtype, views (transposed, sliced, offset, permuted and sliced, expanded), 0-dim
    and empty tensors on the GPU, through the default ring (1 writer thread: torch then
    orders a file's tensors by size) and through 3 slots of 4 KiB (2 threads)."""
    sd = cuda_state_dict()
    path = f"s3://{BUCKET}/{prefix}every-{threads}"
    kw = {} if ring is None else {"staging_bytes": ring[0], "staging_slot_bytes": ring[1]}
    w = writer(seaweed, path, thread_count=threads, **kw)
    dcp.save(sd, storage_writer=w)
    assert w.last_save_stats["staged"] == cuda_tensors(sd), w.last_save_stats
    assert rings_whole() and any(r.pinned for r in _staging._pool.values())
    dcp.save(sd, storage_writer=FileSystemWriter(str(tmp_path / "fs"), thread_count=threads))
    want = {p.name: p.read_bytes() for p in (tmp_path / "fs").glob("*.distcp")}
    got = {k: v for k, v in objects(make_client(seaweed), f"{prefix}every-{threads}/").items() if k.endswith(".distcp")}
    assert len(want) == threads and got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], name
    # and it loads back into CUDA tensors, bit for bit
    plain = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor) and v.dtype in (torch.bfloat16, torch.float32)}
    out = {k: torch.zeros_like(v) for k, v in plain.items()}
    dcp.load(out, storage_reader=reader(seaweed, path))
    for k, v in plain.items():
        assert as_bytes(out[k].cpu()) == as_bytes(v.cpu()), k


@pytest.mark.parametrize("path_", ["ring", "torch"])
def test_copies_wait_for_the_callers_stream(seaweed, prefix: str, path_: str) -> None:  # type: ignore[no-untyped-def]
    """The tensors are written on a side stream behind a ~0.5 s sleep kernel, and the save is
    called on that stream with 2 writer threads (whose own current streams are the default
    one): the copies to the host wait for the caller's stream, so the new values are saved.
    "ring": through the staging ring; "torch": the writer threads' own ``t.cpu()`` (the way
    of tensors the ring does not take). The tensors hold 7 before the write: a 7 in the saved
    bytes is a copy that ran too early, a 0 a slot read before its copy landed."""
    t = torch.full((4096, 1024), 7.0, device=DEV)
    u = torch.full((1024, 1024), 7.0, device=DEV)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    path = f"s3://{BUCKET}/{prefix}stream-{path_}"
    w = writer(seaweed, path, thread_count=2)
    if path_ == "torch":
        w._through_ring = lambda tensor: False  # type: ignore[method-assign]
    with torch.cuda.stream(s):
        torch.cuda._sleep(1_000_000_000)
        t.fill_(3.0)
        u.fill_(5.0)
        dcp.save({"t": t, "u": u}, storage_writer=w)
    assert w.last_save_stats["staged"] == (2 if path_ == "ring" else 0)
    out = {"t": torch.zeros(4096, 1024), "u": torch.zeros(1024, 1024)}
    dcp.load(out, storage_reader=reader(seaweed, path))
    for k, want in (("t", 3.0), ("u", 5.0)):
        bad = (out[k] != want).any(dim=1).nonzero().flatten()
        assert not len(bad), (
            f"{k}: {len(bad)} of {out[k].shape[0]} rows are not {want} (rows {bad[:3].tolist()}..{bad[-3:].tolist()}, "
            f"values {out[k][bad].unique().tolist()[:5]})"
        )


def test_async_save_from_cuda_stages_to_cpu_first(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(1)
    src = {"w": torch.randn(1024, 512, generator=g), "b": torch.randn(512, generator=g).to(torch.bfloat16)}
    sd = {k: v.to(DEV) for k, v in src.items()}
    path = f"s3://{BUCKET}/{prefix}async"
    w = writer(seaweed, path)
    fut = dcp.async_save(sd, storage_writer=w, no_dist=True)
    sd["w"].add_(1)  # training goes on: the staged copy is what gets saved
    fut.result(timeout=120)
    assert w.last_save_stats["staged"] == 0  # the writer got CPU tensors
    out = {k: torch.zeros_like(v) for k, v in sd.items()}
    dcp.load(out, storage_reader=reader(seaweed, path))
    for k, v in src.items():
        assert torch.equal(out[k].cpu(), v), k


class _PeakRss:
    """The highest resident set size seen while in the block (sampled every 2 ms)."""

    def __init__(self) -> None:
        self.peak = self.base = self._rss()
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> "_PeakRss":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def test_host_memory_is_the_ring_and_the_upload_window(seaweed, prefix: str) -> None:  # type: ignore[no-untyped-def]
    """A 2 GiB CUDA tensor saves with host memory growing by at most the ring + 384 MiB
    (the upload window is 232 MiB at the default part size and throughput target); torch's
    path copies the whole tensor to pageable memory first."""
    big = torch.full((32768, 32768), 1.5, dtype=torch.bfloat16, device=DEV)  # 2 GiB
    torch.cuda.synchronize()
    path = f"s3://{BUCKET}/{prefix}big"
    ring = 64 * MiB
    w = writer(seaweed, path, staging_bytes=ring, staging_slot_bytes=8 * MiB)
    dcp.save({"small": torch.ones(10, device=DEV)}, storage_writer=writer(seaweed, f"{path}-warm"))  # first-use costs
    _staging.release_staging_memory()  # the ring's page-locking counts
    with _PeakRss() as rss:
        dcp.save({"big": big}, storage_writer=w)
    grew = rss.peak - rss.base
    assert grew <= ring + 384 * MiB, f"host memory grew by {grew / MiB:.0f} MiB"
    assert w.last_save_stats["ring_slot_uses"] == 2 * 1024 // 8
    (size,) = [
        o.size
        for p in make_client(seaweed).list_objects(BUCKET, f"{prefix}big/")
        for o in p.object_info
        if o.key.endswith(".distcp")
    ]
    assert size > big.nbytes


@pytest.fixture
def memory_cap() -> Iterator[None]:
    """Lets the test cap this process's CUDA memory; restores it afterwards."""
    yield
    torch.cuda.set_per_process_memory_fraction(1.0)
    torch.cuda.empty_cache()


def _check_failed_save(seaweed: Any, prefix: str, ei: Any, item: str, cause: type) -> None:
    ((failure, _),) = ei.value.failures.values()
    assert isinstance(failure, StagingError), repr(failure)
    assert isinstance(failure.__cause__, cause), repr(failure.__cause__)
    pattern = rf"s3://{BUCKET}/{re.escape(prefix)}\w+/__0_0\.distcp item {item}: copying its bytes to host memory"
    assert re.match(pattern, str(failure)), str(failure)
    assert objects(make_client(seaweed), prefix) == {}  # no .metadata, no .distcp
    assert make_client(seaweed).list_multipart_uploads(BUCKET, prefix) == []
    assert rings_whole()


def test_an_injected_cuda_error_is_a_staging_error(seaweed, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The 6th slot's copy fails (after 5 real device-to-host copies, more than a part sent):
    the error names the tensor and its object; the upload is aborted."""
    import uuid

    prefix = f"gpu-save-err/{uuid.uuid4().hex[:8]}/"
    fail_copy(monkeypatch, 6, torch.OutOfMemoryError("CUDA out of memory (injected)"))
    sd = {"a": torch.randn(1024, 1024, device=DEV), "b": torch.randn(2048, 1024, device=DEV)}  # 4 + 8 MiB
    with pytest.raises(CheckpointException) as ei:
        dcp.save(
            sd,
            storage_writer=writer(
                seaweed, f"s3://{BUCKET}/{prefix}inj", staging_bytes=4 * MiB, staging_slot_bytes=2 * MiB
            ),
        )
    _check_failed_save(seaweed, prefix, ei, "b", torch.OutOfMemoryError)


def test_a_real_out_of_memory_in_the_copy_is_a_staging_error(seaweed, memory_cap) -> None:  # type: ignore[no-untyped-def]
    """A non-contiguous CUDA tensor is copied through a contiguous device buffer of a slot's
    size; with the process's CUDA memory capped just above what it holds, that allocation
    fails: torch.OutOfMemoryError, reported as a StagingError naming the tensor."""
    import uuid

    prefix = f"gpu-save-oom/{uuid.uuid4().hex[:8]}/"
    base = torch.randn(2048, 2048, device=DEV)
    sd = {"dense": torch.randn(256, 256, device=DEV), "strided": base[:, ::2]}
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(DEV).total_memory
    torch.cuda.set_per_process_memory_fraction((torch.cuda.memory_reserved(DEV) + MiB) / total)
    # Free blocks of segments this process holds would still take a slot's buffer (what the
    # earlier tests leave behind varies): fill them, so the buffer must grow past the cap.
    filler = []
    for size in (4 * MiB, 2 * MiB, MiB, 512 * 1024):
        while True:
            try:
                filler.append(torch.empty(size, dtype=torch.uint8, device=DEV))
            except torch.OutOfMemoryError:
                break
    w = writer(seaweed, f"s3://{BUCKET}/{prefix}oom", staging_bytes=8 * MiB, staging_slot_bytes=4 * MiB)
    with pytest.raises(CheckpointException) as ei:
        dcp.save(sd, storage_writer=w)
    del filler
    torch.cuda.set_per_process_memory_fraction(1.0)
    _check_failed_save(seaweed, prefix, ei, "strided", torch.OutOfMemoryError)
