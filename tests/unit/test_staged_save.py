"""A tensor's torch.save record streamed through the staging ring (_staged_save) is byte for
byte torch.save of the tensor torch's DCP writer would save: on CPU tensors of every dtype
and layout here, for both of the writer's rules (a CPU tensor as its loaders take it, a
device tensor as ``.cpu()`` copies it)."""

from __future__ import annotations

import io
from typing import Callable, Dict, List, Optional

import pytest
import torch

from s3torch.dcp import _staged_save, _staging, _torch_save
from s3torch.dcp._errors import StagingError
from s3torch.dcp._staged_save import StagedSave, record_source


def dtypes() -> List[torch.dtype]:
    """Every dtype torch.save stores and DCP saves (the sub-byte and quantized ones aside)."""
    names = [
        "float64", "float32", "float16", "bfloat16", "complex128", "complex64", "complex32",
        "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool",
        "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
        "float4_e2m1fn_x2",
    ]  # fmt: skip
    return [getattr(torch, n) for n in names if hasattr(torch, n)]


def filled(shape: tuple, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """A contiguous tensor of random bytes (bool: 0 or 1)."""
    n = 1
    for s in shape:
        n *= s
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (n * dtype.itemsize,), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        raw %= 2
    return raw.view(dtype).reshape(shape)


def views(dtype: torch.dtype, device: str = "cpu") -> Dict[str, torch.Tensor]:
    """Tensors of every layout the writer meets, as views of tensors on ``device``."""
    x = filled((6, 10, 8), dtype).to(device)
    return {
        "dense": filled((300, 7), dtype, 1).to(device),
        "transposed": x[0].t(),
        "sliced": x[0][:, ::2],
        "offset": x[2:4],
        "permuted_sliced": x.permute(2, 0, 1)[:, ::2],  # not dense: keeps its dimension order
        "expanded": x[0, :1].expand(5, 8),
        "exact_storage_odd_strides": x.reshape(-1)[:4].clone().as_strided((2, 2), (2, 0)),
        "scalar": x[1, 2, 3],
        "empty": x[:0],
        "empty_t": filled((0, 4), dtype).to(device).t(),
    }


def cpu_loader(t: torch.Tensor) -> torch.Tensor:
    """What torch's writer saves for a CPU tensor (_SerialCpuLoader)."""
    return t.clone() if t.untyped_storage().size() != t.nbytes else t


class Sink(io.BytesIO):
    """A stream that takes uint8 tensors too, as the S3 writer does."""

    def write(self, b: object) -> int:
        return super().write(b.numpy().tobytes() if isinstance(b, torch.Tensor) else b)  # type: ignore[arg-type]


def reference(t: torch.Tensor) -> bytes:
    b = io.BytesIO()
    torch.save(t, b)
    return b.getvalue()


def streamed(template: torch.Tensor, src: torch.Tensor, slot: int, nslots: int) -> bytes:
    out = Sink()
    records = _torch_save.streamed_records(template)
    assert records is not None
    with _staging.borrow_ring(slot * nslots, slot, pinned=False) as ring, StagedSave(ring) as s:
        _torch_save.save_streamed(records, s.chunks(src, "t"), out)
    assert len(ring.free) == ring.nslots
    return out.getvalue()


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("dtype", dtypes(), ids=str)
def test_streamed_record_is_torch_save_of_what_the_writer_saves(dtype: torch.dtype) -> None:
    assert _torch_save.fast_path_enabled()
    for name, t in views(dtype).items():
        # A CPU tensor, as the writer's CPU loaders take it.
        template, src = record_source(t)
        want = reference(cpu_loader(t))
        assert streamed(template, src, 64, 3) == want, name
        # A device tensor: the record of t.cpu(), laid out as empty_like lays it out.
        template, src = _staged_save._device_source(t)
        assert template.stride() == t.clone().stride(), name
        assert streamed(template, src, 64, 1) == reference(t.clone()), name


def test_a_copy_to_another_device_lays_out_as_empty_like() -> None:
    """``t.cpu()`` of a device tensor is aten's _to_copy, as is a dtype change on CPU (which
    this machine can run): its preserve_format rule is empty_like's, the template's."""
    for name, t in views(torch.float32).items():
        assert t.to(torch.float64).stride() == torch.empty_like(t).stride() == t.clone().stride(), name


@pytest.mark.parametrize("slot, nslots", [(64, 1), (64, 3), (512, 2), (1 << 20, 4)])
def test_slot_sizes_and_counts(slot: int, nslots: int) -> None:
    t = filled((333, 77), torch.float32).t()
    template, src = _staged_save._device_source(t)
    assert streamed(template, src, slot, nslots) == reference(t.clone())


def test_dense_source_is_one_flat_span() -> None:
    x = filled((40, 30), torch.int16).t()
    _, src = _staged_save._device_source(x)
    assert src.dim() == 1 and src.data_ptr() == x.data_ptr()
    _, src = record_source(x[:, ::2])
    assert src.dim() == 2  # not dense: streamed block by block


def fail_copy(
    monkeypatch: pytest.MonkeyPatch, at: int, error: BaseException, before: Optional[Callable[[], None]] = None
) -> List[int]:
    """Make the ``at``-th slot copy of the staged saves raise ``error`` (calling ``before``
    first); the others copy. Returns the list the copies are counted in."""
    calls: List[int] = []
    real = _staged_save.copy_block

    def failing(dst: torch.Tensor, src: torch.Tensor, non_blocking: bool) -> None:
        calls.append(1)
        if len(calls) == at:
            if before is not None:
                before()
            raise error
        real(dst, src, non_blocking)

    monkeypatch.setattr(_staged_save, "copy_block", failing)
    return calls


def test_a_failed_copy_names_the_tensor_and_returns_every_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    fail_copy(monkeypatch, 3, torch.OutOfMemoryError("out of memory (injected)"))
    t = filled((64, 64), torch.float32)
    records = _torch_save.streamed_records(t)
    assert records is not None
    ring = _staging.StagingRing(4 * 1024, 1024, pinned=False)
    with pytest.raises(StagingError, match="s3://b/k item w: copying .* OutOfMemoryError: out of memory"):
        with StagedSave(ring) as s:
            _torch_save.save_streamed(records, s.chunks(t.view(-1), "s3://b/k item w"), Sink())
    assert len(ring.free) == ring.nslots and ring.uses == 2


def test_a_failed_write_returns_every_slot() -> None:
    class Broken(Sink):
        def write(self, b: object) -> int:
            if self.tell() > 3000:
                raise OSError("upload failed")
            return super().write(b)  # type: ignore[arg-type]

    t = filled((64, 64), torch.float32)
    records = _torch_save.streamed_records(t)
    assert records is not None
    ring = _staging.StagingRing(4 * 1024, 1024, pinned=False)
    with pytest.raises(OSError, match="upload failed"):
        with StagedSave(ring) as s:
            _torch_save.save_streamed(records, s.chunks(t.view(-1), "x"), Broken())
    assert len(ring.free) == ring.nslots


def test_chunks_equal_the_bytes_of_record_add() -> None:
    """_Archive.add_chunks writes what add writes for the joined payload."""
    t = filled((1000,), torch.uint8)
    whole, parts = Sink(), Sink()
    records = _torch_save.streamed_records(t)
    assert records is not None
    _torch_save.save_streamed(records, iter([t[:1], t[1:500], t[500:]]), parts)
    _torch_save.save_tensor(t, whole)
    assert parts.getvalue() == whole.getvalue() == reference(t)
    with pytest.raises(ValueError, match="999 of its 1000 bytes"):
        _torch_save.save_streamed(records, iter([t[1:]]), Sink())
