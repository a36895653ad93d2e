"""Several certification runs side by side (``compare``): certified Recall@1 against radius for the
vote and the soft (Gaussian) certificate of each, in one plot and one table (terminal, Markdown,
LaTeX), with the distribution of each query's noisy Recall@1 beside it.

A query's noisy Recall@1 is the fraction of its fresh noisy samples whose 1-NN label is the true
label (``label_count / vote_n``, record format 2). It is shown because an average certified
radius alone can be gamed (Sun et al., ICML 2025): a model may raise it with a few very large
radii while most queries' noisy retrieval gets worse, which the distribution shows.
"""

from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..durable import atomic_write
from ..smoothing.record import QueryCertificate
from .metrics import summarize
from .writer import figure, save, write_summary_files

#: The certificates compared: (summary key, row label, line style).
COMPARED = (("vote", "vote", "-"), ("gaussian", "soft", "--"))
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
PLOT = "compare.png"


def _noisy_recall(records: Sequence[dict]) -> Optional[np.ndarray]:
    values = [r["label_count"] / r["vote_n"] for r in records if r.get("label_count") is not None and r.get("vote_n")]
    return np.asarray(values, dtype=np.float64) if values else None


def compare_runs(runs: Sequence[Tuple[str, dict, List[dict]]], radii: Sequence[float]) -> dict:
    """``runs``: (name, run.json parameters, records) of each certify folder -> the comparison."""
    rows = []
    for name, params, records in runs:
        s = summarize([QueryCertificate.from_dict(r) for r in records], radii)
        noisy = _noisy_recall(records)
        norms = [r["soft_mean_norm"] for r in records if r.get("soft_mean_norm") is not None]
        rows.append({
            "name": name, "sigma": params.get("sigma"), "model_training_sigma": params.get("model_training_sigma"),
            "mode": params.get("mode"), "num_queries": s["num_queries"], "clean_recall_at_1": s["clean_recall_at_1"],
            "certified_recall_at_1": {key: s["certified_recall_at_1"][key] for key, _, _ in COMPARED},
            "average_certified_radius": {key: s["average_certified_radius"][key] for key, _, _ in COMPARED},
            "curve": {k: v for k, v in s["certified_recall_curve"].items() if k in ("radius", "vote", "gaussian")},
            "noisy_recall_at_1": None if noisy is None else {
                "queries": int(len(noisy)), "mean": float(noisy.mean()),
                "quantiles": {str(q): float(np.quantile(noisy, q)) for q in QUANTILES}, "values": noisy.tolist()},
            "mean_soft_norm": float(np.mean(norms)) if norms else None,
            "queries_sha256": params.get("queries_sha256"),
        })
    return {"radii": [float(r) for r in radii], "runs": rows,
            "average_certified_radius_is": "exact at the asked radii only for sequential runs (a lower bound)"}


# ---------------------------------------------------------------------- tables


def _sigma(row) -> str:
    trained = row["model_training_sigma"]
    mismatch = trained is not None and np.float32(trained) != np.float32(row["sigma"])
    return f"{row['sigma']:g}" + (f" (trained {trained:g})" if mismatch else "")


def _noisy(row) -> str:
    n = row["noisy_recall_at_1"]
    if n is None:
        return "n/a"
    q = n["quantiles"]
    return f"{q['0.5']:.3f} [{q['0.25']:.3f}, {q['0.75']:.3f}]"


def table_rows(comparison: dict) -> Tuple[List[str], List[List[str]]]:
    """The header and rows every table format shares: one row per run and certificate."""
    header = ["run", "sigma", "certificate", "clean R@1"] + [f"r={r:g}" for r in comparison["radii"]] + \
             ["ACR", "noisy R@1 median [IQR]", "mean |F|"]
    rows = []
    for row in comparison["runs"]:
        for key, label, _ in COMPARED:
            recall = row["certified_recall_at_1"][key]
            norm = "" if row["mean_soft_norm"] is None else f"{row['mean_soft_norm']:.3f}"
            rows.append([row["name"], _sigma(row), label, f"{row['clean_recall_at_1']:.3f}"]
                        + [f"{recall[str(float(r))]:.3f}" for r in comparison["radii"]]
                        + [f"{row['average_certified_radius'][key]:.3f}", _noisy(row), norm])
    return header, rows


def terminal_table(comparison: dict) -> str:
    header, rows = table_rows(comparison)
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if k < 3 else c.rjust(w) for k, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def markdown_table(comparison: dict) -> str:
    header, rows = table_rows(comparison)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" if k < 3 else "---:" for k in range(len(header))) + "|"]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def latex_table(comparison: dict) -> str:
    header, rows = table_rows(comparison)
    esc = lambda t: t.replace("\\", "\\textbackslash{}").replace("_", "\\_").replace("%", "\\%").replace("&", "\\&") \
        .replace("#", "\\#").replace("|F|", "$|F|$")  # noqa: E731
    out = ["\\begin{tabular}{lll" + "r" * (len(header) - 3) + "}", "\\toprule", " & ".join(map(esc, header)) + " \\\\",
           "\\midrule"]
    out += [" & ".join(map(esc, r)) + " \\\\" for r in rows]
    return "\n".join(out + ["\\bottomrule", "\\end{tabular}"]) + "\n"


# ---------------------------------------------------------------------- plot and files


def plot(comparison: dict, target) -> None:
    """Left: certified Recall@1 against radius (vote solid, soft dashed, one colour per run);
    right: each run's distribution of per-query noisy Recall@1."""
    fig, _ = figure()
    fig.clear()
    fig.set_size_inches(11, 4.5)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    names = []
    for k, row in enumerate(comparison["runs"]):
        colour = f"C{k % 10}"
        for key, label, style in COMPARED:
            left.plot(row["curve"]["radius"], row["curve"][key], style, color=colour, lw=2,
                      label=f"{row['name']} (sigma {_sigma(row)}), {label}")
        names.append(row["name"])
    left.set_xlabel("l2 radius (input space)")
    left.set_ylabel("certified Recall@1")
    left.set_ylim(0, 1.02)
    left.set_xlim(0, max(r["curve"]["radius"][-1] for r in comparison["runs"]))
    left.grid(alpha=0.3)
    left.legend(fontsize=7, loc="upper right")
    title = "certified Recall@1 (solid: vote, dashed: soft Gaussian)"
    if any(r["mode"] == "sequential" for r in comparison["runs"]):
        title += "\nsequential runs: exact at their asked radii, a lower bound between them"
    left.set_title(title, fontsize=9)
    data = [r["noisy_recall_at_1"]["values"] if r["noisy_recall_at_1"] else [np.nan] for r in comparison["runs"]]
    parts = right.boxplot(data, showmeans=True, patch_artist=True)
    for k, box in enumerate(parts["boxes"]):
        box.set_facecolor(f"C{k % 10}")
        box.set_alpha(0.5)
    # Rotated and right-aligned so that long folder names of many runs do not overlap.
    right.set_xticks(range(1, len(names) + 1), names, rotation=35 if len(names) > 4 else 20, ha="right",
                     rotation_mode="anchor", fontsize=7)
    right.set_ylim(-0.02, 1.02)
    right.set_ylabel("noisy Recall@1 per query")
    right.set_title("fraction of noisy samples retrieving the true label", fontsize=9)
    right.grid(alpha=0.3, axis="y")
    save(fig, target)


def write_comparison(out: str, comparison: dict) -> None:
    """``out``: summary.json and summary.csv (the comparison), compare.md, compare.tex, compare.png."""
    os.makedirs(out, exist_ok=True)
    rows = [(row["name"], f"certified_recall_at_1/{key}", r, row["certified_recall_at_1"][key][str(float(r))])
            for row in comparison["runs"] for key, _, _ in COMPARED for r in comparison["radii"]]
    write_summary_files(out, comparison, rows, plot, PLOT)
    atomic_write(os.path.join(out, "compare.md"), lambda f: f.write(markdown_table(comparison)))
    atomic_write(os.path.join(out, "compare.tex"), lambda f: f.write(latex_table(comparison)))
