"""s3torch's own torch.save records (used by the DCP writer) are torch.save's bytes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from s3torch.dcp import _torch_save

DTYPES = [
    torch.float32,
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.int8,
    torch.uint8,
    torch.bool,
    torch.complex64,
]


class _Sink:
    """A stream like S3Writer: takes bytes and uint8 tensors."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def write(self, b) -> int:  # type: ignore[no-untyped-def]
        data = np.asarray(b).tobytes() if isinstance(b, torch.Tensor) else bytes(b)
        return self.buf.write(data)

    def flush(self) -> None:
        pass


def _ours(t: torch.Tensor) -> bytes:
    sink = _Sink()
    _torch_save.save_tensor(t, sink)
    return sink.buf.getvalue()


def _torchs(t: torch.Tensor) -> bytes:
    b = io.BytesIO()
    torch.save(t, b)
    return b.getvalue()


def test_fast_path_is_on_for_this_torch() -> None:
    assert _torch_save.fast_path_enabled()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (0, 5), (7,), (33, 65), (2, 3, 4)])
def test_same_bytes_as_torch_save(dtype: torch.dtype, shape: tuple) -> None:
    t = (torch.arange(int(np.prod(shape)) if shape else 1) % 7).reshape(shape).to(dtype)
    assert _ours(t) == _torchs(t)


def test_views_save_their_whole_storage_like_torch() -> None:
    base = torch.randn(50, 40)
    for t in [base.t(), base[3:9], base[:, 5], base[10:, 10:].t()]:
        out = _ours(t)
        assert out == _torchs(t)
        back = torch.load(io.BytesIO(out), weights_only=True)
        assert torch.equal(back, t) and back.stride() == t.stride()


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(DTYPES), st.lists(st.integers(0, 40), min_size=0, max_size=3), st.integers(0, 2**32 - 1))
def test_random_tensors(dtype: torch.dtype, shape: list, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(*shape, generator=g) * 100).to(dtype) if shape else torch.tensor(seed % 97).to(dtype)
    assert _ours(t) == _torchs(t)


def test_multi_megabyte_record_goes_to_the_stream_as_one_buffer() -> None:
    t = torch.randn(3, 1 << 20)  # 12 MiB
    writes: list = []

    class Rec(_Sink):
        def write(self, b) -> int:  # type: ignore[no-untyped-def]
            writes.append(b)
            return super().write(b)

    sink = Rec()
    _torch_save.save_tensor(t, sink)
    assert sink.buf.getvalue() == _torchs(t)
    big = [w for w in writes if isinstance(w, torch.Tensor)]
    assert len(big) == 1 and big[0].data_ptr() == t.data_ptr()  # the tensor's own memory, no copy


def test_falls_back_to_torch_save_when_crc_is_off() -> None:
    from torch.utils.serialization import config

    t = torch.arange(10.0)
    old = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        assert _ours(t) == _torchs(t)  # torch.save's own bytes (no checksums, as asked)
    finally:
        config.save.compute_crc32 = old
