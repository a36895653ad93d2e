"""Model-stage options: speed-up and effect on clean and certified Recall@1, in one run.

    python -m retrievalguard_fast bench model-stage              # digits default, 60 queries, n = 10,000
    python -m retrievalguard_fast bench model-stage --device cuda

Each configuration certifies the same queries with the same seed (fixed n) after a warm-up query
(which also pays torch.compile's compilation). Options: a larger batch, bf16 autocast (a
different, deterministic base model: its certificates hold for the model as run),
channels-last memory format, and torch.compile.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ..demo.digits import load_default_model, load_digits_split
from ..report import summarize
from ..smoothing.gallery import Gallery
from ..smoothing.retriever import SmoothedRetriever
from .common import print_hardware, sync_for, timed

CONFIGS = {
    "baseline": {},
    "batch x4": {"batch_scale": 4},
    "bf16 autocast": {"bf16": True},
    "channels-last": {"channels_last": True},
    "torch.compile": {"compile": True},
    "bf16 + compile": {"bf16": True, "compile": True},
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=60)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--batch-size", type=int, default=2000)
    p.add_argument("--radii", type=float, nargs="+", default=[0.0, 0.05, 0.25, 0.5])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    data = load_digits_split()
    m = min(args.queries, len(data.query_x))
    x, y = data.query_x[:m], data.query_y[:m]
    print_hardware(device)
    print(f"workload: digits MLP, {m} queries, n0 {args.n0}, n {args.n} (fixed), sigma {args.sigma}")
    rows = []
    for name in args.configs:
        cfg = dict(CONFIGS[name])
        batch = args.batch_size * cfg.pop("batch_scale", 1)
        model = load_default_model(args.sigma).to(device).eval()
        gallery = Gallery.from_model(model, data.gallery_x, data.gallery_y, device=device)
        r = SmoothedRetriever(model, gallery, args.sigma, batch_size=batch, device=device, seed=0, **cfg)
        r.certify(x[:1], y[:1], n0=args.n0, n=args.n)  # warm-up (and compilation)
        seconds, certs = timed(lambda: r.certify(x, y, n0=args.n0, n=args.n), sync_for(device))
        s = summarize(certs, args.radii)
        rows.append({"config": name, "seconds_per_query": seconds / m, "clean_recall_at_1": s["clean_recall_at_1"],
                     "vote": s["certified_recall_at_1"]["vote"], "gaussian": s["certified_recall_at_1"]["gaussian"]})
    base = rows[0]["seconds_per_query"]
    head = "".join(f"{'v@' + format(r, 'g'):>8}" for r in args.radii) + "".join(f"{'g@' + format(r, 'g'):>8}" for r in args.radii)
    print(f"\n  {'configuration':<16}{'s/query':>9}{'speed-up':>10}{'clean':>7}{head}")
    for row in rows:
        print(f"  {row['config']:<16}{row['seconds_per_query']:>9.4f}{base / row['seconds_per_query']:>9.2f}x"
              f"{row['clean_recall_at_1']:>7.3f}" + "".join(f"{v:>8.3f}" for v in row["vote"].values())
              + "".join(f"{v:>8.3f}" for v in row["gaussian"].values()))
    print("  (speed-up against the first configuration; v@r / g@r: certified Recall@1 of the vote / soft Gaussian "
          "certificate at radius r)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
