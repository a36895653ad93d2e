"""Reports of a certification run, all drawn from one summary: summary.json, summary.csv, the
certified-Recall@1 plot and the terminal table.

:func:`summarize` turns certificates into certified Recall@1 / Recall@K at the asked radii,
clean Recall@1, abstention rates, average certified radii and the certified-accuracy curve;
everything else here only formats that summary.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from typing import Any, Optional, Sequence

import numpy as np

from .certify import ABSTAIN, QueryCertificate
from .sequential import SEQUENTIAL

CERTIFICATES = ("vote", "gaussian", "lipschitz")
#: Points of the certified-accuracy curve stored in the summary (and drawn in the plot).
CURVE_POINTS = 201


def certified_accuracy(predictions: np.ndarray, radii: Sequence[Optional[float]], labels: np.ndarray,
                       radius: Any) -> Any:
    """Fraction of queries predicted correctly with a certified radius >= ``radius``
    (abstentions, None radii, count as failures). ``radius`` may also be a sequence: then a list,
    one fraction per radius."""
    r = np.array([-math.inf if v is None else v for v in radii], dtype=np.float64)
    ok = np.asarray(predictions) == np.asarray(labels)
    at = np.asarray(radius, dtype=np.float64)
    if len(ok):
        fractions = (ok[:, None] & (r[:, None] >= at.reshape(1, -1))).mean(axis=0)
    else:
        fractions = np.full(at.size, np.nan)
    return float(fractions[0]) if at.ndim == 0 else [float(v) for v in fractions]


def summarize(certs: Sequence[QueryCertificate], radii: Sequence[float], *, ks: Sequence[int] = (1,),
              seconds: Optional[float] = None) -> dict:
    """Certified Recall@1 at each radius for each certificate, clean Recall@1, abstention rates,
    average certified radii (0 for a wrong or abstained query), timing and throughput.

    ``seconds``: the wall time of the run; if None, the sum of the per-query times, which
    overlap when queries shared batches (so samples_per_second is then an underestimate)."""
    if any(c.label is None for c in certs):
        raise ValueError("summarize: every query needs its true label")
    labels = np.array([c.label for c in certs])
    m = len(certs)
    vote_pred = np.array([c.vote_prediction for c in certs])
    soft_pred = np.array([c.soft_prediction for c in certs])
    by_cert = {
        "vote": (vote_pred, [c.vote_radius for c in certs]),
        "gaussian": (soft_pred, [c.soft_gaussian_radius for c in certs]),
        "lipschitz": (soft_pred, [c.soft_lipschitz_radius for c in certs]),
    }

    def acr(pred, rs):
        r = np.array([0.0 if v is None else v for v in rs])
        return float(np.where(pred == labels, r, 0.0).mean()) if m else float("nan")

    samples = int(sum(c.samples for c in certs))
    seconds = float(sum(c.seconds for c in certs)) if seconds is None else float(seconds)
    out = {
        "num_queries": m,
        "clean_recall_at_1": float(np.mean([c.clean_prediction == c.label for c in certs])) if m else float("nan"),
        "certified_recall_at_1": {name: {str(r): certified_accuracy(p, rs, labels, r) for r in radii}
                                  for name, (p, rs) in by_cert.items()},
        "abstention_rate": {"vote": float(np.mean(vote_pred == ABSTAIN)) if m else float("nan"),
                            "soft": float(np.mean(soft_pred == ABSTAIN)) if m else float("nan")},
        "average_certified_radius": {name: acr(p, rs) for name, (p, rs) in by_cert.items()},
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples / seconds if seconds > 0 else float("nan"),
    }
    recall_k = {}
    for k in ks:
        per = {}
        for name in ("gaussian", "lipschitz"):
            rs = [c.soft_recall_at_k.get(k, {}).get(name) for c in certs]
            r = np.array([-math.inf if v is None else v for v in rs])
            per[name] = {str(rad): float(np.mean(r >= rad)) if m else float("nan") for rad in radii}
        recall_k[str(k)] = per
    out["certified_recall_at_k"] = recall_k
    if any(c.mode == SEQUENTIAL for c in certs):
        # A sequential query stops once every asked radius is decided, so its radius is exact
        # only at the asked radii: between them it is a lower bound of the fixed-n radius.
        out["average_certified_radius_is"] = "a lower bound (sequential mode: radii are exact only at the asked radii)"
    else:
        out["average_certified_radius_is"] = "exact (fixed-n mode)"
    out["certified_recall_curve"] = _curve(by_cert, labels, radii)
    return out


def _curve(by_cert: dict, labels: np.ndarray, radii: Sequence[float]) -> dict:
    """Certified Recall@1 of each certificate on a grid of radii, from 0 to a little past the
    largest finite certified radius (or asked radius)."""
    finite = [v for _, rs in by_cert.values() for v in rs if v is not None and math.isfinite(v)]
    top = max(finite + [float(r) for r in radii] + [0.1]) * 1.05
    grid = np.linspace(0.0, top, CURVE_POINTS)
    curve = {"radius": [float(g) for g in grid]}
    for name, (pred, rs) in by_cert.items():
        curve[name] = certified_accuracy(pred, rs, labels, grid)
    return curve


def versions() -> dict:
    import scipy
    import torch

    from . import __version__, build_info

    return {"retrievalguard_fast": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "python": platform.python_version(), "build": build_info()}


def device_text(device) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})"


def run_summary(certs: Sequence[QueryCertificate], params: dict, radii: Sequence[float], *, device: Any,
                session_queries: int, session_seconds: float, session_samples: int) -> dict:
    """The summary of a whole run (every certificate in its folder) and of this session's part.

    When this session certified every query the run's time is its wall time; after a resume only
    the per-query times are known (they overlap where queries shared batches)."""
    whole_run = session_queries == len(certs)
    summary = summarize(certs, radii, ks=params["recall_k"],
                        seconds=session_seconds if whole_run else None)
    summary["seconds_measure"] = "wall time of the run" if whole_run else "sum of per-query times (resumed run)"
    summary["this_session"] = {"queries": int(session_queries), "seconds": session_seconds,
                               "samples_per_second": session_samples / session_seconds
                               if session_seconds > 0 and session_samples else None}
    return {"parameters": params, "mode": params["mode"], "soft_bound": params["soft_bound"], "radii": list(radii), **summary,
            "device": device_text(device), "versions": versions()}


def _atomic_write(out: str, name: str, write) -> None:
    """``write(file)`` into ``out/name`` through a temporary file renamed over it: a reader (or a
    kill) never sees a half-written report."""
    path = os.path.join(out, name)
    with open(path + ".tmp", "w", newline="") as f:
        write(f)
    os.replace(path + ".tmp", path)


def write_reports(out: str, summary: dict) -> None:
    """summary.json, summary.csv and certified_recall.png in ``out``, each replaced atomically."""
    _atomic_write(out, "summary.json", lambda f: json.dump(summary, f, indent=2, default=_json_default))

    def write_csv(f):
        w = csv.writer(f)
        w.writerow(["model", "metric", "radius", "value"])
        w.writerow(["clean", "recall_at_1", 0.0, summary["clean_recall_at_1"]])
        w.writerow(["soft", "soft_bound", "", summary["soft_bound"]])  # the bound behind gaussian/lipschitz
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

    _atomic_write(out, "summary.csv", write_csv)
    png = os.path.join(out, "certified_recall.png")
    plot(summary, png + ".tmp.png")
    os.replace(png + ".tmp.png", png)


def _json_default(v: Any):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return str(v)


def plot(summary: dict, path: str) -> None:
    """certified Recall@1 against radius, one curve per certificate, from the summary alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = summary["certified_recall_curve"]
    styles = {"vote": ("vote (Cohen et al.)", "C0"), "gaussian": ("soft, Gaussian bound", "C1"),
              "lipschitz": ("soft, Lipschitz bound (RetrievalGuard)", "C2")}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for key, (name, color) in styles.items():
        ax.plot(curve["radius"], curve[key], label=name, color=color, lw=2)
        asked = summary["certified_recall_at_1"][key]
        ax.plot([float(r) for r in asked], list(asked.values()), "o", color=color, ms=5)
    ax.axhline(summary["clean_recall_at_1"], color="0.4", ls="--", lw=1, label="clean Recall@1 (no certificate)")
    p = summary["parameters"]
    ax.set_xlabel("l2 radius (input space)")
    ax.set_ylabel("certified Recall@1")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, curve["radius"][-1])
    ax.grid(alpha=0.3)
    title = (f"Certified Recall@1: sigma={p['sigma']}, n={p['n']}, alpha={p['alpha']}, {summary['num_queries']} queries, "
             f"soft bound {summary['soft_bound']}")
    if p.get("mode") == SEQUENTIAL:
        title += "\nsequential: exact at the asked radii (dots), a lower bound between them"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_table(summary: dict) -> None:
    radii = summary["radii"]
    head = "".join(f"{'r=' + format(r, 'g'):>9}" for r in radii)
    print(f"\ncertified Recall@1 ({summary['num_queries']} queries; clean Recall@1 = {summary['clean_recall_at_1']:.3f}; "
          f"soft radii from the {summary['soft_bound']} bound)")
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
    acr = summary["average_certified_radius"]
    kind = "a lower bound: radii are exact only at the asked radii" if summary["mode"] == SEQUENTIAL else "exact"
    print(f"  average certified radius: vote {acr['vote']:.3f}, soft Gaussian {acr['gaussian']:.3f}, "
          f"soft Lipschitz {acr['lipschitz']:.3f} ({kind})")
    s = summary["this_session"]
    rate = f", {s['samples_per_second']:,.0f} noisy samples/s" if s["samples_per_second"] else ""
    if s["queries"] == 0:
        print(f"\n(all {summary['num_queries']} queries were already certified in this folder; the table is "
              "theirs. Delete the folder or pass another --out to recompute.)")
    mean_samples = summary["samples"] / max(summary["num_queries"], 1)
    print(f"\n{s['queries']} queries certified in {s['seconds']:.1f} s on {summary['device']}{rate}; "
          f"mode {summary['mode']}, {mean_samples:,.0f} samples per query on average")




# ---------------------------------------------------------------------- the attack's reports

#: The attacked models and, for the two smoothed ones, the certificate drawn beside them.
ATTACK_MODELS = {"vote": ("vote", "C0", "vote"), "soft": ("soft", "C1", "gaussian"), "base": ("base (no noise)", "C2", None)}


def attack_summary(records: Sequence[dict], params: dict, certified: Optional[dict], *, certified_folder: Optional[str],
                   device: Any, session_queries: int, session_seconds: float) -> dict:
    """Empirical robust Recall@1 per radius per attacked model, clean Recall@1 of each model's
    reference, the cost per query and, with the certified records (index -> record of
    certify), their certified Recall@1 over the same queries and the soundness alarm."""
    from .attack import empirical_recall, soundness_alarm

    models = [m for m in params["models"]]
    radii = [0.0] + [float(r) for r in params["radii"]]
    m = len(records)
    mean = lambda key: float(np.mean([r[key] for r in records])) if m else float("nan")  # noqa: E731
    out = {
        "parameters": params, "num_queries": m, "radii": radii,
        "clean_recall_at_1": {k: float(np.mean([r[k]["reference"] == r["label"] for r in records])) if m else float("nan")
                              for k in models},
        "empirical_robust_recall_at_1": {k: empirical_recall(records, k, radii) for k in models},
        "broken_queries": {k: int(sum(r[k]["break_radius"] is not None for r in records)) for k in models},
        "cost_per_query": {"attack_seconds": mean("seconds"), "attack_model_rows": mean("attack_rows"),
                           "re_estimate_samples": mean("test_samples")},
        "this_session": {"queries": int(session_queries), "seconds": float(session_seconds)},
    }
    if certified is not None:
        pairs = [(r, certified[int(r["index"])]) for r in records if int(r["index"]) in certified]
        labels = np.array([r["label"] for r, _ in pairs])
        cert = {}
        curve = {}
        finite = [c.get(f) for _, c in pairs for f in ("vote_radius", "soft_gaussian_radius")]
        top = max([v for v in finite if v is not None and math.isfinite(v)] + radii + [0.1]) * 1.05
        grid = np.linspace(0.0, top, CURVE_POINTS)
        curve["radius"] = [float(g) for g in grid]
        for name, pred, rad in (("vote", "vote_prediction", "vote_radius"),
                                ("gaussian", "soft_prediction", "soft_gaussian_radius")):
            p = np.array([c[pred] for _, c in pairs])
            rs = [c[rad] for _, c in pairs]
            cert[name] = dict(zip((str(r) for r in radii), certified_accuracy(p, rs, labels, radii)))
            curve[name] = certified_accuracy(p, rs, labels, grid)
        seconds = [c.get("seconds") for _, c in pairs if c.get("seconds") is not None]
        out["certified"] = {
            "folder": certified_folder, "queries_compared": len(pairs), "certified_recall_at_1": cert,
            "certified_recall_curve": curve,
            # Per-query times of certify overlap where queries shared batches: an upper bound on
            # its cost per query; the run's wall time per query is in its own summary.json.
            "certify_seconds_per_query_upper": float(np.mean(seconds)) if seconds else None,
            "alarm": soundness_alarm(records, certified),
        }
        try:
            with open(os.path.join(certified_folder, "summary.json")) as f:
                cs = json.load(f)
            out["certified"]["certify_wall_seconds_per_query"] = cs["seconds"] / max(cs["num_queries"], 1)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return {**out, "device": device_text(device), "versions": versions()}


def write_attack_reports(out: str, summary: dict) -> None:
    """summary.json, summary.csv and attack_vs_certified.png in ``out``, each replaced atomically."""
    _atomic_write(out, "summary.json", lambda f: json.dump(summary, f, indent=2, default=_json_default))

    def write_csv(f):
        w = csv.writer(f)
        w.writerow(["model", "metric", "radius", "value"])
        for model, values in summary["empirical_robust_recall_at_1"].items():
            for r, v in values.items():
                w.writerow([model, "empirical_robust_recall_at_1", r, v])
        for cert, values in summary.get("certified", {}).get("certified_recall_at_1", {}).items():
            for r, v in values.items():
                w.writerow([cert, "certified_recall_at_1", r, v])
        if "certified" in summary:
            w.writerow(["all", "certified_broken_inside_radius", "", summary["certified"]["alarm"]["broken_inside_radius"]])

    _atomic_write(out, "summary.csv", write_csv)
    png = os.path.join(out, "attack_vs_certified.png")
    plot_attack(summary, png + ".tmp.png")
    os.replace(png + ".tmp.png", png)


def plot_attack(summary: dict, path: str) -> None:
    """Per model: certified Recall@1 (solid, a lower bound) and empirical robust Recall@1 under
    the attack (dashed steps through the attacked radii, an upper bound)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    cert = summary.get("certified")
    top = summary["radii"][-1] * 1.05 or 0.1
    for model, (name, color, cert_key) in ATTACK_MODELS.items():
        if model not in summary["empirical_robust_recall_at_1"]:
            continue
        if cert is not None and cert_key is not None:
            curve = cert["certified_recall_curve"]
            ax.plot(curve["radius"], curve[cert_key], color=color, lw=2,
                    label=f"{name}: certified ({'Gaussian bound' if cert_key == 'gaussian' else 'Cohen'}), lower")
        emp = summary["empirical_robust_recall_at_1"][model]
        rs, vs = [float(r) for r in emp], list(emp.values())
        ax.plot(rs + [top], vs + [vs[-1]], color=color, lw=1.5, ls="--", drawstyle="steps-post",
                label=f"{name}: attack (PGD+EOT), upper")
        ax.plot(rs, vs, "o", color=color, ms=4)
    p = summary["parameters"]
    ax.set_xlabel("l2 radius (input space)")
    ax.set_ylabel("robust Recall@1")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(0, top)
    ax.grid(alpha=0.3)
    title = (f"Certified (lower) vs empirical (upper) robust Recall@1: sigma={p['sigma']}, {summary['num_queries']} "
             f"queries\nPGD {p['steps']} steps x {p['eot']} noise draws, {p['restarts']} restarts; "
             f"breaks tested at alpha={p['alpha']}")
    if cert is not None:
        title += f"; {cert['alarm']['broken_inside_radius']} certified queries broken inside their radius"
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_attack_table(summary: dict, color: bool = False) -> None:
    radii = summary["radii"]
    p = summary["parameters"]
    head = "".join(f"{'r=' + format(r, 'g'):>9}" for r in radii)
    print(f"\nrobust Recall@1 ({summary['num_queries']} queries; attack: PGD {p['steps']} steps x {p['eot']} noise draws, "
          f"{p['restarts']} restarts; breaks tested with fresh noise at alpha={p['alpha']})")
    print(f"  {'model':<30}{head}")
    cert = summary.get("certified")
    for model, (name, _, cert_key) in ATTACK_MODELS.items():
        if model not in summary["empirical_robust_recall_at_1"]:
            continue
        if cert is not None and cert_key is not None:
            vals = cert["certified_recall_at_1"][cert_key]
            label = f"{name}, certified" + (" (Gaussian)" if cert_key == "gaussian" else "")
            print(f"  {label:<30}" + "".join(f"{vals[str(float(r))]:>9.3f}" for r in radii))
        vals = summary["empirical_robust_recall_at_1"][model]
        print(f"  {name + ', attack (upper)':<30}" + "".join(f"{vals[str(float(r))]:>9.3f}" for r in radii))
    c = summary["cost_per_query"]
    line = (f"\ncost per query: attack {c['attack_seconds']:.3f} s ({c['attack_model_rows']:,.0f} model rows forward and "
            f"backward, {c['re_estimate_samples']:,.0f} re-estimate samples) on {summary['device']}")
    if cert is not None and cert.get("certify_wall_seconds_per_query") is not None:
        line += f"; certification {cert['certify_wall_seconds_per_query']:.3f} s (wall time per query of its run)"
    print(line)
    if cert is not None:
        alarm = cert["alarm"]
        per = ", ".join(f"{k} {v['broken_inside_radius']} of {v['certified']} certified"
                        + (f" ({v['disagree']} with another clean prediction, not compared)" if v["disagree"] else "")
                        for k, v in alarm["by_model"].items())
        text = f"soundness: {alarm['broken_inside_radius']} certified queries broken inside their certified radius ({per})"
        if alarm["broken_inside_radius"]:
            cases = "; ".join(f"query {c['index']} {c['model']}: broken at norm {c['break_norm']:.4g} < certified "
                              f"{c['certified_radius']:.4g}" for c in alarm["cases"][:5])
            text = f"SOUNDNESS ALARM: {text}: {cases}" + (" ..." if len(alarm["cases"]) > 5 else "")
            if color:
                text = f"\033[31m{text}\033[0m"
        print(text)
