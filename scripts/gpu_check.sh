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
#    Results under $OUT (or /tmp/gpu-out): tests.txt (tests/gpu), sweep/ (ring_sweep.py: ring
#    sizes for CUDA loads; the harness rows then load with the fastest), bench-dcp_load_cuda/,
#    bench-safetensors_load_cuda/, bench-dcp_save_cuda/, bench-hf_model_save_cuda/ (run.py),
#    pin.txt, populate.txt,
#    transpose.txt (CPU-side benchmarks), env.txt. GPU_BUDGET_S
#    (default 540) bounds the whole: steps that would not fit are skipped (they run in order of need).
#    GPU_STEPS picks steps (default: tests pin sweep dcp_load_cuda safetensors_load_cuda
#    dcp_save_cuda hf_model_save_cuda), GPU_TESTS_K a pytest -k, GPU_REPEAT the harness's runs per row.
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
python3 -c "from s3torch import _crt; print('huge page bytes:', _crt.huge_page_bytes(), 'enabled:', _crt.huge_pages_enabled())" >> "$OUT/env.txt" 2>&1
cat /sys/kernel/mm/transparent_hugepage/enabled /sys/kernel/mm/transparent_hugepage/defrag \
  /sys/module/page_reporting/parameters/page_reporting_order >> "$OUT/env.txt" 2>&1
T0=$(date +%s); BUDGET=${GPU_BUDGET_S:-540}  # seconds this script may take; later steps skip
left() { echo $((BUDGET - ($(date +%s) - T0))); }
step() {  # step NAME SECONDS LOG CMD...: CMD with a timeout, output to LOG; skipped if the budget is short
  local name=$1 t=$2 log=$3; shift 3
  if [ "$(left)" -lt 30 ]; then echo "== $name: skipped (budget)"; return; fi
  [ "$t" -gt "$(left)" ] && t=$(left)
  echo "== $name (timeout ${t}s, $(left)s left)"; timeout "$t" "$@" > "$log" 2>&1; echo "$name rc=$?"
}
want() { [[ " ${GPU_STEPS:-tests pin sweep dcp_load_cuda safetensors_load_cuda dcp_save_cuda hf_model_save_cuda} " == *" $1 "* ]]; }
if want tests; then  # -v: each result is in the file as it happens, even if the timeout cuts the run short.
  step tests/gpu 200 "$OUT/tests.txt" python3 -m pytest tests/gpu -v -p no:cacheprovider --durations=10 ${GPU_TESTS_K:+-k "$GPU_TESTS_K"}
  grep -E "PASSED|FAILED|ERROR" "$OUT/tests.txt" | sed 's/ *\[ *[0-9]*%\]//' | tail -40
  grep -E "^E  " "$OUT/tests.txt" | head -20; tail -3 "$OUT/tests.txt"
fi
if want pin; then  # how fast a fresh process page-locks a ring, each way
  step pin_bench 90 "$OUT/pin.txt" python3 benchmarks/pin_bench.py; grep "^|" "$OUT/pin.txt" || tail "$OUT/pin.txt"
  step populate_bench 40 "$OUT/populate.txt" python3 benchmarks/populate_bench.py --pairs 4  # huge pages or not, no GPU
  grep "^|" "$OUT/populate.txt" || tail "$OUT/populate.txt"
  # The transposing copy of staged host loads on this machine's CPU (no GPU): bf16, then fp8.
  step transpose_bench 30 "$OUT/transpose.txt" bash -c "python3 benchmarks/transpose_bench.py --rounds 3 \
    && python3 benchmarks/transpose_bench.py --rounds 3 --dtype float8_e4m3fn"
  grep "^|" "$OUT/transpose.txt" || tail "$OUT/transpose.txt"
fi
if want sweep; then  # ring sizes for CUDA loads, in one process; the harness rows then load with the best
  step ring_sweep 150 "$OUT/sweep.txt" python3 benchmarks/ring_sweep.py --repeat 3 --out "$OUT/sweep"
  cat "$OUT/sweep/ring_sweep.md" 2>/dev/null || tail -20 "$OUT/sweep.txt"
  [ -s "$OUT/sweep/best_ring" ] && export S3TORCH_BENCH_RING=$(cat "$OUT/sweep/best_ring")
fi
echo "S3TORCH_BENCH_RING=${S3TORCH_BENCH_RING:-default}"
# hf_model_save_cuda: s3torch's rows only (huggingface_hub and s5cmd are not in the carry).
for sc in "dcp_load_cuda 3 150" "safetensors_load_cuda 3 120" "dcp_save_cuda 2 120" \
  "hf_model_save_cuda 2 90 s3torch,s3torch-cpu"; do
  set -- $sc  # Saves write ~4.3 GB per run into SeaweedFS (disk): 2 runs there.
  want "$1" || continue
  step "$1" "$3" "$OUT/bench-$1.txt" python3 benchmarks/run.py --python python3 --no-install \
    --scenarios "$1" ${4:+--peers "$4"} --repeat "${GPU_REPEAT:-$2}" --out "$OUT/bench-$1"
  grep -A9 "^| peer" "$OUT/bench-$1/results.md" 2>/dev/null || tail -20 "$OUT/bench-$1.txt"
done
echo "== done in $(( $(date +%s) - T0 ))s"
