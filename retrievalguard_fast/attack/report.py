"""Reports of an attack run from its summary: the rows of summary.csv, the certified-vs-empirical
plot and the terminal table (with the soundness alarm)."""

from __future__ import annotations

from typing import Iterator, List

from ..report.writer import figure, save, write_summary_files
from .summary import ATTACKED_CERTIFICATES

PLOT = "attack_vs_certified.png"
#: Display name and colour of each attacked model.
MODEL_STYLES = {"vote": ("vote", "C0"), "soft": ("soft", "C1"), "base": ("base (no noise)", "C2")}


def budget_text(p: dict) -> str:
    """The attack's budget as run: the base model draws no noise."""
    draws = f" x {p['eot']} noise draws" if any(m != "base" for m in p["models"]) else ""
    base = " (base: no noise)" if draws and "base" in p["models"] else ""
    starts = f"{p['restarts']} restarts"
    if "targets" in p:  # record format 2 on: the class-wide candidates
        starts += f" + 1 against all rival classes + {p['targets']} targeted"
    return f"PGD {p['steps']} steps{draws}{base}, {starts} per radius"


def csv_rows(summary: dict) -> Iterator[List]:
    for model, values in summary["empirical_robust_recall_at_1"].items():
        for r, v in values.items():
            yield [model, "empirical_robust_recall_at_1", r, v]
    for cert, values in summary.get("certified", {}).get("certified_recall_at_1", {}).items():
        for r, v in values.items():
            yield [cert, "certified_recall_at_1", r, v]
    if "certified" in summary:
        yield ["all", "certified_broken_inside_radius", "", summary["certified"]["alarm"]["broken_inside_radius"]]


def write_attack_reports(out: str, summary: dict) -> None:
    """summary.json, summary.csv and attack_vs_certified.png in ``out``, each replaced atomically."""
    write_summary_files(out, summary, csv_rows(summary), plot_attack, PLOT)


def plot_attack(summary: dict, path: str) -> None:
    """Per model: certified Recall@1 (solid, a lower bound) and empirical robust Recall@1 under
    the attack (dashed steps through the attacked radii, an upper bound)."""
    fig, ax = figure()
    cert = summary.get("certified")
    top = summary["radii"][-1] * 1.05 or 0.1
    for model, (name, color) in MODEL_STYLES.items():
        certificate = ATTACKED_CERTIFICATES.get(model)  # None for the base model
        if model not in summary["empirical_robust_recall_at_1"]:
            continue
        if cert is not None and certificate is not None:
            curve = cert["certified_recall_curve"]
            ax.plot(curve["radius"], curve[certificate.key], color=color, lw=2,
                    label=f"{name}: certified ({certificate.plot_label}), lower")
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
             f"queries\n{budget_text(p)}; breaks tested at alpha={p['alpha']}")
    if cert is not None:
        title += f"; {cert['alarm']['broken_inside_radius']} certified queries broken inside their radius"
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7, loc="upper right")
    save(fig, path)


def print_attack_table(summary: dict, color: bool = False) -> None:
    radii = summary["radii"]
    p = summary["parameters"]
    head = "".join(f"{'r=' + format(r, 'g'):>9}" for r in radii)
    print(f"\nrobust Recall@1 ({summary['num_queries']} queries; attack: {budget_text(p)}; "
          f"breaks tested with fresh noise at alpha={p['alpha']})")
    print(f"  {'model':<30}{head}")
    cert = summary.get("certified")
    for model, (name, _) in MODEL_STYLES.items():
        certificate = ATTACKED_CERTIFICATES.get(model)  # None for the base model
        if model not in summary["empirical_robust_recall_at_1"]:
            continue
        if cert is not None and certificate is not None:
            vals = cert["certified_recall_at_1"][certificate.key]
            label = f"{certificate.table_label}, certified"
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
        per = ", ".join(f"{k} {v['broken_inside_radius']} of {v['tested']}" for k, v in alarm.get("by_claim", {}).items())
        grid = ", ".join(f"{k} {v['broken_inside_radius']} of {v['certified']}" for k, v in alarm["by_model"].items())
        text = (f"soundness: {alarm['broken_inside_radius']} certified queries broken inside their own certified radius "
                f"(attacked at the certified radius: {per or 'no claims'}; at grid radii below it: {grid})")
        if alarm["broken_inside_radius"]:
            cases = "; ".join(f"query {c['index']} {c['certificate']}: broken at norm {c['break_norm']:.4g} < certified "
                              f"{c['certified_radius']:.4g}" for c in alarm["cases"][:5])
            text = f"SOUNDNESS ALARM: {text}: {cases}" + (" ..." if len(alarm["cases"]) > 5 else "")
            if color:
                text = f"\033[31m{text}\033[0m"
        print(text)
