#!/usr/bin/env bash
# Certified vs empirical robust Recall@1 on the digits demo, and the cost per query of each.
#
#   bash benchmarks/bench_attack.sh OUTDIR [QUERIES]
#
# Writes the digits split (the demo's: scikit-learn digits, gallery 1,437 images) as .npz files,
# certifies the first QUERIES query digits (default 100) with the shipped sigma=0.25 model
# (sequential mode, n cap 10,000), attacks the same queries with --certified pointing at that
# run, and prints the attack's table (certified and empirical curves for vote, soft and base,
# the soundness count) and both commands' wall and CPU time. The plot is
# OUTDIR/attacked/attack_vs_certified.png. Exit status 1 if a certified query was broken.
set -euo pipefail
out=${1:?usage: bench_attack.sh OUTDIR [QUERIES]}
m=${2:-100}
mkdir -p "$out"
python - "$out" "$m" <<'PY'
import sys
import numpy as np
from retrievalguard_fast.demo.digits import load_digits_split
out, m = sys.argv[1], int(sys.argv[2])
d = load_digits_split()
np.savez(f"{out}/queries.npz", x=d.query_x[:m], labels=d.query_y[:m])
np.savez(f"{out}/gallery.npz", x=d.gallery_x, labels=d.gallery_y)
PY
common=(--model retrievalguard_fast.demo.digits:load_default_model --queries "$out/queries.npz" --gallery "$out/gallery.npz"
        --sigma 0.25 --radii 0,0.05,0.1,0.25,0.5,0.75,1,1.5)
echo "== $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/time -f "certify: %e s wall, %U s user + %S s system CPU" \
    python -m retrievalguard_fast certify "${common[@]}" --out "$out/certified" --quiet
/usr/bin/time -f "attack: %e s wall, %U s user + %S s system CPU" \
    python -m retrievalguard_fast attack "${common[@]}" --out "$out/attacked" --certified "$out/certified" --quiet
