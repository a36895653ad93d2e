"""Command line: ``python -m retrievalguard_fast {demo,certify,bench,info}``.

``demo`` certifies the embedded default (scikit-learn's digits and a shipped noise-trained
model); ``certify`` runs a user's model and data. Both write, into ``--out``:

- ``run.json``: the parameters that determine the per-query results (checked on ``--resume``);
- ``results.jsonl``: one JSON object per query, appended and flushed as each query finishes;
- ``summary.json`` / ``summary.csv``: certified Recall@1 at ``--radii`` per certificate, clean
  Recall@1, certified Recall@K, abstention rates, timing, device and versions;
- ``certified_recall.png``: certified Recall@1 against radius, one curve per certificate.

Errors in the input exit with status 2 and one line saying what is wrong (``--debug`` shows the
traceback).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib
import json
import math
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

RESULTS = "results.jsonl"
RUN = "run.json"
DEFAULT_RADII = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


class CLIError(Exception):
    """A user mistake: reported as one line, exit status 2."""


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


# ---------------------------------------------------------------------- inputs


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    return torch.device(name)


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_npz(path: str, what: str) -> Dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise CLIError(f"{what} {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
        raise CLIError(f"{what} {path}: not a readable .npz file ({exc.__class__.__name__}: {exc})") from None


def _need(arrays: Dict[str, np.ndarray], name: str, what: str, path: str) -> np.ndarray:
    if name not in arrays:
        raise CLIError(f"{what} {path}: missing array {name!r} (has: {', '.join(sorted(arrays)) or 'none'})")
    return arrays[name]


def _check_labels(labels: np.ndarray, count: int, what: str) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != count:
        raise CLIError(f"{what}: labels must have shape ({count},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise CLIError(f"{what}: labels must be integers, got dtype {labels.dtype}")
    if count and labels.min() < 0:
        raise CLIError(f"{what}: labels must be >= 0, got {labels.min()}")
    return labels.astype(np.int64)


def _check_float(x: np.ndarray, what: str) -> np.ndarray:
    if not np.issubdtype(x.dtype, np.floating):
        raise CLIError(f"{what}: expected floating-point values, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise CLIError(f"{what}: contains non-finite values (NaN or inf)")
    return x.astype(np.float32)


def load_queries(path: str):
    arrays = _load_npz(path, "--queries")
    x = _check_float(_need(arrays, "x", "--queries", path), f"--queries {path}: x")
    if x.ndim < 2 or len(x) == 0:
        raise CLIError(f"--queries {path}: x must have shape (M, *input_shape) with M >= 1, got {x.shape}")
    labels = _check_labels(_need(arrays, "labels", "--queries", path), len(x), f"--queries {path}")
    exclude = arrays.get("exclude")
    if exclude is not None:
        if exclude.shape != (len(x),) or not np.issubdtype(exclude.dtype, np.integer):
            raise CLIError(f"--queries {path}: exclude must be {len(x)} integers (-1 for none), got {exclude.shape} {exclude.dtype}")
        exclude = exclude.astype(np.int64)
    return x, labels, exclude


def load_model(spec: str):
    import torch

    if os.path.exists(spec):
        try:
            model = torch.jit.load(spec, map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise CLIError(f"--model {spec}: not a loadable TorchScript file ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
        return model, _file_digest(spec)
    if ":" not in spec:
        raise CLIError(f"--model {spec}: no such file; expected a TorchScript file or 'package.module:factory'")
    module_name, factory_name = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, factory_name)
        model = factory()
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"--model {spec}: could not build the model ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(model, torch.nn.Module):
        raise CLIError(f"--model {spec}: the factory returned {type(model).__name__}, expected a torch.nn.Module")
    return model, "factory:" + spec


def load_gallery(path: str, model, device, batch_size: int, query_labels: np.ndarray):
    from .gallery import Gallery

    arrays = _load_npz(path, "--gallery")
    labels_raw = _need(arrays, "labels", "--gallery", path)
    if "embeddings" in arrays:
        emb = _check_float(arrays["embeddings"], f"--gallery {path}: embeddings")
        if emb.ndim != 2 or len(emb) == 0:
            raise CLIError(f"--gallery {path}: embeddings must have shape (N, k) with N >= 1, got {emb.shape}")
        labels = _check_labels(labels_raw, len(emb), f"--gallery {path}")
        if (np.linalg.norm(emb, axis=1) == 0).any():
            raise CLIError(f"--gallery {path}: embeddings has a zero row, which cannot be normalised")
        gallery = Gallery(emb, labels, device=device)
    elif "x" in arrays:
        x = _check_float(arrays["x"], f"--gallery {path}: x")
        if x.ndim < 2 or len(x) == 0:
            raise CLIError(f"--gallery {path}: x must have shape (N, *input_shape) with N >= 1, got {x.shape}")
        labels = _check_labels(labels_raw, len(x), f"--gallery {path}")
        try:
            gallery = Gallery.from_model(model, x, labels, batch_size=batch_size, device=device)
        except (RuntimeError, ValueError) as exc:
            raise CLIError(f"--gallery {path}: embedding the gallery images with the model failed: {str(exc).splitlines()[0]}") from None
    else:
        raise CLIError(f"--gallery {path}: needs an array 'embeddings' (N, k) or 'x' (N, *input_shape), besides 'labels'")
    if not np.intersect1d(gallery.labels_np, query_labels).size:
        raise CLIError(f"--gallery {path}: its labels share no class with the queries' labels; "
                       "certified Recall@1 would be 0 for every query")
    return gallery


# ---------------------------------------------------------------------- the run


def _versions() -> dict:
    import scipy
    import torch

    from . import __version__, build_info

    return {"retrievalguard_fast": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "python": platform.python_version(), "build": build_info()}


def _device_text(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})"


def _read_results(path: str) -> List[dict]:
    """Complete records of results.jsonl; a torn last line (from a kill) is cut off the file."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    records, good_end, pos = [], 0, 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        if nl < 0:
            break  # a last line without its newline was being written when the run stopped
        try:
            records.append(json.loads(data[pos:nl]))
        except json.JSONDecodeError:
            if data[nl + 1 :].strip():
                raise CLIError(f"{path}: line {len(records) + 1} is corrupt and is not the last line; "
                               "the file was edited or damaged, start a new --out") from None
            break
        pos = good_end = nl + 1
    if good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def run(args, *, model, model_id: str, gallery, x: np.ndarray, labels: np.ndarray, exclude: Optional[np.ndarray],
        params_extra: dict) -> dict:
    import torch

    from .smoothing import SmoothedRetriever, summarize

    device = gallery.device
    os.makedirs(args.out, exist_ok=True)
    params = {
        "model": model_id,
        "sigma": args.sigma, "n0": args.n0, "n": args.n, "alpha": args.alpha, "seed": args.seed,
        "recall_k": list(args.recall_k), "device_type": device.type, "num_queries": int(len(x)),
        # The model always runs on batches of exactly this many rows, so results do not depend on
        # how an interrupted run was resumed; a different batch size may change the last bits.
        "batch_size": args.batch_size,
        "mode": args.mode,
        "model_stage": {"bf16_autocast": args.bf16, "channels_last": args.channels_last, "torch_compile": args.compile},
        **params_extra,
    }
    if args.mode == "sequential":  # the stopping rule depends on the radii and the schedule
        params["radii"] = list(args.radii)
        params["first_checkpoint"] = args.first_checkpoint
    run_path = os.path.join(args.out, RUN)
    results_path = os.path.join(args.out, RESULTS)
    has_results = os.path.exists(results_path) and os.path.getsize(results_path) > 0
    if os.path.exists(run_path) and has_results:
        with open(run_path) as f:
            previous = json.load(f)
        if previous != params:
            changed = sorted(k for k in set(previous) | set(params) if previous.get(k) != params.get(k))
            raise CLIError(f"--out {args.out} holds results of a run with other parameters ({', '.join(changed)} differ); "
                           "choose a new --out or delete that folder")
        if not args.resume:
            raise CLIError(f"--out {args.out} already holds results of this run; pass --resume to continue it "
                           "or choose a new --out")
    elif has_results:
        raise CLIError(f"--out {args.out} holds a results.jsonl without run.json; choose a new --out")
    else:  # nothing certified there yet (a fresh folder, or a run that stopped before its first query)
        with open(run_path + ".tmp", "w") as f:
            json.dump(params, f, indent=2)
        os.replace(run_path + ".tmp", run_path)

    records = _read_results(results_path)
    done = {int(r["index"]) for r in records}
    todo = np.array([i for i in range(len(x)) if i not in done], dtype=np.int64)
    retriever = SmoothedRetriever(model, gallery, args.sigma, device=device, batch_size=args.batch_size, seed=args.seed,
                                  bf16=args.bf16, channels_last=args.channels_last, compile=args.compile,
                                  nn_precision=args.nn_precision)
    total_samples = len(todo) * (args.n0 + args.n)
    log = _Progress(len(x), len(done), total_samples, quiet=getattr(args, "quiet", False))
    started = time.perf_counter()
    samples_done = 0
    if len(todo):
        try:
            xt = torch.from_numpy(x[todo])
            with open(results_path, "a") as out:
                for cert in retriever.iter_certify(
                        xt, labels[todo], exclude=None if exclude is None else exclude[todo], indices=todo,
                        n0=args.n0, n=args.n, alpha=args.alpha, ks=args.recall_k,
                        sequential=args.mode == "sequential", radii=args.radii,
                        first_checkpoint=min(args.first_checkpoint, args.n), on_batch=lambda s: log.samples(s)):
                    record = cert.to_dict()
                    out.write(json.dumps(record) + "\n")
                    out.flush()
                    os.fsync(out.fileno())
                    records.append(record)
                    samples_done += cert.samples
                    log.query_done()
        except KeyboardInterrupt:
            log.close()
            print(f"interrupted: {len(records)} of {len(x)} queries are saved in {results_path}; "
                  "rerun with --resume to continue", file=sys.stderr)
            raise SystemExit(130)
    log.close()
    seconds = time.perf_counter() - started
    certs = [_cert_from_record(r) for r in sorted(records, key=lambda r: r["index"])]
    # Wall time of the whole run when this session certified every query; after a resume only
    # the per-query times are known (they overlap where queries shared batches).
    whole_run = len(todo) == len(x)
    summary = summarize(certs, args.radii, ks=args.recall_k, seconds=seconds if whole_run else None)
    summary["seconds_measure"] = "wall time of the run" if whole_run else "sum of per-query times (resumed run)"
    summary["this_session"] = {"queries": int(len(todo)), "seconds": seconds,
                               "samples_per_second": samples_done / seconds if seconds > 0 and samples_done else None}
    summary = {"parameters": params, "mode": args.mode, "radii": list(args.radii), **summary, "device": _device_text(device),
               "versions": _versions()}
    _write_summary(args.out, summary)
    return summary


def _cert_from_record(r: dict):
    from .smoothing import QueryCertificate

    fields = {k: v for k, v in r.items() if k in QueryCertificate.__dataclass_fields__}
    fields["soft_recall_at_k"] = {int(k): v for k, v in r.get("soft_recall_at_k", {}).items()}
    return QueryCertificate(**fields)


class _Progress:
    """tqdm on a terminal; plain log lines (about every 10 s) otherwise."""

    def __init__(self, total: int, done: int, samples: int, quiet: bool = False):
        self.total, self.done, self.quiet = total, done, quiet
        self.start = self.last = time.perf_counter()
        self.samples_seen = 0
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="query", dynamic_ncols=True, file=sys.stderr)

    def samples(self, count: int) -> None:
        self.samples_seen += count
        if self.bar is not None:
            rate = self.samples_seen / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} samples/s", refresh=False)

    def query_done(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.perf_counter()
        if not self.quiet and (now - self.last >= 10 or self.done == self.total):
            elapsed = now - self.start
            rate = self.samples_seen / max(elapsed, 1e-9)
            print(f"[{time.strftime('%H:%M:%S')}] {self.done}/{self.total} queries, {rate:,.0f} samples/s, "
                  f"{elapsed:.0f} s elapsed", file=sys.stderr, flush=True)
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _write_summary(out: str, summary: dict) -> None:
    def atomic_write(name: str, write):
        path = os.path.join(out, name)
        with open(path + ".tmp", "w", newline="") as f:
            write(f)
        os.replace(path + ".tmp", path)

    atomic_write("summary.json", lambda f: json.dump(summary, f, indent=2, default=_json_default))

    def write_csv(f):
        w = csv.writer(f)
        w.writerow(["model", "metric", "radius", "value"])
        w.writerow(["clean", "recall_at_1", 0.0, summary["clean_recall_at_1"]])
        for cert, values in summary["certified_recall_at_1"].items():
            for r, v in values.items():
                w.writerow([cert, "certified_recall_at_1", r, v])
        for k, per in summary["certified_recall_at_k"].items():
            for cert, values in per.items():
                for r, v in values.items():
                    w.writerow([cert, f"certified_recall_at_{k}", r, v])
        for model, v in summary["abstention_rate"].items():
            w.writerow([model, "abstention_rate", "", v])
        for cert, v in summary["average_certified_radius"].items():
            w.writerow([cert, "average_certified_radius", "", v])

    atomic_write("summary.csv", write_csv)
    _plot(out, summary)


def _json_default(v: Any):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return str(v)


def _plot(out: str, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(os.path.join(out, RESULTS)) as f:
        records = [json.loads(line) for line in f if line.strip()]
    labels = np.array([r["label"] for r in records])
    curves = {
        "vote (Cohen et al.)": ("vote_prediction", "vote_radius", "C0"),
        "soft, Gaussian bound": ("soft_prediction", "soft_gaussian_radius", "C1"),
        "soft, Lipschitz bound (RetrievalGuard)": ("soft_prediction", "soft_lipschitz_radius", "C2"),
    }
    finite = [r[k] for r in records for _, k, _ in curves.values() if r[k] is not None and math.isfinite(r[k])]
    top = max(finite + list(summary["radii"]) + [0.1]) * 1.05
    grid = np.linspace(0, top, 400)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    keys = {"vote (Cohen et al.)": "vote", "soft, Gaussian bound": "gaussian", "soft, Lipschitz bound (RetrievalGuard)": "lipschitz"}
    for name, (pk, rk, color) in curves.items():
        pred = np.array([r[pk] for r in records])
        rad = np.array([-np.inf if r[rk] is None else r[rk] for r in records])
        ok = pred == labels
        ax.plot(grid, [(ok & (rad >= g)).mean() for g in grid], label=name, color=color, lw=2)
        asked = summary["certified_recall_at_1"][keys[name]]
        ax.plot([float(r) for r in asked], list(asked.values()), "o", color=color, ms=5)
    ax.axhline(summary["clean_recall_at_1"], color="0.4", ls="--", lw=1, label="clean Recall@1 (no certificate)")
    p = summary["parameters"]
    ax.set_xlabel("l2 radius (input space)")
    ax.set_ylabel("certified Recall@1")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, top)
    ax.grid(alpha=0.3)
    title = f"Certified Recall@1: sigma={p['sigma']}, n={p['n']}, alpha={p['alpha']}, {summary['num_queries']} queries"
    if p.get("mode") == "sequential":
        title += "\nsequential: exact at the asked radii (dots), a lower bound between them"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "certified_recall.png.tmp.png"))
    plt.close(fig)
    os.replace(os.path.join(out, "certified_recall.png.tmp.png"), os.path.join(out, "certified_recall.png"))


def print_table(summary: dict) -> None:
    radii = summary["radii"]
    head = "".join(f"{'r=' + format(r, 'g'):>9}" for r in radii)
    print(f"\ncertified Recall@1 ({summary['num_queries']} queries; clean Recall@1 = {summary['clean_recall_at_1']:.3f})")
    print(f"  {'certificate':<22}{head}{'abstain':>9}")
    names = {"vote": "vote (Cohen)", "gaussian": "soft, Gaussian", "lipschitz": "soft, Lipschitz"}
    for key, name in names.items():
        vals = summary["certified_recall_at_1"][key]
        abst = summary["abstention_rate"]["vote" if key == "vote" else "soft"]
        print(f"  {name:<22}" + "".join(f"{vals[str(r)]:>9.3f}" for r in radii) + f"{abst:>9.3f}")
    for k, per in summary["certified_recall_at_k"].items():
        if k == "1":
            continue
        for key in ("gaussian", "lipschitz"):
            vals = per[key]
            print(f"  {'Recall@' + k + ', ' + key:<22}" + "".join(f"{vals[str(r)]:>9.3f}" for r in radii))
    s = summary["this_session"]
    rate = f", {s['samples_per_second']:,.0f} noisy samples/s" if s["samples_per_second"] else ""
    if s["queries"] == 0:
        print(f"\n(all {summary['num_queries']} queries were already certified in this folder; the table is "
              "theirs. Delete the folder or pass another --out to recompute.)")
    mean_samples = summary["samples"] / max(summary["num_queries"], 1)
    print(f"\n{s['queries']} queries certified in {s['seconds']:.1f} s on {summary['device']}{rate}; "
          f"mode {summary['mode']}, {mean_samples:,.0f} samples per query on average")


# ---------------------------------------------------------------------- commands


def cmd_demo(args) -> int:
    from .digits import default_weights_path, load_default_model, load_digits_split
    from .gallery import Gallery

    device = _resolve_device(args.device)
    # Rerunning the demo into the same folder continues (or just re-reports) the same run: its
    # results are identical by construction. Other parameters into that folder are still refused.
    args.resume = True
    data = load_digits_split()
    model = load_default_model(args.sigma).to(device)
    shipped = default_weights_path(args.sigma).exists()
    gallery = Gallery.from_model(model, data.gallery_x, data.gallery_y, device=device)
    m = len(data.query_x) if args.queries is None else min(args.queries, len(data.query_x))
    if not args.quiet:
        print(f"demo: digits (scikit-learn), gallery {len(gallery)} images, {m} queries, "
              f"{'shipped' if shipped else 'freshly trained'} MLP trained at sigma={args.sigma}; "
              f"n0={args.n0}, n={args.n}{' (cap)' if args.mode == 'sequential' else ''}, alpha={args.alpha}, "
              f"mode {args.mode}, device {_device_text(device)}", file=sys.stderr)
    summary = run(args, model=model, model_id=f"digits-mlp-sigma{args.sigma:g}" + ("" if shipped else "-trained"),
                  gallery=gallery, x=data.query_x[:m], labels=data.query_y[:m], exclude=None,
                  params_extra={"data": "sklearn-digits-split0"})
    print_table(summary)
    print(f"\nwrote {os.path.join(args.out, RESULTS)}, summary.json, summary.csv, certified_recall.png")
    return 0


def cmd_certify(args) -> int:
    device = _resolve_device(args.device)
    x, labels, exclude = load_queries(args.queries)
    model, model_id = load_model(args.model)
    gallery = load_gallery(args.gallery, model, device, args.batch_size, labels)
    if exclude is not None and len(exclude) and (exclude.min() < -1 or exclude.max() >= len(gallery)):
        raise CLIError(f"--queries {args.queries}: exclude values must be in [-1, {len(gallery) - 1}] (gallery size {len(gallery)})")
    if max(args.recall_k) > len(gallery):
        raise CLIError(f"--recall-k {max(args.recall_k)} exceeds the gallery size {len(gallery)}")
    params_extra = {"queries_sha256": _file_digest(args.queries), "gallery_sha256": _file_digest(args.gallery)}
    summary = run(args, model=model, model_id=model_id, gallery=gallery, x=x, labels=labels, exclude=exclude,
                  params_extra=params_extra)
    print_table(summary)
    return 0


def cmd_bench(args) -> int:
    from .bench import run as run_bench

    names = ["kernels", "certify"] if args.name == "all" else [args.name]
    for name in names:
        print(f"\n===== bench {name} =====", flush=True)
        run_bench(name, args.bench_args)
    return 0


def cmd_info(_args) -> int:
    from . import __version__, build_info

    print(json.dumps({"version": __version__, **build_info()}, indent=2))
    return 0


def _add_run_options(p: argparse.ArgumentParser, *, sigma: Optional[float], out: Optional[str]) -> None:
    p.add_argument("--sigma", type=_positive_float, default=sigma, required=sigma is None,
                   help="noise standard deviation in the model's input space" + (f" (default {sigma})" if sigma else ""))
    p.add_argument("--n0", type=_positive_int, default=100, help="selection samples per query (default 100)")
    p.add_argument("--n", type=_positive_int, default=10_000,
                   help="certification samples per query; the cap in sequential mode (default 10000)")
    p.add_argument("--mode", choices=["sequential", "fixed-n"], default="sequential",
                   help="sequential (default): stop each query once every --radii value is certified or out of "
                        "reach (bounds at alpha/checkpoints); fixed-n: always draw n samples")
    p.add_argument("--first-checkpoint", type=_positive_int, default=1000,
                   help="sequential mode: the first checkpoint of the doubling schedule (default 1000)")
    p.add_argument("--alpha", type=_unit_interval, default=0.001, help="failure probability per query (default 0.001)")
    p.add_argument("--batch-size", type=_positive_int, default=2000, help="noisy samples per model call (default 2000)")
    p.add_argument("--seed", type=_seed, default=0, help="noise seed (default 0)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--recall-k", type=_int_list, default=[1], help="K values for certified Recall@K, e.g. 1,5 (default 1)")
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
    cert.add_argument("--model", required=True, help="a TorchScript file (torch.jit.save) or 'package.module:factory'")
    cert.add_argument("--queries", required=True, help=".npz with x (M, *input_shape), labels (M,), optional exclude (M,)")
    cert.add_argument("--gallery", required=True, help=".npz with labels (N,) and embeddings (N, k) or images x (N, *input_shape)")
    _add_run_options(cert, sigma=None, out=None)
    cert.set_defaults(func=cmd_certify)
    bench = sub.add_parser("bench", help="benchmarks against numpy/torch/faiss baselines, measured in the same run",
                           description="Run a benchmark; options after the name go to it (e.g. bench kernels --help).")
    bench.add_argument("name", nargs="?", default="all",
                       choices=["all", "kernels", "certify", "sequential", "model-stage"],
                       help="all (default: kernels, then certify), kernels, certify, sequential, model-stage")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options for that benchmark")
    bench.add_argument("--debug", action="store_true")
    bench.set_defaults(func=cmd_bench)
    info = sub.add_parser("info", help="what was compiled in, and which devices are usable")
    info.add_argument("--debug", action="store_true")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CLIError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        if args.debug:
            raise
        print(f"error: {str(exc).splitlines()[0]} (rerun with --debug for the traceback)", file=sys.stderr)
        return 2
