"""One run across torchrun ranks against one process, on the digits demo's workload.

    python benchmarks/bench_torchrun.py [--ranks 2] [--repeat 2] [--num-samples 10000]

The digits demo (360 queries, the shipped MLP, sigma 0.25, sequential with cap --num-samples,
batch 2000) certified by `certify` into a fresh folder, alternately:
  A. one process, torch and OpenMP with --ranks threads;
  B. `torchrun --standalone --nproc-per-node RANKS`, one thread per rank.
Checks first that B's records equal A's (timing fields aside), then prints for each run its
certifying time (summary.json's this_session.seconds: gallery to last record, the part the
ranks split) and whole command time (with start-up: interpreters, imports, rendezvous), and for
B the largest fraction of the certifying time any rank spent finished while another still
worked (this_session.rank_idle_fraction). On a machine with RANKS cores this measures the
overhead of ranks, not scaling: both use every core.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from retrievalguard_fast.demo.digits import load_default_model, load_digits_split


def records(folder):
    with open(os.path.join(folder, "results.jsonl")) as f:
        return sorted(({k: v for k, v in json.loads(line).items() if k != "seconds"} for line in f),
                      key=lambda r: r["index"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--num-samples", type=int, default=10_000)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bench-torchrun-")
    data = load_digits_split()
    torch.jit.script(load_default_model(0.25)).save(os.path.join(work, "model.pt"))
    np.savez(os.path.join(work, "queries.npz"), x=data.query_x, labels=data.query_y)
    np.savez(os.path.join(work, "gallery.npz"), x=data.gallery_x, labels=data.gallery_y)
    common = ["certify", "--model", "model.pt", "--queries", "queries.npz", "--gallery", "gallery.npz",
              "--sigma", "0.25", "--num-samples", str(args.num_samples), "--batch-size", "2000", "--quiet"]
    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}; {len(data.query_x)} queries, "
          f"cap {args.num_samples}, {args.ranks} ranks")

    def run(kind, i):
        out = os.path.join(work, f"{kind}-{i}")
        env = dict(os.environ, OMP_NUM_THREADS=str(1 if kind == "ranks" else args.ranks))
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                     f"--nproc-per-node={args.ranks}", "-m", "retrievalguard_fast"] if kind == "ranks"
                    else [sys.executable, "-m", "retrievalguard_fast"])
        t = time.perf_counter()
        subprocess.run([*launcher, *common, "--out", out], cwd=work, env=env, check=True, capture_output=True)
        wall = time.perf_counter() - t
        with open(os.path.join(out, "summary.json")) as f:
            session = json.load(f)["this_session"]
        return out, wall, session

    rows = []
    for i in range(args.repeat):
        for kind in ("one", "ranks"):
            out, wall, session = run(kind, i)
            if kind == "ranks":
                assert records(out) == records(os.path.join(work, f"one-{i}")), "ranks changed the records"
            rows.append((kind, wall, session))
            idle = session.get("rank_idle_fraction")
            print(f"{'1 process x %d threads' % args.ranks if kind == 'one' else '%d ranks x 1 thread' % args.ranks:>22}: "
                  f"certifying {session['seconds']:6.2f} s, command {wall:6.2f} s, "
                  f"{session['samples_per_second']:,.0f} samples/s"
                  + (f", largest rank idle fraction {idle:.3f}" if idle is not None else ""), flush=True)
    for kind in ("one", "ranks"):
        cert = [s["seconds"] for k, _, s in rows if k == kind]
        wall = [w for k, w, _ in rows if k == kind]
        print(f"median {kind}: certifying {np.median(cert):.2f} s, command {np.median(wall):.2f} s")
    print("records identical in every pair")


if __name__ == "__main__":
    main()
