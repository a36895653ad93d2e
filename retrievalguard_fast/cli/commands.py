"""The commands: each turns parsed arguments into library calls (:mod:`~..runs`,
:mod:`~..data`, :mod:`~..attack`) and prints what they return. No run logic lives here."""

from __future__ import annotations

import json
import os
import sys

from ..errors import BATCH_SIZE, InputError, out_of_memory_is_input_error
from ..runs import RESULTS, attack_to_folder, build_gallery, certify_to_folder, coordinator_for_this_process
from ..runs.distributed import launched
from ..smoothing import CertifyConfig, SmoothedRetriever
from .options import BENCH_NAMES


def certify_config(args) -> CertifyConfig:
    """The certification settings of the run options (demo, certify)."""
    return CertifyConfig(n0=args.n0, n=args.n, alpha=args.alpha, ks=tuple(args.recall_k), mode=args.mode,
                         radii=tuple(args.radii), first_checkpoint=args.first_checkpoint, soft_bound=args.soft_bound)


def retriever(args, model, gallery) -> SmoothedRetriever:
    return SmoothedRetriever(model, gallery, args.sigma, device=gallery.device, batch_size=args.batch_size,
                             seed=args.seed, bf16=args.bf16, channels_last=args.channels_last, compile=args.compile,
                             nn_precision=args.nn_precision)


def load_data(args):
    """The data options (:func:`~.options._add_data_options`) -> :class:`~..data.RunData`."""
    from ..data import load_run_data

    return load_run_data(queries=args.queries, gallery=args.gallery, dataset=args.dataset, every=args.every,
                         max_queries=args.max_queries, resize=args.resize, crop=args.crop, workers=args.workers,
                         leave_one_out=not args.no_leave_one_out, verify_data=args.verify_data)


def load_checked_model(args):
    """``--model`` loaded, its training sigma checked against ``--sigma``, behind ``--denoiser``
    if given -> (encoder for the gallery, base model of the smoothing, identity for run.json)."""
    from ..data import load_model
    from ..data.models import check_training_sigma, training_sigma, with_denoiser

    encoder, model_id = load_model(args.model)
    trained = training_sigma(args.model, encoder)
    # Recorded only when known or given, so run.json of a plain model is what it always was.
    identity = {"model": model_id, **({} if trained is None else {"model_training_sigma": trained})}
    if args.denoiser is None:
        check_training_sigma(trained, args.sigma, args.allow_sigma_mismatch, args.model)
        return encoder, encoder, identity
    denoiser, denoiser_id = load_model(args.denoiser, "--denoiser")
    # The noise meets the denoiser, not the encoder (typically trained on clean images): the
    # denoiser's training sigma is the one checked when it records one; else the encoder's.
    denoiser_trained = training_sigma(args.denoiser, denoiser, what="--denoiser")
    if denoiser_trained is None:
        check_training_sigma(trained, args.sigma, args.allow_sigma_mismatch, args.model)
    else:
        check_training_sigma(denoiser_trained, args.sigma, args.allow_sigma_mismatch, args.denoiser, what="denoiser")
        identity["denoiser_training_sigma"] = denoiser_trained
    return encoder, with_denoiser(denoiser, encoder), {**identity, "denoiser": denoiser_id}


def demo(args) -> int:
    from ..data import resolve_device
    from ..demo import default_weights_path, load_default_model, load_digits_split
    from ..report import device_text, print_table
    from ..smoothing import Gallery

    if launched():
        raise InputError("demo runs in one process; under torchrun use certify (see README, 'Across GPUs and "
                         "machines')")
    device = resolve_device(args.device)
    data = load_digits_split()
    model = load_default_model(args.sigma).to(device)
    shipped = default_weights_path(args.sigma).exists()
    with out_of_memory_is_input_error("embedding the gallery images", "{batch_size}", batch_size=BATCH_SIZE):
        gallery = Gallery.from_model(model, data.gallery_x, data.gallery_y, device=device)
    m = len(data.query_x) if args.queries is None else min(args.queries, len(data.query_x))
    if not args.quiet:
        print(f"demo: digits (scikit-learn), gallery {len(gallery)} images, {m} queries, "
              f"{'shipped' if shipped else 'freshly trained'} MLP trained at sigma={args.sigma}; "
              f"n0={args.n0}, n={args.n}{' (cap)' if args.mode == 'sequential' else ''}, alpha={args.alpha}, "
              f"mode {args.mode}, device {device_text(device)}", file=sys.stderr)
    identity = {"model": f"digits-mlp-sigma{args.sigma:g}" + ("" if shipped else "-trained"),
                "data": "sklearn-digits-split0"}
    # Rerunning the demo into the same folder continues (or just re-reports) the same run: its
    # results are identical by construction. Other parameters into that folder are still refused.
    summary = certify_to_folder(args.out, retriever(args, model, gallery), data.query_x[:m], data.query_y[:m],
                                certify_config(args), identity=identity, resume=True, quiet=args.quiet)
    print_table(summary)
    print(f"\nwrote {os.path.join(args.out, RESULTS)}, summary.json, summary.csv, certified_recall.png")
    return 0


def certify(args) -> int:
    from ..data import resolve_device
    from ..report import print_table

    with coordinator_for_this_process(args.group_timeout) as coordinator:
        device = coordinator.device(resolve_device(args.device))
        data = load_data(args)
        encoder, model, model_identity = load_checked_model(args)
        model_id = model_identity["model"]
        if max(args.recall_k) > data.gallery_size:
            raise InputError(f"--recall-k {max(args.recall_k)} exceeds the gallery size {data.gallery_size}")
        # The folder is held from here on (by rank 0 for a group): the gallery embeddings are
        # cached in it, computed once by rank 0 and read there by the other ranks.
        with coordinator.open_folder(args.out) as folder:
            gallery = coordinator.share_gallery(folder, lambda: build_gallery(
                data, encoder, model_id, device, args.batch_size, folder=folder, quiet=args.quiet or not coordinator.leader))
            summary = certify_to_folder(folder, retriever(args, model, gallery), data.queries, data.labels,
                                        certify_config(args), identity={**model_identity, **data.identity},
                                        exclude=data.exclude, indices=data.indices, resume=args.resume,
                                        quiet=args.quiet, coordinator=coordinator)
        if summary is not None:  # None on the ranks other than 0 of a torchrun group
            print_table(summary)
    return 0


def attack(args) -> int:
    from ..attack import AttackConfig, check_clip, print_attack_table
    from ..data import resolve_device
    from ..runs import RunFolder

    if launched():
        raise InputError("attack runs in one process: start it with python -m retrievalguard_fast, not torchrun")
    device = resolve_device(args.device)
    data = load_data(args)
    if not hasattr(data.queries, "iter_chunks"):  # an array: checked before any work (images: as read)
        check_clip(data.queries, args.clip, f"--queries {args.queries}")
    encoder, model, model_identity = load_checked_model(args)
    model_id = model_identity["model"]
    config = AttackConfig(radii=tuple(args.radii), models=tuple(args.models), steps=args.steps, eot=args.eot,
                          restarts=args.restarts, targets=args.targets, step_size=args.step_size, temperature=args.temperature,
                          clip=tuple(args.clip), n0=args.n0, n=args.n, alpha=args.alpha, seed=args.seed,
                          soft_bound=args.soft_bound)
    with RunFolder(args.out) as folder:  # held from here: the gallery embeddings are cached in it
        gallery = build_gallery(data, encoder, model_id, device, args.batch_size, folder=folder, quiet=args.quiet)
        summary = attack_to_folder(folder, retriever(args, model, gallery), data.queries, data.labels,
                                   identity={**model_identity, **data.identity}, config=config, exclude=data.exclude,
                                   indices=data.indices, certified=args.certified, resume=args.resume, quiet=args.quiet)
    print_attack_table(summary, color=sys.stdout.isatty())
    print(f"\nwrote {os.path.join(args.out, RESULTS)}, summary.json, summary.csv, attack_vs_certified.png")
    # A certified query broken inside its radius is a soundness failure: a non-zero status.
    return 1 if summary.get("certified", {}).get("alarm", {}).get("broken_inside_radius") else 0


def train(args) -> int:
    import dataclasses

    from ..data import load_train_data, load_validation_data, resolve_device
    from ..data.run_data import default_workers
    from ..training import TrainConfig, train_to_folder
    from ..training.config import EMBEDDING_ONLY
    from ..training.denoiser import DEFAULT_ARCHITECTURE

    # The embedding model's options are None unless given (argparse), so that a denoiser run can
    # refuse them rather than ignore them; their defaults are TrainConfig's.
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name in EMBEDDING_ONLY}
    embedding = {k: getattr(args, k) for k in defaults}
    if args.denoiser_objective is not None:
        given = [k for k, v in embedding.items() if v is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise InputError(f"{flag}: a setting of an embedding model's training; a --denoiser-objective run trains a "
                             "denoiser for the frozen --encoder and takes none of "
                             + ", ".join("--" + k.replace("_", "-") for k in defaults))
    embedding = {k: defaults[k] if v is None else v for k, v in embedding.items()}
    backbone = args.backbone or (DEFAULT_ARCHITECTURE if args.denoiser_objective else "cnn")
    workers = default_workers() if args.workers is None else args.workers
    config = TrainConfig(sigma=args.sigma, backbone=backbone, weights=args.weights, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, freeze_bn=args.freeze_bn, seed=args.seed,
                         denoiser_objective=args.denoiser_objective, encoder=args.encoder, **embedding)
    data = load_train_data(data=args.data, dataset=args.dataset, resize=args.resize, crop=args.crop, workers=workers)
    val = load_validation_data(val=args.val, dataset=args.dataset, resize=args.resize, crop=args.crop, workers=workers)
    record = train_to_folder(args.out, data, config, val=val, device=resolve_device(args.device), resume=args.resume,
                             quiet=args.quiet)
    if record is not None:
        last = record["history"][-1] if record["history"] else {}
        shown = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in last.items() if k not in ("epoch", "seconds"))
        what = f"a denoiser for {args.encoder}" if args.denoiser_objective else "an embedding model"
        print(f"trained {what}, {len(record['history'])} epochs at sigma {args.sigma:g}: {shown}; wrote "
              f"{os.path.join(args.out, record['output'])} and train.json")
    return 0


def compare(args) -> int:
    from ..errors import Term
    from ..report.compare import compare_runs, terminal_table, write_comparison
    from ..runs import read_run
    from ..smoothing.record import is_certify_record

    runs, names = [], [os.path.basename(os.path.normpath(f)) for f in args.folders]
    for folder, name in zip(args.folders, names):
        params, records = read_run(folder, Term("folders", "compare"))
        if params.get("command", "certify") != "certify" or not records or not all(is_certify_record(r) for r in records):
            raise InputError(f"compare {folder}: not a folder of certify results with at least one record")
        # Two folders of one name (a/run, b/run) are told apart by the path as given.
        runs.append((folder if names.count(name) > 1 else name, params, records))
    comparison = compare_runs(runs, args.radii)
    write_comparison(args.out, comparison)
    print(terminal_table(comparison))
    print(f"\nwrote {os.path.join(args.out, 'compare.png')}, compare.md, compare.tex, summary.json, summary.csv")
    return 0


def bench(args) -> int:
    from ..bench import run as run_bench

    rest = list(args.bench_args)
    name = rest.pop(0) if rest and not rest[0].startswith("-") else "all"
    if name not in BENCH_NAMES:
        raise InputError(f"bench: unknown benchmark {name!r}; expected one of {', '.join(BENCH_NAMES)}")
    for one in (["kernels", "certify"] if name == "all" else [name]):
        print(f"\n===== bench {one} =====", flush=True)
        run_bench(one, rest)
    return 0


def info(_args) -> int:
    from .. import __version__
    from ..kernels import build_info

    print(json.dumps({"version": __version__, **build_info()}, indent=2))
    return 0


COMMANDS = {"demo": demo, "certify": certify, "attack": attack, "train": train, "compare": compare, "bench": bench, "info": info}
