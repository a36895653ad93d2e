#!/usr/bin/env bash
# GPU verification in one run: build, GPU tests (which must not skip), GPU benchmarks, a table.
#
#   bash benchmarks/gpu_check.sh LOGDIR
#
# Run from the repository root on a machine with a CUDA GPU, torch, nvcc, pybind11,
# scikit-build-core, cmake and ninja, and no package index (the package's other runtime
# dependencies, numpy, scipy, tqdm, matplotlib, scikit-learn and threadpoolctl, are expected to be
# there; --no-deps installs nothing else). Logs go to LOGDIR; the summary table is printed last.
# Budget: under 8 minutes on one H200.
set -uo pipefail
LOG="${1:?usage: bash benchmarks/gpu_check.sh LOGDIR}"
mkdir -p "$LOG" && LOG="$(cd "$LOG" && pwd)"
PY="${PYTHON:-python3}"
START=$(date +%s)
STATUS=()
step() {  # step NAME TIMEOUT COMMAND...: run, log, record pass/fail and time
  local name="$1" limit="$2"; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$LOG/$name.log" 2>&1
  local rc=$?
  STATUS+=("$(printf '%-22s %-5s %4ss  %s' "$name" "$([ $rc -eq 0 ] && echo ok || echo FAIL)" "$(( $(date +%s) - t0 ))" "$LOG/$name.log")")
  [ $rc -eq 0 ] || tail -20 "$LOG/$name.log"
  return $rc
}

nvidia-smi > "$LOG/nvidia-smi.log" 2>&1 || true
step build 400 "$PY" -m pip install --no-build-isolation --no-deps -v . || { printf '%s\n' "${STATUS[@]}"; exit 1; }
# Outside the source tree, so the installed package (with its compiled modules) is imported.
cd "$LOG"
step has_cuda 60 "$PY" -c "
import json, retrievalguard_fast as r
info = r.build_info(); print(json.dumps(info, indent=2))
assert info['cuda']['compiled'], 'the CUDA module was not built'
assert r.has_cuda(), 'the CUDA module is built but reports no usable GPU'"
REPO="$OLDPWD"
# GPU tests: RGF_REQUIRE_CUDA makes the test suite fail instead of skipping GPU tests. (The CPU
# tests are CI's job; skipping them here keeps the run inside its device-time budget.)
step gpu_tests 300 env RGF_REQUIRE_CUDA=1 "$PY" -m pytest -q -x "$REPO/python_tests" -k "cuda" -p no:cacheprovider
step bench_kernels 240 "$PY" -m retrievalguard_fast bench kernels --device cuda --repeat 5 --json "$LOG/kernels.json"
step bench_digits 120 "$PY" -m retrievalguard_fast bench certify --device cuda --queries 50 --batch-size 10000 --json "$LOG/digits.json"
step bench_resnet50 300 "$PY" -m retrievalguard_fast bench certify --device cuda --workload resnet50 --queries 2 \
  --n 100000 --batch-size 1000 --repeat 1 --json "$LOG/resnet50.json"

echo
echo "== retrievalguard_fast GPU check ($(( $(date +%s) - START )) s) =="
printf '%s\n' "${STATUS[@]}"
for f in kernels digits resnet50; do
  [ -f "$LOG/bench_$f.log" ] || continue
  echo "-- $f"; grep -E "x  |x$|target|s/query|GFLOP|TFLOP|GB/s" "$LOG/bench_$f.log" | head -20
done
