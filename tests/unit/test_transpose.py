"""The native tiled transpose behind the staging ring's copies into transposed host views
(``_crt.transpose_copy``, ``_staging.land``): torch's own strided copy is the oracle, at
every element size, shapes around the tile and micro-kernel sizes, and padded leading
dimensions; the CRC32 it computes as it reads is zlib's; bad sizes are refused before
anything is written."""

from __future__ import annotations

import zlib
from typing import Optional

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from s3torch import S3InvalidArgumentError, _crt
from s3torch.dcp._staging import _column_major, land


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (random bytes include NaNs, which torch.equal calls unequal)."""

    def bits(t: torch.Tensor) -> torch.Tensor:
        return torch.empty_like(t, memory_format=torch.contiguous_format).copy_(t).reshape(-1).view(torch.uint8)

    return a.shape == b.shape and torch.equal(bits(a), bits(b))


DTYPES = [torch.uint8, torch.bool, torch.bfloat16, torch.float16, torch.float32, torch.int64, torch.complex128]


def _rand(shape: tuple, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (int(torch.Size(shape).numel()) * dtype.itemsize,), dtype=torch.uint8, generator=g)
    if dtype == torch.bool:
        raw = raw % 2
    return raw.view(dtype).reshape(shape)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 140),
    cols=st.integers(1, 140),
    pad=st.sampled_from([0, 1, 7, 64]),
    dtype=st.sampled_from(DTYPES),
    previous=st.sampled_from([None, 0, 0xDEADBEEF]),
)
def test_land_into_a_transposed_view_matches_torch(
    rows: int, cols: int, pad: int, dtype: torch.dtype, previous: Optional[int]
) -> None:
    """Shapes up to 140 x 140 cover whole tiles (64 rows by 128 bytes of each), partial ones
    and micro-kernel edges; with ``previous``, the CRC32 the copy computes continues it."""
    src = _rand((rows, cols), dtype, rows * 1000 + cols)
    base = torch.zeros(cols, rows + pad, dtype=dtype)  # a padded leading dimension when pad > 0
    dst = base[:, :rows].t()  # (rows, cols), columns contiguous
    raw = src.reshape(-1).view(torch.uint8)
    if _column_major(dst):
        crc = land(dst, raw, crc32=previous)
        assert crc == (None if previous is None else zlib.crc32(raw.numpy().tobytes(), previous))
    else:
        land(dst, raw)
    assert _same_bits(dst, src)
    assert not base[:, rows:].any()  # nothing written outside the view
    assert _column_major(dst) == (rows > 1 and cols > 1)


@pytest.mark.parametrize("dtype", [*DTYPES, torch.float8_e4m3fn])
@pytest.mark.parametrize("rows, cols", [(64, 128), (128, 256), (130, 270), (200, 4096)])
@pytest.mark.parametrize("pad", [0, 16])
def test_whole_tiles_at_every_element_size(dtype: torch.dtype, rows: int, cols: int, pad: int) -> None:
    """Shapes of whole tiles (64 rows by 128 bytes of each: 128 fp8 columns, 64 bf16, 32
    float32), tiles and an edge, and a wide slot (over 1 MiB for 2-byte elements and up:
    streaming stores where the padded destination is 16-byte aligned)."""
    src = _rand((rows, cols), dtype, rows + cols)
    base = torch.zeros(cols, rows + pad, dtype=dtype)
    dst = base[:, :rows].t()
    raw = src.reshape(-1).view(torch.uint8)
    assert land(dst, raw, crc32=0) == zlib.crc32(raw.numpy().tobytes())
    assert _same_bits(dst, src)
    assert not base[:, rows:].view(torch.uint8).any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("rows, at", [(300, 1000), (700, 1000), (700, 1001)])
def test_a_large_block_like_the_ring_lands(dtype: torch.dtype, rows: int, at: int) -> None:
    """A slot's worth of rows of a (4096 x 1024) stored tensor into a transposed destination.
    700 rows of 2- and 4-byte elements are over 1 MiB: streaming stores, where the
    destination is 16-byte aligned (row 1000), ordinary ones where it is not (row 1001)."""
    src = _rand((rows, 1024), dtype, 1)
    base = torch.zeros(1024, 4096, dtype=dtype)
    dst = base.t()[at : at + rows]  # rows of the transposed view, as blocks() makes them
    raw = src.reshape(-1).view(torch.uint8)
    assert land(dst, raw, crc32=0) == zlib.crc32(raw.numpy().tobytes())
    assert _same_bits(dst, src)
    assert not base[:, :at].any() and not base[:, at + rows :].any()


def test_sizes_are_checked_before_writing() -> None:
    src = torch.arange(12, dtype=torch.uint8)
    dst = torch.zeros(40, dtype=torch.uint8)
    with pytest.raises(S3InvalidArgumentError, match="itemsize"):
        _crt.transpose_copy(dst, src, 3, 4, 3, 3)
    with pytest.raises(S3InvalidArgumentError, match="dst_ld"):
        _crt.transpose_copy(dst, src, 3, 4, 1, 2)
    with pytest.raises(S3InvalidArgumentError, match="source is smaller"):
        _crt.transpose_copy(dst, src, 4, 4, 1, 4)
    with pytest.raises(S3InvalidArgumentError, match="destination is smaller"):
        _crt.transpose_copy(dst, src, 3, 4, 1, 20)
    with pytest.raises(S3InvalidArgumentError, match="overlap"):
        _crt.transpose_copy(dst, dst[:12], 3, 4, 1, 3)
    with pytest.raises(S3InvalidArgumentError, match="source is smaller"):
        _crt.transpose_copy(dst, src, 1 << 62, 1 << 62, 16, 1 << 62)  # sizes that overflow
    assert not dst.any()
    _crt.transpose_copy(dst, src, 3, 4, 1, 5)  # dst[c * 5 + r] = src[r * 4 + c]
    assert dst[:20].reshape(4, 5)[:, :3].t().reshape(-1).tolist() == list(range(12))
    _crt.transpose_copy(dst, src, 0, 4, 1, 0)  # nothing to copy
    assert _crt.transpose_copy(dst, src, 0, 4, 1, 0, 1234) == 1234  # the CRC of no bytes


def test_only_the_transpose_computes_a_crc() -> None:
    """``land`` returns a CRC32 only where it transposes; asking elsewhere is an error, not a
    silent None a caller could take for a checked slot."""
    src = torch.arange(12, dtype=torch.uint8)
    assert land(torch.zeros(3, 4, dtype=torch.uint8), src) is None
    with pytest.raises(ValueError, match="only by the transpose"):
        land(torch.zeros(3, 4, dtype=torch.uint8), src, crc32=0)
