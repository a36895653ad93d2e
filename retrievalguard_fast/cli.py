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
import contextlib
import json
import math
import os
import sys
from typing import List, Optional, Sequence

from .bench import NAMES as _BENCHMARKS
from .distributed import GroupStopped, launched
from .errors import InputError
from .runstore import DEFAULT_RADII, RESULTS, RunInterrupted
from .stats import BENNETT, SOFT_BOUNDS

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


def _certify(args, retriever, x, labels, exclude, identity: dict, indices=None, folder=None, group=None):
    from .report import print_table
    from .runstore import certify_to_folder

    summary = certify_to_folder(args.out if folder is None else folder, retriever, x, labels, identity=identity,
                                exclude=exclude, indices=indices, n0=args.n0, n=args.n, alpha=args.alpha,
                                ks=args.recall_k, mode=args.mode, radii=args.radii,
                                first_checkpoint=args.first_checkpoint, soft_bound=args.soft_bound,
                                resume=args.resume, quiet=args.quiet, group=group)
    if summary is not None:  # None on the ranks other than 0 of a torchrun group
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

    if launched():
        raise InputError("demo runs in one process; under torchrun use certify (see README, 'Across GPUs and "
                         "machines')")
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


def load_data(args):
    """The data options of :func:`_add_data_options` -> :class:`~.inputs.RunData`."""
    from .inputs import load_run_data

    return load_run_data(queries=args.queries, gallery=args.gallery, dataset=args.dataset, every=args.every,
                         max_queries=args.max_queries, resize=args.resize, crop=args.crop, workers=args.workers)


def cmd_certify(args) -> int:
    from .inputs import load_model, resolve_device
    from .runstore import RunFolder

    device = resolve_device(args.device)
    with _group(args) as group:
        if group is not None:
            device = group.rank_device(device)
        data = load_data(args)
        model, model_id = load_model(args.model)
        if max(args.recall_k) > data.gallery_size:
            raise InputError(f"--recall-k {max(args.recall_k)} exceeds the gallery size {data.gallery_size}")
        rank = None if group is None else group.rank
        # The folder is held from here on (by rank 0 for a group): the gallery embeddings are
        # cached in it, computed once by rank 0 and read there by the other ranks.
        with RunFolder(args.out, rank=rank, world=1 if group is None else group.world) as folder:
            if rank == 0:
                group.mark_folder(args.out)
            elif rank:
                group.wait_announced("gallery", "rank 0 to lock --out and embed the gallery")
                group.check_folder(args.out)
            gallery = data.build_gallery(model, model_id, device, args.batch_size, folder=folder,
                                         quiet=args.quiet or bool(rank))
            if rank == 0:
                group.announce("gallery")
            identity = {"model": model_id, **data.identity}
            _certify(args, _retriever(args, model, gallery), data.queries, data.labels, data.exclude, identity,
                     indices=data.indices, folder=folder, group=group)
    return 0


@contextlib.contextmanager
def _group(args):
    """This process's :class:`~.distributed.Group` under torchrun (None otherwise). A failure
    here is published to the other ranks, which then stop instead of waiting for this one."""
    if not launched():
        yield None
        return
    from .distributed import Group

    group = Group.join(args.group_timeout)
    try:
        yield group
    except GroupStopped:
        raise
    except BaseException as exc:
        group.fail(_one_line(exc))
        raise


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text if isinstance(exc, (InputError, ValueError, TypeError)) else f"{type(exc).__name__}: {text}"


def _rank() -> str:
    """``"rank R: "`` under torchrun, where every rank's errors share one console."""
    return f"rank {os.environ['RANK']}: " if launched() else ""


def cmd_attack(args) -> int:
    from .attack import AttackConfig, attack_to_folder, check_clip
    from .inputs import load_model, resolve_device
    from .report import print_attack_table
    from .runstore import RunFolder

    if launched():
        raise InputError("attack runs in one process: start it with python -m retrievalguard_fast, not torchrun")
    device = resolve_device(args.device)
    data = load_data(args)
    if not hasattr(data.queries, "iter_chunks"):  # an array: checked before any work (images: as read)
        check_clip(data.queries, args.clip, f"--queries {args.queries}")
    model, model_id = load_model(args.model)
    config = AttackConfig(radii=tuple(args.radii), models=tuple(args.models), steps=args.steps, eot=args.eot,
                          restarts=args.restarts, step_size=args.step_size, temperature=args.temperature,
                          clip=tuple(args.clip), n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed,
                          soft_bound=args.soft_bound)
    with RunFolder(args.out) as folder:  # held from here: the gallery embeddings are cached in it
        gallery = data.build_gallery(model, model_id, device, args.batch_size, folder=folder, quiet=args.quiet)
        summary = attack_to_folder(folder, _retriever(args, model, gallery), data.queries, data.labels,
                                   identity={"model": model_id, **data.identity}, config=config, exclude=data.exclude,
                                   indices=data.indices, certified=args.certified, resume=args.resume, quiet=args.quiet)
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
    p.add_argument("--nn-precision", choices=["exact", "tf32", "bf16"], default="exact",
                   help="nearest-neighbour search: exact float32 (default), or screened by a TF32/bf16 tensor-core "
                        "matmul and verified (identical results; faster on GPUs with large galleries)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def _add_model_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a TorchScript file (torch.jit.save) or 'package.module:factory'")


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
                   help="a benchmark in its published layout, instead of --queries/--gallery: sop:ROOT (Stanford "
                        "Online Products), cub:ROOT (CUB-200-2011), cars:ROOT (CARS196), inshop:ROOT (In-Shop)")
    p.add_argument("--every", type=_positive_int, default=1, help="take every K-th query (default 1: all)")
    p.add_argument("--max-queries", type=_positive_int, default=None,
                   help="take at most the first N queries (after --every); the gallery stays whole")
    p.add_argument("--resize", type=_count, default=256,
                   help="images: resize the shorter side to this many pixels (default 256; 0: keep)")
    p.add_argument("--crop", type=_count, default=224, help="images: centre-crop to this square (default 224; 0: none)")
    p.add_argument("--workers", type=_count, default=None,
                   help="images: DataLoader worker processes decoding them (default: the cores, at most 8; 0: none)")


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
    _add_model_option(cert)
    _add_data_options(cert)
    _add_run_options(cert, sigma=None, out=None)
    _add_group_options(cert)
    cert.set_defaults(func=cmd_certify)
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
    attack.set_defaults(func=cmd_attack)
    bench = sub.add_parser("bench", help="benchmarks against numpy/torch/faiss baselines, measured in the same run",
                           usage="python -m retrievalguard_fast bench [{all,kernels,certify,sequential,model-stage,data}] [options]",
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
    except GroupStopped as exc:  # another rank failed and said why; this one only stops
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except InputError as exc:
        if args.debug:
            raise
        print(f"error: {_rank()}{exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        if args.debug:
            raise
        print(f"error: {_rank()}{str(exc).splitlines()[0]} (rerun with --debug for the traceback)", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001
        if args.debug or not launched():
            raise
        # Under torchrun every rank's traceback would interleave in one console; one line each.
        print(f"error: {_rank()}{_one_line(exc)} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1
