"""The fuzz target of the C++ response parsers (csrc/fuzz/fuzz_responses.cpp: error bodies,
XML, list pages, byte counts), built with sanitizers into build/fuzz and run for a bounded time.

With a clang that has libFuzzer, it is a libFuzzer binary under ASan + UBSan; otherwise the
same target under gcc's ASan + UBSan with csrc/fuzz/driver.cpp (seeds plus random mutations).
The first build compiles the core with sanitizers (minutes; in a whole-suite run, in the
background: tests/background_builds.py); later runs reuse build/fuzz.
The test prints which mode ran. S3TORCH_FUZZ_SECONDS sets the run time (default 10).
The same build makes csrc/fuzz/check_transpose.cpp, the tiled transpose's check under the same
sanitizers, which the second test runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.background_builds import RUNNER, Build

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "fuzz"
TARGET = "s3torch-fuzz-responses"
CHECK_TRANSPOSE = "s3torch-check-transpose"  # csrc/fuzz/check_transpose.cpp, built beside it


def _compilers() -> dict:
    """clang (libFuzzer) when it is installed, else the default (gcc: the driver)."""
    clang, clangxx = shutil.which("clang"), shutil.which("clang++")
    return {"CC": clang, "CXX": clangxx} if clang and clangxx else {}


def background_build() -> Build:
    """The sanitizer build of the fuzz target (configured once, then incremental), run by
    tests/conftest.py in the background while the rest of the suite runs."""
    steps = []
    if not (BUILD / "build.ninja").exists() and not (BUILD / "Makefile").exists():
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        steps.append(
            ["cmake", "-S", str(ROOT), "-B", str(BUILD), *gen, "-DS3TORCH_BUILD_PYTHON=OFF", "-DS3TORCH_FUZZ=ON"]
            + ["-DCMAKE_BUILD_TYPE=RelWithDebInfo"]
        )
    steps.append(["cmake", "--build", str(BUILD), "--target", TARGET, CHECK_TRANSPOSE, "-j", str(os.cpu_count() or 2)])
    return Build("fuzz target", steps, env=_compilers())


def test_response_parsers_survive_fuzzing(capsys: pytest.CaptureFixture) -> None:
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed: the sanitizer build of the fuzz target is not available here")
    built = RUNNER.result(background_build(), timeout=1800)
    if built.returncode != 0:
        pytest.fail(f"building the fuzz target failed:\n{built.tail()}")
    mode = (BUILD / "fuzz_mode.txt").read_text().strip()
    seconds = int(os.environ.get("S3TORCH_FUZZ_SECONDS", "10"))
    corpus = ROOT / "csrc" / "fuzz" / "corpus"
    binary = BUILD / TARGET
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0", "UBSAN_OPTIONS": "halt_on_error=1"}
    if mode.startswith("libfuzzer"):
        work = BUILD / "corpus"  # libFuzzer adds what it finds; the seeds stay as they are
        work.mkdir(exist_ok=True)
        cmd = [str(binary), f"-max_total_time={seconds}", "-max_len=65536", "-timeout=10", str(work), str(corpus)]
    else:
        cmd = [str(binary), f"-seconds={seconds}", str(corpus)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, env=env)
    with capsys.disabled():
        print(f"\n[fuzz] {TARGET}: {mode} mode (sanitizers: address,undefined), {seconds} s")
    assert r.returncode == 0, f"{mode}: exit {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
    assert "ERROR: AddressSanitizer" not in r.stderr and "runtime error:" not in r.stderr, r.stderr[-8000:]


def test_the_tiled_transpose_under_sanitizers() -> None:
    """csrc/fuzz/check_transpose.cpp: every element size, shapes around the kernel, tile and
    streaming-store sizes, padded and misaligned destinations, with and without the CRC,
    against an element-by-element copy, each buffer a heap block of exactly its size."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not installed: the sanitizer build is not available here")
    built = RUNNER.result(background_build(), timeout=1800)
    if built.returncode != 0:
        pytest.fail(f"building the sanitizer targets failed:\n{built.tail()}")
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0", "UBSAN_OPTIONS": "halt_on_error=1"}
    r = subprocess.run([str(BUILD / CHECK_TRANSPOSE)], capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, f"exit {r.returncode}\n{r.stdout[-4000:]}\n{r.stderr[-8000:]}"
    assert "all equal" in r.stdout and "ERROR: AddressSanitizer" not in r.stderr and "runtime error:" not in r.stderr
