"""The command line's parser: argument types (each bad value one line naming what was expected)
and the options of each command, grouped as the commands share them."""

from __future__ import annotations

import argparse
import math
from typing import List, Optional

from ..attack import MODELS
from ..bench import NAMES as _BENCHMARKS
from ..data import layouts_help
from ..kernels.screen import NN_PRECISIONS
from ..smoothing import BENNETT, DEFAULT_RADII, FIXED, SEQUENTIAL, SOFT_BOUNDS

BENCH_NAMES = ("all",) + _BENCHMARKS


# ---------------------------------------------------------------------- argument types


def _number(convert, ok, expected: str):
    """An argparse type: ``convert`` the text, then require ``ok(value)``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if convert is int else 'a number'}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
_unit_interval = _number(float, lambda v: 0.0 < v < 1.0, "a number in (0, 1)")
_positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
_seed = _number(int, lambda v: 0 <= v < 2**64, "an integer in [0, 2**64)")
_count = _number(int, lambda v: v >= 0, "an integer >= 0")


def _int_list(text: str) -> List[int]:
    try:
        values = sorted(set(int(t) for t in text.split(",") if t.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,5, got {text!r}") from None
    if not values or values[0] < 1:
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _radii(text: str) -> List[float]:
    try:
        values = sorted(set(float(t) for t in text.split(",") if t.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated radii like 0,0.25,0.5, got {text!r}") from None
    if not values or values[0] < 0 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite radii >= 0, got {text!r}")
    return values


# ---------------------------------------------------------------------- commands


# ---------------------------------------------------------------------- options


def _add_run_options(p: argparse.ArgumentParser, *, sigma: Optional[float], out: Optional[str]) -> None:
    """The options of a certification run (demo, certify)."""
    _add_smoothing_options(p, sigma=sigma, out=out)
    p.add_argument("--mode", choices=[SEQUENTIAL, FIXED], default=SEQUENTIAL,
                   help="sequential (default): stop each query once every --radii value is certified or out of "
                        "reach (bounds at alpha/checkpoints); fixed-n: always draw n samples")
    p.add_argument("--first-checkpoint", type=_positive_int, default=1000,
                   help="sequential mode: the first checkpoint of the doubling schedule (default 1000)")
    p.add_argument("--recall-k", type=_int_list, default=[1], help="K values for certified Recall@K, e.g. 1,5 (default 1)")


def _add_smoothing_options(p: argparse.ArgumentParser, *, sigma: Optional[float], out: Optional[str],
                           n0: int = 100, n0_help: str = "selection samples per query",
                           n_help: str = "certification samples per query; the cap in sequential mode") -> None:
    """The smoothed model and its sampling, the radii and the run folder (demo, certify, attack)."""
    p.add_argument("--sigma", type=_positive_float, default=sigma, required=sigma is None,
                   help="noise standard deviation in the model's input space" + (f" (default {sigma})" if sigma else ""))
    p.add_argument("--n0", type=_positive_int, default=n0, help=f"{n0_help} (default {n0})")
    # --num-samples, not --n, in documentation: torchrun's own parser reads abbreviations of its
    # options anywhere on its command line, and "--n" is ambiguous there (--nnodes, --nproc-per-node).
    p.add_argument("--num-samples", "--n", dest="n", type=_positive_int, default=10_000,
                   help=f"{n_help} (default 10000; --n is an alias, not usable under torchrun)")
    p.add_argument("--alpha", type=_unit_interval, default=0.001, help="failure probability per query (default 0.001)")
    p.add_argument("--soft-bound", choices=list(SOFT_BOUNDS), default=BENNETT,
                   help="Monte-Carlo bound behind the soft radii: bennett (default; variance-adaptive, never looser) "
                        "or mcdiarmid (RetrievalGuard's published form)")
    p.add_argument("--batch-size", type=_positive_int, default=2000, help="noisy samples per model call (default 2000)")
    p.add_argument("--seed", type=_seed, default=0, help="noise seed (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--radii", type=_radii, default=list(DEFAULT_RADII),
                   help="radii for the summary table (default 0,0.05,0.1,0.25,0.5,0.75,1)")
    p.add_argument("--out", default=out, required=out is None, help="output folder" + (f" (default {out})" if out else ""))
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out (the demo always does)")
    p.add_argument("--bf16", action="store_true", help="run the model under bfloat16 autocast (a different base model)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format for the model")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--nn-precision", choices=list(NN_PRECISIONS), default="exact",
                   help="nearest-neighbour search: exact float32 (default), or screened by a TF32/bf16 tensor-core "
                        "matmul and verified (identical results; faster on GPUs with large galleries)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a TorchScript file (torch.jit.save) or 'package.module:factory'")
    p.add_argument("--denoiser", default=None,
                   help="a model (TorchScript file or module:factory) applied to each noisy sample before --model "
                        "(denoised smoothing): the certificate is for the composite; run.json records its identity")
    p.add_argument("--allow-sigma-mismatch", action="store_true",
                   help="smooth a model (or --denoiser) at another --sigma than the one it records it was trained at (train's "
                        "model.pt, a factory module's training_sigma)")


def _add_group_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group-timeout", type=_positive_float, default=1800.0,
                   help="under torchrun: seconds a rank waits for the others (rank 0 embedding the gallery, the "
                        "last ranks finishing) before the run stops (default 1800)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """Where a run's queries and gallery come from, and how images are read (see :func:`load_data`)."""
    p.add_argument("--queries", help="the queries: .npz with x (M, *input_shape), labels (M,), optional exclude (M,); "
                                     "or folder:DIR (one subfolder per class) or list:FILE (CSV path,label)")
    p.add_argument("--gallery", help=".npz with labels (N,) and embeddings (N, k) or images x (N, *input_shape); "
                                     "or folder:DIR or list:FILE (the same source as --queries: leave-one-out)")
    p.add_argument("--dataset", metavar="NAME:ROOT",
                   help="a benchmark in its published layout, instead of --queries/--gallery: " + layouts_help())
    p.add_argument("--every", type=_positive_int, default=1, help="take every K-th query (default 1: all)")
    p.add_argument("--max-queries", type=_positive_int, default=None,
                   help="take at most the first N queries (after --every); the gallery stays whole")
    p.add_argument("--resize", type=_count, default=256,
                   help="images: resize the shorter side to this many pixels (default 256; 0: keep)")
    p.add_argument("--crop", type=_count, default=224, help="images: centre-crop to this square (default 224; 0: none)")
    p.add_argument("--no-leave-one-out", action="store_true",
                   help="when --queries and --gallery are the same data (by identity: the same files or bytes, "
                        "however spelled), keep each query's own gallery row (default: leave it out)")
    p.add_argument("--verify-data", action="store_true",
                   help="images: identify them by a digest of every file's bytes (reads them all) instead of their "
                        "paths, sizes and modification times, which miss a same-size replacement that kept its "
                        "mtime (cp -p, rsync -a)")
    p.add_argument("--workers", type=_count, default=None,
                   help="images: DataLoader worker processes decoding them (default: the cores, at most 8; 0: none)")


def _models(text: str) -> List[str]:
    values = [t.strip() for t in text.split(",") if t.strip()]
    if not values or any(v not in MODELS for v in values):
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {','.join(MODELS)}, got {text!r}")
    return [m for m in MODELS if m in values]


def _clip(text: str):
    try:
        lo, hi = (float(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers low,high like 0,1, got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise argparse.ArgumentTypeError(f"expected finite bounds with low < high, got {text!r}")
    return lo, hi


def _add_attack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", type=_models, default=["vote", "soft", "base"],
                   help="models to attack: a comma-separated subset of vote,soft,base (default all three)")
    p.add_argument("--steps", type=_positive_int, default=20, help="PGD steps per restart (default 20)")
    p.add_argument("--eot", type=_positive_int, default=32, help="noise draws averaged per PGD step (default 32)")
    p.add_argument("--restarts", type=_positive_int, default=2,
                   help="PGD candidates per radius ascending the margin: the clean point, then random points in "
                        "the ball (default 2); one more from the clean point against all rival classes")
    p.add_argument("--targets", type=_count, default=2,
                   help="targeted PGD passes per radius, one against each of the rival labels nearest to the clean "
                        "point (default 2; 0: none)")
    p.add_argument("--step-size", type=_positive_float, default=2.5, help="PGD step = step-size x radius / steps (default 2.5)")
    p.add_argument("--temperature", type=_positive_float, default=0.05,
                   help="temperature of the vote model's softmax surrogate over -|e - g|^2 (default 0.05)")
    p.add_argument("--clip", type=_clip, default=(0.0, 1.0), help="pixel bounds low,high of the input space (default 0,1)")
    p.add_argument("--certified", default=None, metavar="DIR",
                   help="a certify results folder over the same queries: plot certified beside empirical Recall@1 and "
                        "count certified queries broken inside their radius")


_nonneg_float = _number(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """``train``: the data (the sources certify reads), the model, the recipe, the run folder."""
    from ..training import LOSSES, OBJECTIVES

    p.add_argument("--data", help="training images: .npz with x (N, *input_shape) and labels (N,), folder:DIR (one "
                                  "subfolder per class) or list:FILE (CSV path,label)")
    p.add_argument("--dataset", metavar="NAME:ROOT",
                   help="a benchmark's training split (its test split for validation): " + layouts_help())
    p.add_argument("--val", help="validation images (any --data source): clean Recall@1 after each epoch (default: "
                                 "the --dataset test split, else the training images, leave-one-out)")
    p.add_argument("--resize", type=_count, default=256, help="images: resize the shorter side (default 256; 0: keep)")
    p.add_argument("--crop", type=_count, default=224, help="images: centre-crop to this square (default 224; 0: none)")
    p.add_argument("--workers", type=_count, default=None, help="images: DataLoader workers (default: cores, at most 8)")
    p.add_argument("--sigma", type=_nonneg_float, required=True,
                   help="Gaussian noise in [0, 1] pixel units, as certify's --sigma (0: no noise)")
    # Defaults of None are filled in by the command (commands.train, TrainConfig's defaults): a
    # denoiser run refuses the embedding model's options instead of ignoring them.
    p.add_argument("--backbone", default=None,
                   help="mlp, cnn (small built-ins, default cnn), module:factory, or torchvision:NAME with --weights; "
                        "with --denoiser-objective the denoiser: dncnn (default; 17 layers of 64 channels), "
                        "dncnn-DxW (D layers of W channels) or module:factory")
    p.add_argument("--weights", metavar="FILE", help="a state_dict for the backbone (nothing is downloaded)")
    p.add_argument("--embedding-dim", type=_positive_int, default=None, help="embedding size (default 128)")
    p.add_argument("--loss", choices=list(LOSSES), default=None,
                   help="margin (default: RetrievalGuard's recipe), multi-similarity or contrastive")
    p.add_argument("--epochs", type=_positive_int, default=40, help="epochs, each visiting every image once (default 40)")
    p.add_argument("--batch-size", type=_positive_int, default=112, help="images per batch (default 112)")
    p.add_argument("--per-class", type=_positive_int, default=None, help="images of a class together in a batch (default 2)")
    p.add_argument("--lr", type=_positive_float, default=1e-5, help="Adam's learning rate for the model (default 1e-5)")
    p.add_argument("--loss-lr", type=_positive_float, default=None,
                   help="learning rate of the loss's parameters, the margin loss's betas (default 5e-4)")
    p.add_argument("--freeze-bn", action="store_true", help="keep BatchNorm layers in eval mode (Roth et al.)")
    p.add_argument("--consistency", type=_nonneg_float, default=None, metavar="LAMBDA",
                   help="weight of the spread penalty 1 - |F|^2 of the noisy copies (needs --noise-copies >= 2)")
    p.add_argument("--noise-copies", type=_positive_int, default=None, metavar="M", help="noisy copies per image (default 1)")
    p.add_argument("--denoiser-objective", choices=list(OBJECTIVES), default=None,
                   help="train a denoiser for --encoder instead of an embedding model (Salman et al.'s stability "
                        "objective on embeddings; no labels used but for validation); writes --out/denoiser.pt for "
                        "certify --denoiser")
    p.add_argument("--encoder", metavar="MODEL", default=None,
                   help="with --denoiser-objective: the frozen embedding model (TorchScript file or module:factory, "
                        "as certify --model)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of weights, batches and noise (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", required=True, help="output folder: model.pt (or denoiser.pt), train.json, checkpoint.pt")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is reported in one line (exit status 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m retrievalguard_fast", description="Certified (provably robust) 1-NN retrieval.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser("demo", help="certify the embedded default: scikit-learn digits and a shipped model")
    _add_run_options(demo, sigma=0.25, out="retrievalguard-demo")
    demo.add_argument("--queries", type=_positive_int, default=None, help="certify only the first N queries")
    cert = sub.add_parser("certify", help="certify your own model and data")
    _add_model_option(cert)
    _add_data_options(cert)
    _add_run_options(cert, sigma=None, out=None)
    _add_group_options(cert)
    attack = sub.add_parser("attack", help="empirical robustness: PGD+EOT against the smoothed and base models",
                            description="l2 PGD with expectation over the noise against the soft and vote smoothed "
                                        "models and the base model at each --radii value; a query is broken only if "
                                        "fresh noise confirms the changed prediction at level alpha. --n0 and "
                                        "--num-samples are the samples of each re-estimate, --seed seeds the attack. "
                                        "Exit status 1 if a --certified query is broken inside its certified radius.")
    _add_model_option(attack)
    _add_data_options(attack)
    _add_smoothing_options(attack, sigma=None, out=None, n0=1000,
                           n0_help="samples of each re-estimate that choose the vote's rival and screen out "
                                   "points that cannot be broken; --num-samples more test it",
                           n_help="samples of each re-estimate that test a break")
    _add_attack_options(attack)
    train = sub.add_parser("train", help="train an embedding model under the noise it will be certified with",
                           description="Metric learning under Gaussian noise (RetrievalGuard's recipe by default), "
                                       "optionally with consistency regularisation; writes --out/model.pt (TorchScript "
                                       "for certify --model, carrying its sigma) and --out/train.json.")
    _add_train_options(train)
    compare = sub.add_parser("compare", help="certified Recall@1 of several certify folders in one plot and table",
                             description="Reads certify results folders; writes --out/compare.png (certified Recall@1 "
                                         "against radius, vote and soft, and each run's distribution of per-query "
                                         "noisy Recall@1), compare.md, compare.tex, summary.json and summary.csv, "
                                         "and prints the table.")
    compare.add_argument("folders", nargs="+", metavar="DIR", help="certify results folders")
    compare.add_argument("--out", required=True, help="output folder")
    compare.add_argument("--radii", type=_radii, default=list(DEFAULT_RADII),
                         help="radii of the table (default 0,0.05,0.1,0.25,0.5,0.75,1)")
    compare.add_argument("--debug", action="store_true", help="show tracebacks")
    bench = sub.add_parser("bench", help="benchmarks against numpy/torch/faiss baselines, measured in the same run",
                           usage="python -m retrievalguard_fast bench [{all,kernels,certify,sequential,model-stage,data}] [options]",
                           description="Run a benchmark; options after the name go to it (e.g. bench kernels --help). "
                                       "Without a name (options alone, e.g. bench --device cpu) runs all: kernels, "
                                       "then certify, each with those options.")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="the benchmark's name, then its options")
    bench.set_defaults(debug=False)
    info = sub.add_parser("info", help="what was compiled in, and which devices are usable")
    info.add_argument("--debug", action="store_true")
    return parser
