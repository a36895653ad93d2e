"""End-to-end certification benchmark on the digits model, against a plain-torch loop, in one run.

    python -m retrievalguard_fast bench certify                     # 20 queries, n = 10,000, CPU
    python -m retrievalguard_fast bench certify --device cuda --queries 100

Three contenders process the same queries with the same number of noisy samples per query:

Workloads: ``digits`` (the CLI's default model, CPU or GPU) and ``resnet50`` (GPU only: the
paper's setting, a torchvision ResNet-50 with random weights and a 128-d head, 224x224 inputs,
channels-last, bf16 autocast, a random 60,000 x 128 gallery with 11,000 classes).

1. model forward alone: the base model on pre-generated noisy batches (the floor: everything the
   certifier adds on top of it is overhead);
2. retrievalguard_fast: SmoothedRetriever.certify (noise kernel, model, fused nn_vote, certificates);
3. plain torch, the way the reference smoothing code does it: repeat the input, randn_like, model,
   cdist to the gallery, argmin, bincount, a host copy of the counts per batch.

Each contender is timed --repeat times (alternating) and its best run kept. Prints seconds per
query, noisy samples per second, our time over the forward-only time
(targets: at most 1.3x for digits on the CPU; at most 1.05x and 5 s/query for resnet50 on a GPU)
and our speed-up over the plain-torch loop. ``--nn-precision`` picks the certifier's search mode.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from ..demo.digits import load_default_model, load_digits_split
from ..smoothing.gallery import Gallery
from ..smoothing.retriever import SmoothedRetriever
from .common import print_hardware, sync_for, timed


def forward_only(model, noisy_batches, device, bf16=False):
    def run():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for b in noisy_batches:
                model(b)

    return timed(run, sync_for(device))[0]


def plain_torch_certify(model, gallery_emb, gallery_labels, classes, x, n0, n, batch, sigma, device, bf16=False,
                        channels_last=False):
    """Counts the way locuslab/smoothing's core.py does (plus the embedding sum): per query, the
    selection counts of n0 samples and the certification counts of n fresh ones."""
    counts_all = []
    with torch.inference_mode():
        for q in range(len(x)):
            sums = torch.zeros(gallery_emb.shape[1], dtype=torch.float64, device=device)
            phases = []
            for total in (n0, n):
                counts = np.zeros(classes, dtype=np.int64)
                remaining = total
                while remaining > 0:
                    this = min(batch, remaining)
                    remaining -= this
                    xb = x[q : q + 1].repeat((this,) + (1,) * (x.ndim - 1))
                    noisy = xb + torch.randn_like(xb) * sigma
                    if channels_last:
                        noisy = noisy.contiguous(memory_format=torch.channels_last)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        e = torch.nn.functional.normalize(model(noisy).float(), dim=1)
                    nearest = torch.cdist(e, gallery_emb).argmin(dim=1)
                    counts += torch.bincount(gallery_labels[nearest], minlength=classes).cpu().numpy()
                    sums += e.sum(0, dtype=torch.float64)
                phases.append(counts)
            counts_all.append(tuple(phases))
    return counts_all


class ResNet50Embedding(torch.nn.Module):
    """The paper-sized base model: torchvision ResNet-50 (random weights), 128-d embedding head."""

    def __init__(self):
        super().__init__()
        import torchvision

        self.net = torchvision.models.resnet50(weights=None)
        self.net.fc = torch.nn.Linear(self.net.fc.in_features, 128)

    def forward(self, x):
        return self.net(x)


def build_workload(args, device):
    """(model, gallery, queries x, labels y, model-stage options) of the chosen workload."""
    if args.workload == "digits":
        data = load_digits_split()
        model = load_default_model(args.sigma).to(device).eval()
        gallery = Gallery.from_model(model, data.gallery_x, data.gallery_y, device=device)
        x = torch.from_numpy(data.query_x[: args.queries]).to(device)
        return model, gallery, x, data.query_y[: args.queries], {}
    # Paper-sized (RetrievalGuard's setting): ResNet-50, 224x224 inputs, a random 60,000 x 128
    # gallery with 11,000 classes; channels-last and bf16 autocast.
    if device.type != "cuda":
        raise SystemExit("the resnet50 workload needs a GPU (--device cuda)")
    gen = torch.Generator().manual_seed(0)
    model = ResNet50Embedding().to(device).eval()
    emb = torch.randn(60_000, 128, generator=gen)
    labels = torch.randint(0, 11_000, (60_000,), generator=gen)
    gallery = Gallery(emb, labels, num_classes=11_000, device=device)
    x = torch.rand((args.queries, 3, 224, 224), generator=gen).to(device)
    y = labels[: args.queries].numpy()
    return model, gallery, x, y, {"bf16": True, "channels_last": True}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=2_000)
    p.add_argument("--sigma", type=float, default=0.25)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workload", choices=["digits", "resnet50"], default="digits",
                   help="digits (default; CPU or GPU) or resnet50 (the paper-sized GPU workload: use --n 100000 "
                        "--batch-size 1000 --queries 1)")
    p.add_argument("--nn-precision", choices=["exact", "tf32", "bf16"], default="exact",
                   help="the certifier's nearest-neighbour search (screened modes give identical results)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model of the certifier and of the forward-only floor (the plain-torch "
                        "loop stays eager); the warm-up pays the compilation")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per contender (best is kept)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    model, gallery, x, y, stage = build_workload(args, device)
    if args.compile:
        stage = {**stage, "compile": True}
    total = args.n0 + args.n
    print_hardware(device)
    print(f"workload: {args.workload}, {len(x)} queries, n0={args.n0}, n={args.n}, batch {args.batch_size}, sigma {args.sigma}, "
          f"gallery {len(gallery)} x {gallery.dim}, {gallery.num_classes} classes, model stage {stage}, "
          f"nn precision {args.nn_precision}")

    retriever = SmoothedRetriever(model, gallery, args.sigma, batch_size=args.batch_size, device=device, seed=0,
                                  nn_precision=args.nn_precision, **stage)
    retriever.certify(x[:1], y[:1], n0=args.n0, n=min(args.n, 4 * args.batch_size))  # warm-up (kernels, autotuning)
    # The floor runs the module the certifier runs (compiled with --compile); the plain-torch loop
    # stays eager, as the reference smoothing code is (compiling it would recompile for its odd
    # batch sizes).
    forward_model = retriever._forward

    # 1. forward only: as many batches of the same shape as the certifier runs for these queries
    # (it packs the samples of consecutive queries into full batches).
    batch = torch.randn((args.batch_size,) + tuple(x.shape[1:]), device=device)
    if stage.get("channels_last"):
        batch = batch.contiguous(memory_format=torch.channels_last)
    noisy = [batch] * ((len(x) * total + args.batch_size - 1) // args.batch_size)
    bf16 = bool(stage.get("bf16"))
    forward_only(forward_model, noisy[:2], device, bf16)
    t_forward = min(forward_only(forward_model, noisy, device, bf16) for _ in range(args.repeat))

    sync = sync_for(device)

    # 2. ours and 3. plain torch, alternating, best of --repeat each (the machine may be shared)
    t_ours = t_torch = float("inf")
    for _ in range(args.repeat):
        t, certs = timed(lambda: retriever.certify(x, y, n0=args.n0, n=args.n), sync)
        t_ours = min(t_ours, t)
        t, ref_counts = timed(lambda: plain_torch_certify(model, gallery.embeddings, gallery.labels, gallery.num_classes,
                                                          x, args.n0, args.n, args.batch_size, args.sigma, device,
                                                          bf16, bool(stage.get("channels_last"))), sync)
        t_torch = min(t_torch, t)

    # Correctness: the same smoothed model, different noise streams: the top label must agree
    # wherever it is clear, and vote shares must be statistically close.
    for c, (_, counts) in zip(certs, ref_counts):
        share_ours = c.vote_count / c.vote_n
        share_ref = counts[c.vote_selected] / counts.sum()
        assert abs(share_ours - share_ref) < 0.05, (c.index, share_ours, share_ref)

    samples = len(x) * total
    rows = [("model forward alone", t_forward), ("retrievalguard_fast certify", t_ours), ("plain torch loop", t_torch)]
    print(f"\n  {'contender':<30}{'s/query':>10}{'samples/s':>14}")
    for name, t in rows:
        print(f"  {name:<30}{t / len(x):>10.4f}{samples / t:>14.0f}")
    # Targets (issue 5): digits on the CPU at most 1.3x the forward time; the paper-sized GPU
    # workload at most 5 s per query and at most 5% on top of the forward time.
    target = "<= 1.05x and <= 5 s/query" if args.workload == "resnet50" else "<= 1.3x"
    print(f"\n  ours / forward-only: {t_ours / t_forward:.2f}x   (target {target}); ours {t_ours / len(x):.3f} s/query")
    print(f"  speed-up over plain torch: {t_torch / t_ours:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "device": str(device), "workload": args.workload,
                       "nn_precision": args.nn_precision, "queries": len(x), "n0": args.n0, "n": args.n,
                       "seconds": {n: t for n, t in rows}, "overhead_vs_forward": t_ours / t_forward,
                       "speedup_vs_torch": t_torch / t_ours}, f, indent=2)


if __name__ == "__main__":
    main()
