#!/bin/bash
# Every CUDA check of issues 21 and 22 in one run on the lent GPU machine (device time is
# short: one prepared run, then only what failed). Two steps:
#
# 1. Here, after `pip install .` (the CRT cache filled):
#      bash scripts/gpu_check.sh --pack
#    runs ../shared/gpu/pack.sh (CRT, nginx, on_device.sh -> .gpu/) with the cp312 wheels the
#    tests and peers need there, a wheel of s3torchconnector (an sdist on PyPI) and SeaweedFS's
#    weed (xz, for the tests' writes and dcp_save_cuda): about 58 MiB, under the 64 MiB carry.
# 2. On the device (`run` with carry [".gpu"], timeout ~560 s):
#      bash scripts/gpu_check.sh
#    Results under $OUT (or /tmp/gpu-out): tests.txt (tests/gpu), bench-load/ (dcp_load_cuda
#    with its cold row), bench-save/ (dcp_save_cuda), env.txt.
set -uo pipefail
if [ "${1:-}" = "--pack" ]; then
  set -e
  GPU_WHEELS="pytest==9.2.0 pluggy==1.6.0 iniconfig==2.3.0 packaging==26.2 hypothesis==6.155.2 \
    sortedcontainers==2.4.0 attrs==26.1.0 s3torchconnectorclient==1.5.0 safetensors==0.8.0" \
    bash ../shared/gpu/pack.sh
  python3 -m pip wheel -q --no-deps -w .gpu/wheels s3torchconnector==1.5.0
  strip --strip-debug .gpu/crt/lib/*.a  # debug sections only (-4 MB): the carry limit is 64 MiB
  python3 - <<'PY'
import lzma, shutil, sys
from pathlib import Path
weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
with open(weed, "rb") as f, lzma.open(".gpu/weed.xz", "wb", preset=6) as out:
    shutil.copyfileobj(f, out)
PY
  ls .gpu/wheels; du -sh .gpu
  exit 0
fi
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
source .gpu/on_device.sh > "$OUT/env.txt" 2>&1 || { cat "$OUT/env.txt"; exit 1; }
mkdir -p /tmp/bin && python3 -c "
import lzma, os, shutil
with lzma.open('.gpu/weed.xz') as f, open('/tmp/bin/weed', 'wb') as out: shutil.copyfileobj(f, out)
os.chmod('/tmp/bin/weed', 0o755)" && export PATH=/tmp/bin:$PATH:$(pwd)/.gpu/ng/usr/sbin  # weed for tests and saves, nginx for the harness
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >> "$OUT/env.txt"
echo "== tests/gpu"
# -v: each result is in the file as it happens, even if the timeout cuts the run short.
timeout 200 python3 -m pytest tests/gpu -v -p no:cacheprovider --durations=10 > "$OUT/tests.txt" 2>&1
echo "tests rc=$?"; grep -E "PASSED|FAILED|ERROR" "$OUT/tests.txt" | sed 's/ *\[ *[0-9]*%\]//' | tail -40
tail -25 "$OUT/tests.txt"
echo "== benchmarks"
# Saves write ~4.3 GB per run into SeaweedFS (disk): 2 runs per peer there, 3 for loads.
timeout 150 python3 benchmarks/run.py --python python3 --no-install --scenarios dcp_load_cuda \
  --repeat 3 --out "$OUT/bench-load" > "$OUT/bench-load.txt" 2>&1
echo "load rc=$?"; grep -A9 "^| peer" "$OUT/bench-load/results.md" 2>/dev/null || tail -20 "$OUT/bench-load.txt"
timeout 150 python3 benchmarks/run.py --python python3 --no-install --scenarios dcp_save_cuda \
  --repeat 2 --out "$OUT/bench-save" > "$OUT/bench-save.txt" 2>&1
echo "save rc=$?"; grep -A9 "^| peer" "$OUT/bench-save/results.md" 2>/dev/null || tail -20 "$OUT/bench-save.txt"
