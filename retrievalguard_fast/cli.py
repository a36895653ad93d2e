"""Command line: ``python -m retrievalguard_fast {demo,certify,attack,bench,info}``.

``demo`` certifies the embedded default (scikit-learn's digits and a shipped noise-trained
model); ``certify`` runs a user's model and data; ``attack`` attacks them (:mod:`~.attack`,
the empirical upper bound beside the certificates). ``demo`` and ``certify`` certify into
``--out`` through :func:`~.runstore.certify_to_folder` (run.json, results.jsonl, summary.json /
.csv, the plot; see :mod:`~.runstore`), ``attack`` attacks into it through
:func:`~.attack.attack_to_folder`; each prints its table of :mod:`~.report`. This module only
parses arguments and calls those.

Errors in the input exit with status 2 and one line saying what is wrong (``--debug`` shows the
traceback); Ctrl-C exits with status 130, keeping every result so far.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import List, Optional, Sequence

from .bench import NAMES as _BENCHMARKS
from .errors import InputError
from .runstore import DEFAULT_RADII, RESULTS, RunInterrupted

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


def _certify(args, retriever, x, labels, exclude, identity: dict) -> dict:
    from .report import print_table
    from .runstore import certify_to_folder

    summary = certify_to_folder(args.out, retriever, x, labels, identity=identity, exclude=exclude, n0=args.n0,
                                n=args.n, alpha=args.alpha, ks=args.recall_k, mode=args.mode, radii=args.radii,
                                first_checkpoint=args.first_checkpoint, resume=args.resume, quiet=args.quiet)
    print_table(summary)
    return summary


def _retriever(args, model, gallery):
    from .smoothing import SmoothedRetriever

    return SmoothedRetriever(model, gallery, args.sigma, device=gallery.device, batch_size=args.batch_size,
                             seed=args.seed, bf16=args.bf16, channels_last=args.channels_last, compile=args.compile,
                             nn_precision=args.nn_precision)


def cmd_demo(args) -> int:
    from .digits import default_weights_path, load_default_model, load_digits_split
    from .errors import out_of_memory_is_input_error
    from .gallery import Gallery
    from .inputs import resolve_device
    from .report import device_text

    device = resolve_device(args.device)
    # Rerunning the demo into the same folder continues (or just re-reports) the same run: its
    # results are identical by construction. Other parameters into that folder are still refused.
    args.resume = True
    data = load_digits_split()
    model = load_default_model(args.sigma).to(device)
    shipped = default_weights_path(args.sigma).exists()
    with out_of_memory_is_input_error("embedding the gallery images", "--batch-size"):
        gallery = Gallery.from_model(model, data.gallery_x, data.gallery_y, device=device)
    m = len(data.query_x) if args.queries is None else min(args.queries, len(data.query_x))
    if not args.quiet:
        print(f"demo: digits (scikit-learn), gallery {len(gallery)} images, {m} queries, "
              f"{'shipped' if shipped else 'freshly trained'} MLP trained at sigma={args.sigma}; "
              f"n0={args.n0}, n={args.n}{' (cap)' if args.mode == 'sequential' else ''}, alpha={args.alpha}, "
              f"mode {args.mode}, device {device_text(device)}", file=sys.stderr)
    identity = {"model": f"digits-mlp-sigma{args.sigma:g}" + ("" if shipped else "-trained"),
                "data": "sklearn-digits-split0"}
    _certify(args, _retriever(args, model, gallery), data.query_x[:m], data.query_y[:m], None, identity)
    print(f"\nwrote {os.path.join(args.out, RESULTS)}, summary.json, summary.csv, certified_recall.png")
    return 0


def _load_user_inputs(args, device):
    """The model, queries and gallery of ``--model --queries --gallery`` (certify and attack),
    checked, with the identity that run.json records for them: the one place the data options
    are read."""
    from .inputs import file_digest, load_gallery, load_model, load_queries

    x, labels, exclude = load_queries(args.queries)
    model, model_id = load_model(args.model)
    gallery = load_gallery(args.gallery, model, device, args.batch_size, labels)
    if exclude is not None and len(exclude) and (exclude.min() < -1 or exclude.max() >= len(gallery)):
        raise InputError(f"--queries {args.queries}: exclude values must be in [-1, {len(gallery) - 1}] (gallery size {len(gallery)})")
    identity = {"model": model_id, "queries_sha256": file_digest(args.queries),
                "gallery_sha256": file_digest(args.gallery)}
    return model, x, labels, exclude, gallery, identity


def cmd_certify(args) -> int:
    from .inputs import resolve_device

    device = resolve_device(args.device)
    model, x, labels, exclude, gallery, identity = _load_user_inputs(args, device)
    if max(args.recall_k) > len(gallery):
        raise InputError(f"--recall-k {max(args.recall_k)} exceeds the gallery size {len(gallery)}")
    _certify(args, _retriever(args, model, gallery), x, labels, exclude, identity)
    return 0


def cmd_attack(args) -> int:
    from .attack import AttackConfig, attack_to_folder
    from .inputs import resolve_device
    from .report import print_attack_table

    device = resolve_device(args.device)
    model, x, labels, exclude, gallery, identity = _load_user_inputs(args, device)
    lo, hi = args.clip
    if float(x.min()) < lo or float(x.max()) > hi:
        raise InputError(f"--queries {args.queries}: values lie in [{float(x.min()):g}, {float(x.max()):g}], outside "
                         f"--clip {lo:g},{hi:g}; pass the bounds of the model's input space with --clip")
    config = AttackConfig(radii=tuple(args.radii), models=tuple(args.models), steps=args.steps, eot=args.eot,
                          restarts=args.restarts, step_size=args.step_size, temperature=args.temperature,
                          clip=(lo, hi), n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed)
    summary = attack_to_folder(args.out, _retriever(args, model, gallery), x, labels, identity=identity, config=config,
                               exclude=exclude, certified=args.certified, resume=args.resume, quiet=args.quiet)
    print_attack_table(summary, color=sys.stdout.isatty())
    print(f"\nwrote {os.path.join(args.out, RESULTS)}, summary.json, summary.csv, attack_vs_certified.png")
    # A certified query broken inside its radius is a soundness failure: a non-zero status.
    return 1 if summary.get("certified", {}).get("alarm", {}).get("broken_inside_radius") else 0


def cmd_bench(args) -> int:
    from .bench import run as run_bench

    rest = list(args.bench_args)
    name = rest.pop(0) if rest and not rest[0].startswith("-") else "all"
    if name not in BENCH_NAMES:
        raise InputError(f"bench: unknown benchmark {name!r}; expected one of {', '.join(BENCH_NAMES)}")
    for one in (["kernels", "certify"] if name == "all" else [name]):
        print(f"\n===== bench {one} =====", flush=True)
        run_bench(one, rest)
    return 0


def cmd_info(_args) -> int:
    from . import __version__, build_info

    print(json.dumps({"version": __version__, **build_info()}, indent=2))
    return 0


def _add_run_options(p: argparse.ArgumentParser, *, sigma: Optional[float], out: Optional[str]) -> None:
    """The options of a certification run (demo, certify)."""
    _add_smoothing_options(p, sigma=sigma, out=out)
    p.add_argument("--mode", choices=["sequential", "fixed-n"], default="sequential",
                   help="sequential (default): stop each query once every --radii value is certified or out of "
                        "reach (bounds at alpha/checkpoints); fixed-n: always draw n samples")
    p.add_argument("--first-checkpoint", type=_positive_int, default=1000,
                   help="sequential mode: the first checkpoint of the doubling schedule (default 1000)")
    p.add_argument("--recall-k", type=_int_list, default=[1], help="K values for certified Recall@K, e.g. 1,5 (default 1)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """The user's model and data (certify, attack); read by :func:`_load_user_inputs`."""
    p.add_argument("--model", required=True, help="a TorchScript file (torch.jit.save) or 'package.module:factory'")
    p.add_argument("--queries", required=True, help=".npz with x (M, *input_shape), labels (M,), optional exclude (M,)")
    p.add_argument("--gallery", required=True, help=".npz with labels (N,) and embeddings (N, k) or images x (N, *input_shape)")


def _add_smoothing_options(p: argparse.ArgumentParser, *, sigma: Optional[float], out: Optional[str],
                           n0: int = 100, n0_help: str = "selection samples per query") -> None:
    """The smoothed model and its sampling, the radii and the run folder (demo, certify, attack)."""
    p.add_argument("--sigma", type=_positive_float, default=sigma, required=sigma is None,
                   help="noise standard deviation in the model's input space" + (f" (default {sigma})" if sigma else ""))
    p.add_argument("--n0", type=_positive_int, default=n0, help=f"{n0_help} (default {n0})")
    p.add_argument("--n", type=_positive_int, default=10_000,
                   help="certification samples per query; the cap in sequential mode (default 10000)")
    p.add_argument("--alpha", type=_unit_interval, default=0.001, help="failure probability per query (default 0.001)")
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
    p.add_argument("--nn-precision", choices=["exact", "tf32", "bf16"], default="exact",
                   help="nearest-neighbour search: exact float32 (default), or screened by a TF32/bf16 tensor-core "
                        "matmul and verified (identical results; faster on GPUs with large galleries)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _models(text: str) -> List[str]:
    from .attack import MODELS

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
                   help="PGD starts per radius: the clean point, then random points in the ball (default 2)")
    p.add_argument("--step-size", type=_positive_float, default=2.5, help="PGD step = step-size x radius / steps (default 2.5)")
    p.add_argument("--temperature", type=_positive_float, default=0.05,
                   help="temperature of the vote model's softmax surrogate over -|e - g|^2 (default 0.05)")
    p.add_argument("--clip", type=_clip, default=(0.0, 1.0), help="pixel bounds low,high of the input space (default 0,1)")
    p.add_argument("--certified", default=None, metavar="DIR",
                   help="a certify results folder over the same queries: plot certified beside empirical Recall@1 and "
                        "count certified queries broken inside their radius")


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
    demo.set_defaults(func=cmd_demo)
    cert = sub.add_parser("certify", help="certify your own model and data")
    _add_data_options(cert)
    _add_run_options(cert, sigma=None, out=None)
    cert.set_defaults(func=cmd_certify)
    attack = sub.add_parser("attack", help="empirical robustness: PGD+EOT against the smoothed and base models",
                            description="l2 PGD with expectation over the noise against the soft and vote smoothed "
                                        "models and the base model at each --radii value; a query is broken only if "
                                        "fresh noise confirms the changed prediction at level alpha. --n0/--n are the "
                                        "samples of each re-estimate, --seed seeds the attack. Exit status 1 if a "
                                        "--certified query is broken inside its certified radius.")
    _add_data_options(attack)
    _add_smoothing_options(attack, sigma=None, out=None, n0=1000,
                           n0_help="samples of each re-estimate that choose the vote's rival and screen out "
                                   "points that cannot be broken; --n more test it")
    _add_attack_options(attack)
    attack.set_defaults(func=cmd_attack)
    bench = sub.add_parser("bench", help="benchmarks against numpy/torch/faiss baselines, measured in the same run",
                           usage="python -m retrievalguard_fast bench [{all,kernels,certify,sequential,model-stage}] [options]",
                           description="Run a benchmark; options after the name go to it (e.g. bench kernels --help). "
                                       "Without a name (options alone, e.g. bench --device cpu) runs all: kernels, "
                                       "then certify, each with those options.")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="the benchmark's name, then its options")
    bench.set_defaults(func=cmd_bench, debug=False)
    info = sub.add_parser("info", help="what was compiled in, and which devices are usable")
    info.add_argument("--debug", action="store_true")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"] and argv[1:2] not in (["-h"], ["--help"]):
        # Everything after "bench" belongs to the benchmarks (argparse would take a leading
        # option such as --device for its own and refuse it).
        args = argparse.Namespace(func=cmd_bench, bench_args=argv[1:], debug=False)
    else:
        args = parser.parse_args(argv)
    try:
        return args.func(args)
    except RunInterrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    except InputError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        if args.debug:
            raise
        print(f"error: {str(exc).splitlines()[0]} (rerun with --debug for the traceback)", file=sys.stderr)
        return 2
