"""The soft certificate's Monte-Carlo bound: Bennett (default) against McDiarmid, in one process.

    python benchmarks/bench_soft_bound.py [--queries 20] [--skip-demo]

1. The closed-form half-space model, through the real pipeline (SmoothedRetriever, noise
   kernels, nn_vote): a 4-d input, embedding sign(w.x + b), sigma 0.5, each query 0.8 from the
   plane, gallery {+1 (label 0), 0.55 (label 1)}, so tau = 0.775 and the exact soft radius is
   0.8 - 0.5 Phi^-1(0.8875) = 0.193. Fixed n, alpha 0.001; the median over the queries (each its
   own noise stream) of the soft Gaussian radius / exact, for n = 10,000 and 100,000.
2. The digits demo (360 queries, sequential, cap 10,000) with each bound: certified soft
   Recall@1 at radii 0.05, 0.1, 0.25 and the samples drawn per query.
"""

import argparse
import contextlib
import io
import json
import math
import tempfile

import numpy as np
import torch
from scipy.stats import norm

from retrievalguard_fast import cli
from retrievalguard_fast.smoothing import Gallery
from retrievalguard_fast.smoothing import SmoothedRetriever
from retrievalguard_fast.smoothing.stats import BENNETT, MCDIARMID

SIGMA, DISTANCE, G_NEGATIVE = 0.5, 0.8, 0.55


class SignModel(torch.nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.register_buffer("w", torch.as_tensor(w, dtype=torch.float32))
        self.b = float(b)

    def forward(self, x):
        return torch.sign(x.flatten(1) @ self.w + self.b)[:, None]


def half_space_ratios(queries: int):
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal(4), 0.3
    direction = w / np.linalg.norm(w)
    on_plane = -b * direction / np.linalg.norm(w)
    x = np.repeat((on_plane + DISTANCE * direction)[None, :], queries, 0).astype(np.float32)
    gallery = Gallery(np.array([[1.0], [G_NEGATIVE]], np.float32), np.array([0, 1]), normalize=False)
    tau = (1.0 + G_NEGATIVE) / 2.0
    exact = DISTANCE - SIGMA * norm.ppf((1.0 + tau) / 2.0)
    retriever = SmoothedRetriever(SignModel(w, b), gallery, SIGMA, batch_size=20_000, seed=3)
    print(f"half-space model: sigma {SIGMA}, distance {DISTANCE}, tau {tau}, exact soft radius {exact:.4f}, "
          f"alpha 0.001, fixed n, {queries} queries")
    for n in (10_000, 100_000):
        line = []
        for bound in (MCDIARMID, BENNETT):
            certs = retriever.certify(x, np.zeros(queries, np.int64), n0=100, n=n, alpha=0.001, soft_bound=bound)
            ratios = [(c.soft_gaussian_radius or 0.0) / exact for c in certs]
            t = np.median([c.soft_deviation for c in certs])
            line.append(f"{bound} {np.median(ratios):.3f} (t sqrt(N) = {t * math.sqrt(n + 100):.2f})")
        print(f"  n = {n:>7,}: soft Gaussian radius / exact, median: " + ", ".join(line), flush=True)


def digits_demo():
    print("digits demo (360 queries, sequential, cap 10,000, alpha 0.001):")
    with tempfile.TemporaryDirectory() as tmp:
        for bound in (MCDIARMID, BENNETT):
            with contextlib.redirect_stdout(io.StringIO()):
                cli.main(["demo", "--out", f"{tmp}/{bound}", "--quiet", "--soft-bound", bound])
            with open(f"{tmp}/{bound}/summary.json") as f:
                s = json.load(f)
            rec = s["certified_recall_at_1"]
            cells = ", ".join(f"r={r}: gaussian {rec['gaussian'][r]:.3f} lipschitz {rec['lipschitz'][r]:.3f}"
                              for r in ("0.05", "0.1", "0.25"))
            print(f"  {bound:<9}: {cells}; {s['samples'] / s['num_queries']:,.0f} samples/query", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--skip-demo", action="store_true")
    args = p.parse_args()
    half_space_ratios(args.queries)
    if not args.skip_demo:
        digits_demo()


if __name__ == "__main__":
    main()
