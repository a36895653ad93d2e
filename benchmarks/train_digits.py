"""Issue 22's targets on the digits: python benchmarks/train_digits.py [--out DIR] [--sigmas 0.25 0.5]

For each sigma, the same small network (the built-in ``mlp`` backbone with a 32-d head: the
shipped digits MLP's shape) is trained with ``train`` on the digits' gallery split (the queries
held out) as
  (a) no noise (--sigma 0),
  (b) noise only (--sigma S),
  (c) noise and consistency, lambda in {1, 5, 10, 20}, 2 noisy copies,
  (d) the no-noise model (a) behind a denoiser trained for it at S (``train
      --denoiser-objective stability``, a 5-layer DnCNN of 32 channels; denoised smoothing),
and every model is certified with ``certify`` at S (fixed n, --num-samples, so average radii are exact) on the
360 query digits against the gallery split; (a) needs --allow-sigma-mismatch, and so does the
mismatch row (the sigma-0.25 model (b) certified at 0.5). The shipped model of S
(scripts/train_digits_model.py's recipe, a cosine-softmax loss) is certified beside them. One
``compare`` of each sigma's folders gives the table; this script prints, per run: clean Recall@1,
certified Recall@1 per radius (vote, soft Gaussian), average certified radius, mean |F_hat| and
training time. Everything runs through the command line, as a user would.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

RADII = "0,0.1,0.25,0.5,0.75,1"
RECIPE = ["--backbone", "mlp", "--embedding-dim", "32", "--epochs", "40", "--batch-size", "112", "--lr", "1e-3",
          "--device", "cpu", "--quiet"]
CERTIFY = ["--n0", "100", "--alpha", "0.001", "--mode", "fixed-n", "--radii", RADII, "--batch-size", "2000",
           "--device", "cpu", "--quiet"]


def rgf(*args):
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "retrievalguard_fast", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="train-digits-bench")
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--lambdas", type=float, nargs="+", default=[1, 5, 10, 20])
    p.add_argument("--num-samples", type=int, default=10000, help="certification samples per query (fixed n)")
    p.add_argument("--seed", type=int, default=0, help="train's --seed (folders of seed s > 0 end in -seed<s>)")
    p.add_argument("--no-denoiser", action="store_true", help="skip (d)")
    args = p.parse_args()
    CERTIFY.extend(["--num-samples", str(args.num_samples)])
    RECIPE.extend(["--seed", str(args.seed)])
    tag = f"-seed{args.seed}" if args.seed else ""
    import torch

    from retrievalguard_fast.demo import default_weights_path, load_digits_split

    os.makedirs(args.out, exist_ok=True)
    print(f"hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    d = load_digits_split()
    train, queries = os.path.join(args.out, "train.npz"), os.path.join(args.out, "queries.npz")
    np.savez(train, x=d.gallery_x, labels=d.gallery_y)
    np.savez(queries, x=d.query_x, labels=d.query_y)
    data = ["--queries", queries, "--gallery", train]
    folders = {}
    for sigma in args.sigmas:
        variants = [("a-no-noise", 0.0, []), ("b-noise", sigma, [])]
        variants += [(f"c-consistency{lam:g}", sigma, ["--consistency", f"{lam:g}", "--noise-copies", "2"])
                     for lam in args.lambdas]
        for name, train_sigma, extra in variants:
            model = os.path.join(args.out, f"model-s{sigma:g}-{name}{tag}")
            if not os.path.exists(os.path.join(model, "model.pt")):
                rgf("train", "--data", train, "--sigma", f"{train_sigma:g}", *RECIPE, *extra, "--out", model, "--resume")
            seconds = sum(e["seconds"] for e in json.load(open(os.path.join(model, "train.json")))["history"])
            cert = os.path.join(args.out, f"s{sigma:g}-{name}{tag}")
            if not os.path.exists(os.path.join(cert, "summary.json")):
                rgf("certify", "--model", os.path.join(model, "model.pt"), *data, "--sigma", f"{sigma:g}", *CERTIFY,
                    "--allow-sigma-mismatch", "--out", cert, "--resume")
            folders.setdefault(sigma, []).append((cert, seconds))
        if not args.no_denoiser:  # (d): the no-noise model behind a denoiser trained for it at sigma
            encoder = os.path.join(args.out, f"model-s{sigma:g}-a-no-noise{tag}", "model.pt")
            den = os.path.join(args.out, f"denoiser-s{sigma:g}{tag}")
            if not os.path.exists(os.path.join(den, "denoiser.pt")):
                rgf("train", "--data", train, "--sigma", f"{sigma:g}", "--denoiser-objective", "stability", "--encoder",
                    encoder, "--backbone", "dncnn-5x32", "--epochs", "40", "--batch-size", "112", "--lr", "1e-3",
                    "--seed", str(args.seed), "--device", "cpu", "--quiet", "--out", den, "--resume")
            seconds = sum(e["seconds"] for e in json.load(open(os.path.join(den, "train.json")))["history"])
            cert = os.path.join(args.out, f"s{sigma:g}-d-denoised-a{tag}")
            if not os.path.exists(os.path.join(cert, "summary.json")):
                rgf("certify", "--model", encoder, "--denoiser", os.path.join(den, "denoiser.pt"), *data, "--sigma",
                    f"{sigma:g}", *CERTIFY, "--out", cert, "--resume")
            folders[sigma].append((cert, seconds))
        # The shipped recipe's model, as a factory-free TorchScript file.
        shipped = os.path.join(args.out, f"shipped-s{sigma:g}.pt")
        if not os.path.exists(shipped):
            from retrievalguard_fast.demo import load_default_model

            assert default_weights_path(sigma).exists(), f"no shipped model for sigma {sigma}"
            torch.jit.save(torch.jit.trace(load_default_model(sigma).eval(), torch.zeros(2, 1, 8, 8)), shipped)
        cert = os.path.join(args.out, f"s{sigma:g}-shipped")
        if not os.path.exists(os.path.join(cert, "summary.json")):
            rgf("certify", "--model", shipped, *data, "--sigma", f"{sigma:g}", *CERTIFY, "--out", cert, "--resume")
        folders[sigma].append((cert, None))
    if 0.25 in args.sigmas and 0.5 in args.sigmas:  # the mismatch: a sigma-0.25 model certified at 0.5
        cert = os.path.join(args.out, f"s0.5-b-noise-trained0.25{tag}")
        if not os.path.exists(os.path.join(cert, "summary.json")):
            rgf("certify", "--model", os.path.join(args.out, f"model-s0.25-b-noise{tag}", "model.pt"), *data, "--sigma", "0.5",
                *CERTIFY, "--allow-sigma-mismatch", "--out", cert, "--resume")
        folders[0.5].append((cert, None))
    for sigma, runs in folders.items():
        print(f"\n===== sigma {sigma:g} =====", flush=True)
        subprocess.run([sys.executable, "-m", "retrievalguard_fast", "compare", *[c for c, _ in runs], "--radii", RADII,
                        "--out", os.path.join(args.out, f"compare-s{sigma:g}")], check=True)
        print("\ntraining seconds: " + ", ".join(f"{os.path.basename(c)} {s:.1f}" for c, s in runs if s is not None))
        comparison = json.load(open(os.path.join(args.out, f"compare-s{sigma:g}", "summary.json")))
        base = next(r for r in comparison["runs"] if r["name"].endswith("b-noise" + tag))
        for r in comparison["runs"]:
            acr, ref = r["average_certified_radius"], base["average_certified_radius"]
            print(f"{r['name']}: ACR vote {acr['vote']:.4f} ({acr['vote'] / ref['vote'] - 1:+.1%} vs b), soft "
                  f"{acr['gaussian']:.4f} ({acr['gaussian'] / max(ref['gaussian'], 1e-12) - 1:+.1%} vs b), clean "
                  f"{r['clean_recall_at_1']:.3f} ({100 * (r['clean_recall_at_1'] - base['clean_recall_at_1']):+.1f} pt)")


if __name__ == "__main__":
    main()
