"""How strong the attack is, and how small an over-certification its alarm sees, on digits.

    python benchmarks/bench_attack_strength.py [--queries 100] [--factors 1,1.1,1.25,1.5] [--parts 1,2]

The shipped sigma=0.25 digits model, the first QUERIES query digits of the demo's split.

1. The base model (no noise) at radii 0.25, 0.5, 0.75, 1: robust Recall@1 under the package's
   attack (PGD 20 steps: 2 restarts on the margin, 1 against all rival classes, 2 targeted
   passes) and under an
   independent l2 PGD of the same budget written in the tests (python_tests/reference.py:
   cross-entropy of the class scores, targeted passes against the same rivals), run on the same
   queries in this process; the time per query of each.
2. The alarm: the queries certified (fixed n = 10,000, n0 = 100, alpha 0.001, Recall@K for K = 1, 5),
   then, for each factor, every certified claim (vote, soft Gaussian, soft Recall@K) with its radius
   multiplied by the factor, attacked at that radius (``radii=()``: claims only). Factor 1 is the
   honest certifier and must raise nothing; the others count the claims broken inside the
   inflated radius, per certificate.
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

from retrievalguard_fast.attack import AttackConfig, Attacker, soundness_alarm
from retrievalguard_fast.attack.losses import nearest_rivals
from retrievalguard_fast.bench.common import print_hardware
from retrievalguard_fast.demo import load_default_model, load_digits_split
from retrievalguard_fast.smoothing import Gallery, SmoothedRetriever

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python_tests"))
import reference  # noqa: E402  (the tests' independent PGD)

SIGMA = 0.25
RADII = (0.25, 0.5, 0.75, 1.0)


def base_strength(model, gallery, xs, ys):
    config = AttackConfig(radii=RADII, models=("base",), steps=20, restarts=2, targets=2, seed=0)
    attacker = Attacker(SmoothedRetriever(model, gallery, SIGMA, batch_size=2000), config)
    ours, theirs = np.zeros(len(RADII)), np.zeros(len(RADII))
    t_ours = t_theirs = 0.0
    for i, (x, y) in enumerate(zip(xs, ys)):
        started = time.perf_counter()
        rec = attacker.attack_query(x, i, int(y))["base"]
        t_ours += time.perf_counter() - started
        ref = rec["reference"]
        with torch.no_grad():
            e = torch.nn.functional.normalize(model(torch.as_tensor(x)[None]), dim=-1)[0]
        rivals = nearest_rivals(e, gallery, ref, -1, 2)
        started = time.perf_counter()
        for j, radius in enumerate(RADII):
            ours[j] += ref == y and (rec["break_radius"] is None or rec["break_radius"] > radius)
            if ref != y:
                continue
            broken, _ = reference.independent_l2_pgd(model, x, gallery.embeddings64, gallery.labels_np, ref, radius,
                                                     steps=20, restarts=2, targeted=rivals, seed=i)
            theirs[j] += not broken
        t_theirs += time.perf_counter() - started
    m = len(xs)
    print("\n1. base model, robust Recall@1 (upper bounds: lower is a stronger attack)")
    print("  " + f"{'attack':<34}" + "".join(f"{'r=' + format(r, 'g'):>9}" for r in RADII) + "   s/query")
    print("  " + f"{'package (20 steps, 2+2 targeted)':<34}" + "".join(f"{v / m:>9.3f}" for v in ours)
          + f"{t_ours / m:>10.3f}")
    print("  " + f"{'independent l2 PGD, same budget':<34}" + "".join(f"{v / m:>9.3f}" for v in theirs)
          + f"{t_theirs / m:>10.3f}")


def inflated(records, factor):
    out = {}
    for index, record in records.items():
        d = dict(record)
        for field in ("vote_radius", "soft_gaussian_radius", "soft_lipschitz_radius"):
            if d[field] is not None:
                d[field] *= factor
        d["soft_recall_at_k"] = {k: {c: (None if r is None else r * factor) for c, r in v.items()}
                                 for k, v in d["soft_recall_at_k"].items()}
        out[index] = d
    return out


def alarm_sensitivity(model, gallery, xs, ys, factors):
    retriever = SmoothedRetriever(model, gallery, SIGMA, batch_size=2000, seed=0)
    certs = {c.index: c.to_dict() for c in retriever.certify(xs, ys, n0=100, n=10_000, alpha=0.001, ks=(1, 5))}
    attacker = Attacker(retriever, AttackConfig(radii=(), seed=1))
    print("\n2. claims attacked at their own radius x factor (broken inside / tested, per certificate)")
    for factor in factors:
        claims = inflated(certs, factor)
        started = time.perf_counter()
        records = [attacker.attack_query(x, i, int(y), certified=claims[i]) for i, (x, y) in enumerate(zip(xs, ys))]
        seconds = (time.perf_counter() - started) / len(xs)
        alarm = soundness_alarm(records, claims)
        per = ", ".join(f"{k} {v['broken_inside_radius']}/{v['tested']}" for k, v in alarm["by_claim"].items())
        print(f"  x{factor:<5g} {alarm['broken_inside_radius']:>3} queries alarmed  ({per}); {seconds:.2f} s/query")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--factors", default="1,1.1,1.25,1.5")
    p.add_argument("--parts", default="1,2", help="which parts to run (default both)")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    print_hardware()
    torch.manual_seed(0)
    data = load_digits_split()
    model = load_default_model(SIGMA)
    gallery = Gallery.from_model(model, data.gallery_x, data.gallery_y)
    xs, ys = data.query_x[: args.queries], data.query_y[: args.queries]
    if "1" in parts:
        base_strength(model, gallery, xs, ys)
    if "2" in parts:
        alarm_sensitivity(model, gallery, xs, ys, [float(f) for f in args.factors.split(",")])


if __name__ == "__main__":
    main()
