#!/usr/bin/env bash
# Build the core and extension with ASan+UBSan (CMake option S3TORCH_SANITIZE) and run the
# given tests (default: the integration suite on SeaweedFS) against that build.
#   bash scripts/sanitize_test.sh [pytest args...]
# Needs the packages of README command 2 installed (pybind11, pytest, servers).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build/asan -G Ninja -DS3TORCH_SANITIZE=ON -DS3TORCH_BUILD_BENCH=OFF \
  -Dpybind11_DIR="$(python -c 'import pybind11; print(pybind11.get_cmake_dir())')" >/dev/null
cmake --build build/asan
pkg=$(mktemp -d)
trap 'rm -rf "$pkg"' EXIT
cp -r python/s3torch "$pkg/" && cp build/asan/_crt*.so "$pkg/s3torch/"
# Python does not link libstdc++: preload it with libasan so ASan can intercept C++ throws.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0} UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1}
if [ $# -eq 0 ]; then set -- tests/integration -k "seaweed or fork or pickle"; fi
PYTHONPATH="$pkg" python -m pytest -p no:cacheprovider "$@"
