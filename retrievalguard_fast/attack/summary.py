"""Summaries of an attack run: empirical robust Recall@1 per attacked model (an upper bound on
the true one, up to the break tests' alpha), the certified Recall@1 beside it, and the soundness
alarm: certified queries broken inside their certified radius."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence

import numpy as np

from ..report.environment import device_text, versions
from ..report.metrics import accuracy_curve, certified_accuracy
from ..smoothing.record import ABSTAIN, CERTIFICATES

#: The certificate each smoothed model's attack tests (the registry's ``attacked_as``).
ATTACKED_CERTIFICATES = {c.attacked_as: c for c in CERTIFICATES if c.attacked_as is not None}


def robust_at(record: dict, model: str, radius: float) -> bool:
    """Whether the attack left the query correct at ``radius``: the clean reference is its true
    label and no attacked radius <= ``radius`` broke it (a point inside a smaller ball is inside
    this one)."""
    m = record[model]
    if m["reference"] != record["label"]:
        return False
    return m["break_radius"] is None or m["break_radius"] > radius


def empirical_recall(records: Sequence[dict], model: str, radii: Sequence[float]) -> Dict[str, float]:
    """Empirical robust Recall@1 (an upper bound on the true one, up to the tests' alpha) per radius."""
    return {str(float(r)): float(np.mean([robust_at(rec, model, float(r)) for rec in records])) if records else float("nan")
            for r in radii}


def soundness_alarm(records: Sequence[dict], certified: Dict[int, dict]) -> dict:
    """Certified queries broken inside their own certified radius.

    Two kinds of evidence, each a break confirmed with fresh noise at level alpha:

    - ``by_claim``: the attack of each certified claim at its own radius, against its own label
      (records' ``certified`` tests, :mod:`.claims`): vote, soft Gaussian and every Recall@K
      radius, whether or not the claim's label is the clean re-estimate's;
    - ``by_model``: a grid radius below a certified radius that broke the vote or soft model whose
      clean reference is the certified prediction (``disagree``: queries whose certified label is
      another; their claims are attacked in ``by_claim``).

    ``broken_inside_radius`` counts the queries with any such break."""
    out = {"broken_inside_radius": 0, "by_model": {}, "by_claim": {}, "cases": []}
    for model, certificate in ATTACKED_CERTIFICATES.items():
        counts = {"certified": 0, "broken_inside_radius": 0, "disagree": 0}
        for rec in records:
            claimed = certified.get(int(rec["index"]))
            if model not in rec or claimed is None:
                continue
            pred, radius = claimed.get(certificate.prediction_field), claimed.get(certificate.radius_field)
            if pred is None or pred == ABSTAIN or radius is None:
                continue
            counts["certified"] += 1
            m = rec[model]
            if m["reference"] != pred:
                counts["disagree"] += 1
                continue
            if m["break_norm"] is not None and m["break_norm"] < float(radius):
                counts["broken_inside_radius"] += 1
                out["cases"].append({"index": int(rec["index"]), "model": model, "certificate": certificate.key,
                                     "certified_radius": float(radius), "break_radius": m["break_radius"],
                                     "break_norm": m["break_norm"], "via": "grid"})
        out["by_model"][model] = counts
    for rec in records:
        for test in rec.get("certified", []):
            counts = out["by_claim"].setdefault(test["certificate"], {"tested": 0, "broken_inside_radius": 0})
            counts["tested"] += 1
            if test["broken"] and test["norm"] < test["radius"]:
                counts["broken_inside_radius"] += 1
                out["cases"].append({"index": int(rec["index"]), "model": test["model"], "certificate": test["certificate"],
                                     "certified_radius": float(test["radius"]), "break_radius": float(test["radius"]),
                                     "break_norm": test["norm"], "via": "certified radius"})
    out["broken_inside_radius"] = len({c["index"] for c in out["cases"]})
    return out


def attack_summary(records: Sequence[dict], params: dict, certified: Optional[dict], *, certified_folder: Optional[str],
                   device: Any, session_queries: int, session_seconds: float) -> dict:
    """Empirical robust Recall@1 per radius per attacked model, clean Recall@1 of each model's
    reference, the cost per query and, with the certified records (index -> record of
    certify), their certified Recall@1 over the same queries and the soundness alarm."""
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
        by_cert = {c.key: (np.array([rec[c.prediction_field] for _, rec in pairs]), [rec[c.radius_field] for _, rec in pairs])
                   for c in ATTACKED_CERTIFICATES.values()}
        cert = {key: dict(zip((str(r) for r in radii), certified_accuracy(p, rs, labels, radii)))
                for key, (p, rs) in by_cert.items()}
        curve = accuracy_curve(by_cert, labels, radii)
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
