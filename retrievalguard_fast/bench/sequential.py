"""Sequential against fixed-n certification, and against a plain-torch loop, on the digits default.

    python -m retrievalguard_fast bench sequential                # all 360 queries, cap n = 100,000 (minutes)
    python -m retrievalguard_fast bench sequential --queries 60

Same queries, same radii (default 0.25, 0.5, 0.75), sigma 0.25, n0 = 100, alpha = 0.001:

1. retrievalguard_fast, sequential (n is the cap; each query stops when every radius is decided);
2. retrievalguard_fast, fixed n (every query draws n samples);
3. a Cohen-style plain torch loop with fixed n (repeat, randn_like, model, cdist, argmin,
   bincount, host copy per batch), its counts turned into the same vote certificates.

Prints certified Recall@1 at each radius for each, the model evaluations used, queries per second
and the ratios the throughput issue asks for.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ..demo.digits import load_default_model, load_digits_split
from ..report import certified_accuracy
from ..smoothing.certificates import vote_radius
from ..smoothing.gallery import Gallery
from ..smoothing.retriever import SmoothedRetriever
from .certify import plain_torch_certify
from .common import print_hardware, sync_for, timed


def table(name, preds, radii_per_query, labels, radii, samples, seconds, m):
    acc = [certified_accuracy(np.array(preds), radii_per_query, labels, r) for r in radii]
    return {"name": name, "certified_recall_at_1": dict(zip(map(str, radii), acc)), "model_evaluations": int(samples),
            "seconds": seconds, "queries_per_second": m / seconds}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=360)
    p.add_argument("--n", type=int, default=100_000, help="fixed n, and the sequential cap")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch-size", type=int, default=4000)
    p.add_argument("--skip-torch", action="store_true", help="skip the (slow) plain-torch loop")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    data = load_digits_split()
    model = load_default_model(args.sigma).to(device).eval()
    gallery = Gallery.from_model(model, data.gallery_x, data.gallery_y, device=device)
    m = min(args.queries, len(data.query_x))
    x, y = data.query_x[:m], data.query_y[:m]
    print_hardware(device)
    print(f"workload: digits, {m} queries, sigma {args.sigma}, n0 {args.n0}, n {args.n}, radii {args.radii}, "
          f"alpha {args.alpha}, batch {args.batch_size}")
    r = SmoothedRetriever(model, gallery, args.sigma, batch_size=args.batch_size, device=device, seed=0)
    rows = {}
    sync = sync_for(device)

    t, seq = timed(lambda: r.certify(x, y, n0=args.n0, n=args.n, alpha=args.alpha, mode="sequential", radii=args.radii),
                   sync)
    samples = sum(c.samples for c in seq)
    rows["seq"] = table("ours, sequential (vote)", [c.vote_prediction for c in seq], [c.vote_radius for c in seq], y,
                        args.radii, samples, t, m)
    rows["seq_soft"] = table("ours, sequential (soft, Gaussian)", [c.soft_prediction for c in seq],
                             [c.soft_gaussian_radius for c in seq], y, args.radii, samples, t, m)
    t, fixed = timed(lambda: r.certify(x, y, n0=args.n0, n=args.n, alpha=args.alpha), sync)
    samples = sum(c.samples for c in fixed)
    rows["fixed"] = table("ours, fixed n (vote)", [c.vote_prediction for c in fixed], [c.vote_radius for c in fixed], y,
                          args.radii, samples, t, m)
    rows["fixed_soft"] = table("ours, fixed n (soft, Gaussian)", [c.soft_prediction for c in fixed],
                               [c.soft_gaussian_radius for c in fixed], y, args.radii, samples, t, m)
    if not args.skip_torch:
        xt = torch.from_numpy(x).to(device)
        t, counts = timed(lambda: plain_torch_certify(model, gallery.embeddings, gallery.labels, gallery.num_classes,
                                                      xt, args.n0, args.n, args.batch_size, args.sigma, device), sync)
        preds, radii_q = [], []
        for sel, cert in counts:  # Cohen's CERTIFY on its counts
            top = int(np.argmax(sel))
            _, rad = vote_radius(int(cert[top]), args.n, args.alpha, args.sigma)
            preds.append(top if rad is not None else -1)
            radii_q.append(rad)
        rows["torch"] = table("plain torch loop, fixed n (vote)", preds, radii_q, y, args.radii,
                              m * (args.n0 + args.n), t, m)

    print(f"\n  {'contender':<36}" + "".join(f"{'r=' + format(v, 'g'):>8}" for v in args.radii) +
          f"{'model evals':>14}{'s':>9}{'queries/s':>11}")
    for row in rows.values():
        print(f"  {row['name']:<36}" + "".join(f"{v:>8.3f}" for v in row["certified_recall_at_1"].values()) +
              f"{row['model_evaluations']:>14,}{row['seconds']:>9.1f}{row['queries_per_second']:>11.2f}")
    f, s = rows["fixed"], rows["seq"]
    worst = max(abs(f["certified_recall_at_1"][k] - s["certified_recall_at_1"][k]) for k in f["certified_recall_at_1"])
    print(f"\n  vote, sequential vs fixed n: {f['model_evaluations'] / s['model_evaluations']:.1f}x fewer model evaluations "
          f"(target >= 5x), certified Recall@1 differs by at most {100 * worst:.1f} points (target <= 1)")
    if "torch" in rows:
        print(f"  throughput, sequential vs plain torch with fixed n: "
              f"{s['queries_per_second'] / rows['torch']['queries_per_second']:.1f}x (target >= 2x)")
        print(f"  fixed n, ours vs plain torch: {rows['torch']['seconds'] / f['seconds']:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"date": time.strftime("%Y-%m-%d"), "args": vars(args), "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
