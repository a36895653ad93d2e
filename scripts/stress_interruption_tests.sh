#!/usr/bin/env bash
# Runs the tests that start processes and send signals -- the CLI's interruption and folder-lock
# tests, the torchrun tests (ranks, two launchers, a SIGKILLed rank, resume, a raising rank) and
# the training's (a SIGKILLed training or denoiser run resumed, two training ranks, ranks of
# another sigma) --
# N times in a row (default 20) while busy loops keep every core loaded, the conditions under
# which a timing-dependent test would fail.
# Usage: bash scripts/stress_interruption_tests.sh [N]   (from the repository root, package installed)
set -euo pipefail
rounds="${1:-20}"
busy=()
for _ in $(seq "$(nproc)"); do
  python3 -c "while True: pass" &
  busy+=($!)
done
trap 'kill "${busy[@]}" 2>/dev/null' EXIT
for i in $(seq "$rounds"); do
  start=$(date +%s)
  pytest python_tests/cli/test_cli.py python_tests/runs/test_distributed.py python_tests/training -q -p no:cacheprovider \
    -k "interruption or in_use or ranks or launchers or killed or resume_a or raises or sigkill or another_sigma" \
    || { echo "round $i of $rounds FAILED"; exit 1; }
  echo "round $i of $rounds passed in $(( $(date +%s) - start )) s, $(nproc) busy loops running"
done
echo "all $rounds rounds passed under load"
