#!/usr/bin/env bash
# The tiled transpose's NEON micro-kernels (csrc/s3torch/transpose.cpp) checked on aarch64
# under qemu user-mode emulation, on an x86_64 machine: csrc/fuzz/check_transpose.cpp (every
# element size, shapes around the micro-kernel and tile sizes, padded and misaligned
# destinations, with and without the CRC, against an element-by-element copy) cross-built by
# zig (PyPI's ziglang, which builds the release wheels) into one static aarch64 program, with
# a bit-by-bit CRC-32 instead of the CRT's (csrc/fuzz/crc32_reference.cpp), run by
# qemu-aarch64-static. Then the same program for x86_64, natively, as the control.
#
#   scripts/check_transpose_aarch64.sh
#
# Needs: apt-get install qemu-user-static; pip install ziglang (both light; no arm64 libraries,
# the programs are static). CI runs the x86_64 check under sanitizers (tests/unit/
# test_fuzz_native.py); this one is not in CI (the NEON code is not compiled there at all).
# Environment: PYTHON (with ziglang, default python3), QEMU (default qemu-aarch64-static).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
QEMU=${QEMU:-qemu-aarch64-static}
OUT="$ROOT/build/check-transpose"
log() { echo "[check_transpose_aarch64] $*" >&2; }

command -v "$QEMU" >/dev/null || { log "no $QEMU: apt-get install qemu-user-static"; exit 2; }
"$PY" -m ziglang version >/dev/null 2>&1 || { log "no zig for $PY: pip install ziglang"; exit 2; }
mkdir -p "$OUT"
SOURCES=("$ROOT/csrc/fuzz/check_transpose.cpp" "$ROOT/csrc/s3torch/transpose.cpp" "$ROOT/csrc/fuzz/crc32_reference.cpp")
for arch in aarch64 x86_64; do
  "$PY" -m ziglang c++ -target "$arch-linux-musl" -O2 -static -std=c++17 -Wall -Wextra -Werror \
    -I "$ROOT/csrc" "${SOURCES[@]}" -o "$OUT/check-transpose-$arch"
done
# Each must have run its own micro-kernels: NEON on aarch64, SSE2 on x86_64.
log "aarch64, under $QEMU:"
"$QEMU" "$OUT/check-transpose-aarch64" | tee "$OUT/aarch64.txt"
grep -q '(neon kernels).*all equal' "$OUT/aarch64.txt" || { log "the aarch64 build did not use NEON"; exit 1; }
log "x86_64, natively:"
"$OUT/check-transpose-x86_64" | tee "$OUT/x86_64.txt"
grep -q '(sse2 kernels).*all equal' "$OUT/x86_64.txt"
