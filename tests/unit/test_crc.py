"""s3torch._crt.crc32 (PCLMULQDQ folding on x86_64, the ARMv8 CRC32 instructions on aarch64,
where the CPU has them) equals zlib.crc32."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s3torch import _crt
from tests.crc_oracle import CRC64NVME_POLY, crc32c, reflected_crc


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


@pytest.mark.parametrize("seed", range(6))
def test_random_sizes_offsets_and_seeds(seed: int) -> None:
    # Sizes around every path's edges (the 64-byte fold blocks, the 16-byte tail, the 8-byte
    # ARM words) and well past them, at every start alignment within a cache line, chained
    # from a random previous CRC.
    rng = np.random.default_rng(seed)
    block = rng.integers(0, 256, (1 << 17) + 64, dtype=np.uint8).tobytes()
    sizes = [int(s) for s in rng.integers(0, 1 << 17, 24)] + [int(s) for s in rng.integers(0, 200, 24)]
    for size in sizes:
        start = int(rng.integers(0, 64))
        view = memoryview(block)[start : start + size]
        prev = int(rng.integers(0, 2**32))
        assert _crt.crc32(view, prev) == zlib.crc32(view, prev), (size, start, prev)


def _expected_implementation() -> str:
    machine = os.uname().machine
    if machine == "x86_64":
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        return "pclmul" if {"pclmulqdq", "sse4_1"} <= set(flags) else "portable"
    if machine == "aarch64":
        import ctypes

        getauxval = ctypes.CDLL(None).getauxval
        getauxval.restype = ctypes.c_ulong
        AT_HWCAP, HWCAP_CRC32 = 16, 1 << 7  # <sys/auxv.h>, <asm/hwcap.h>
        return "armv8-crc" if getauxval(AT_HWCAP) & HWCAP_CRC32 else "portable"
    return "portable"


def test_hardware_path_where_the_cpu_has_it() -> None:
    # x86_64: PCLMULQDQ folding where cpuinfo lists pclmulqdq and sse4_1; aarch64: the ARMv8
    # CRC32 instructions where the kernel reports HWCAP_CRC32 (Graviton, Grace, qemu's max CPU).
    assert _crt.crc32_implementation() == _expected_implementation()


# --- the CRCs S3 stores: checksum() and checksum_combine() ------------------------------------


ORACLES = {
    "crc32": lambda d: zlib.crc32(d),
    "crc32c": crc32c,
    "crc64nvme": lambda d: reflected_crc(d, CRC64NVME_POLY, 64),
}


@pytest.mark.parametrize("algorithm", sorted(ORACLES))
def test_checksum_matches_the_oracle_and_the_check_values(algorithm: str) -> None:
    check = {"crc32": 0xCBF43926, "crc32c": 0xE3069283, "crc64nvme": 0xAE8B14860A799888}[algorithm]
    assert _crt.checksum(algorithm, b"123456789") == check == ORACLES[algorithm](b"123456789")
    assert _crt.checksum(algorithm.upper(), b"") == 0


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=0, max_size=3000), cut=st.integers(0, 3000), algorithm=st.sampled_from(sorted(ORACLES)))
def test_checksum_continues_and_combines(data: bytes, cut: int, algorithm: str) -> None:
    cut = min(cut, len(data))
    a, b = data[:cut], data[cut:]
    whole = ORACLES[algorithm](data)
    assert _crt.checksum(algorithm, data) == whole
    assert _crt.checksum(algorithm, b, _crt.checksum(algorithm, a)) == whole
    assert _crt.checksum_combine(algorithm, _crt.checksum(algorithm, a), _crt.checksum(algorithm, b), len(b)) == whole


def test_checksum_refuses_an_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="crc32, crc32c or crc64nvme, got 'md5'"):
        _crt.checksum("md5", b"x")
    with pytest.raises(ValueError, match="got 'sha256'"):
        _crt.checksum_combine("sha256", 0, 0, 1)
