"""s3torch._crt.crc32 (PCLMULQDQ folding where the CPU has it) equals zlib.crc32."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3torch import _crt


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=600), prev=st.integers(0, 2**32 - 1), cut=st.integers(0, 16))
def test_matches_zlib(data: bytes, prev: int, cut: int) -> None:
    view = memoryview(data)[min(cut, len(data)) :]  # unaligned starts too
    assert _crt.crc32(view) == zlib.crc32(view)
    assert _crt.crc32(view, prev) == zlib.crc32(view, prev)


@pytest.mark.parametrize("n", [63, 64, 65, 127, 128, 4096 + 5, 1 << 20, (1 << 22) + 17])
def test_large_and_chained(n: int) -> None:
    data = os.urandom(n)
    assert _crt.crc32(data) == zlib.crc32(data)
    half = n // 3
    assert _crt.crc32(data[half:], _crt.crc32(data[:half])) == zlib.crc32(data)
    arr = np.frombuffer(data, dtype=np.uint8)
    assert _crt.crc32(arr) == zlib.crc32(data)
