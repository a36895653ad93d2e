"""Reports of a certification run from its summary (:func:`~.metrics.run_summary`): the rows of
summary.csv, the certified-Recall@1 plot and the terminal table, one line per registered
certificate (:data:`~..smoothing.record.CERTIFICATES`)."""

from __future__ import annotations

from typing import Iterator, List

from ..smoothing.record import CERTIFICATES, RECALL_AT_K_CERTIFICATES
from ..smoothing.sequential import SEQUENTIAL
from .writer import figure, save, write_summary_files

PLOT = "certified_recall.png"


def csv_rows(summary: dict) -> Iterator[List]:
    yield ["clean", "recall_at_1", 0.0, summary["clean_recall_at_1"]]
    yield ["soft", "soft_bound", "", summary["soft_bound"]]  # the bound behind the soft certificates
    for cert, values in summary["certified_recall_at_1"].items():
        for r, v in values.items():
            yield [cert, "certified_recall_at_1", r, v]
    for k, per in summary["certified_recall_at_k"].items():
        for cert, values in per.items():
            for r, v in values.items():
                yield [cert, f"certified_recall_at_{k}", r, v]
    for model, v in summary["abstention_rate"].items():
        yield [model, "abstention_rate", "", v]
    for cert, v in summary["average_certified_radius"].items():
        yield [cert, "average_certified_radius", "", v]


def write_reports(out: str, summary: dict) -> None:
    """summary.json, summary.csv and certified_recall.png in ``out``, each replaced atomically."""
    write_summary_files(out, summary, csv_rows(summary), plot, PLOT)


def plot(summary: dict, target) -> None:
    """certified Recall@1 against radius, one curve per certificate, from the summary alone."""
    curve = summary["certified_recall_curve"]
    fig, ax = figure()
    for cert in CERTIFICATES:
        ax.plot(curve["radius"], curve[cert.key], label=cert.plot_label, color=cert.colour, lw=2)
        asked = summary["certified_recall_at_1"][cert.key]
        ax.plot([float(r) for r in asked], list(asked.values()), "o", color=cert.colour, ms=5)
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
    save(fig, target)


def print_table(summary: dict) -> None:
    radii = summary["radii"]
    head = "".join(f"{'r=' + format(r, 'g'):>9}" for r in radii)
    print(f"\ncertified Recall@1 ({summary['num_queries']} queries; clean Recall@1 = {summary['clean_recall_at_1']:.3f}; "
          f"soft radii from the {summary['soft_bound']} bound)")
    print(f"  {'certificate':<22}{head}{'abstain':>9}")
    for cert in CERTIFICATES:
        vals = summary["certified_recall_at_1"][cert.key]
        abst = summary["abstention_rate"][cert.abstains_with]
        print(f"  {cert.table_label:<22}" + "".join(f"{vals[str(r)]:>9.3f}" for r in radii) + f"{abst:>9.3f}")
    for k, per in summary["certified_recall_at_k"].items():
        if k == "1":
            continue
        for cert in RECALL_AT_K_CERTIFICATES:
            vals = per[cert.key]
            print(f"  {'Recall@' + k + ', ' + cert.key:<22}" + "".join(f"{vals[str(r)]:>9.3f}" for r in radii))
    acr = summary["average_certified_radius"]
    kind = "a lower bound: radii are exact only at the asked radii" if summary["mode"] == SEQUENTIAL else "exact"
    print("  average certified radius: " + ", ".join(f"{_acr_label(c.key)} {acr[c.key]:.3f}" for c in CERTIFICATES)
          + f" ({kind})")
    s = summary["this_session"]
    rate = f", {s['samples_per_second']:,.0f} noisy samples/s" if s["samples_per_second"] else ""
    if s["queries"] == 0:
        print(f"\n(all {summary['num_queries']} queries were already certified in this folder; the table is "
              "theirs. Delete the folder or pass another --out to recompute.)")
    mean_samples = summary["samples"] / max(summary["num_queries"], 1)
    print(f"\n{s['queries']} queries certified in {s['seconds']:.1f} s on {summary['device']}{rate}; "
          f"mode {summary['mode']}, {mean_samples:,.0f} samples per query on average")


def _acr_label(key: str) -> str:
    """vote, soft Gaussian, soft Lipschitz: the average-radius line's names."""
    return "vote" if key == "vote" else f"soft {key.capitalize()}"
