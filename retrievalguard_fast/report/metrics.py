"""Metrics of a certification run, from its certificates: certified Recall@1 / Recall@K at the
asked radii, clean Recall@1, abstention rates, average certified radii and the certified-accuracy
curve, for every certificate of the registry (:data:`~..smoothing.record.CERTIFICATES`).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from ..smoothing.record import ABSTAIN, CERTIFICATES, RECALL_AT_K_CERTIFICATES, QueryCertificate
from ..smoothing.sequential import SEQUENTIAL
from .environment import device_text, versions

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


def accuracy_curve(by_cert: Dict[str, Tuple[np.ndarray, Sequence[Optional[float]]]], labels: np.ndarray,
                   radii: Sequence[float]) -> dict:
    """Certified Recall@1 of each certificate (``key -> (predictions, radii)``) on a grid of
    radii, from 0 to a little past the largest finite certified radius (or asked radius)."""
    finite = [v for _, rs in by_cert.values() for v in rs if v is not None and math.isfinite(v)]
    top = max(finite + [float(r) for r in radii] + [0.1]) * 1.05
    grid = np.linspace(0.0, top, CURVE_POINTS)
    curve = {"radius": [float(g) for g in grid]}
    for name, (pred, rs) in by_cert.items():
        curve[name] = certified_accuracy(pred, rs, labels, grid)
    return curve


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
    by_cert = {cert.key: (np.array([c.prediction(cert) for c in certs]), [c.radius(cert) for c in certs])
               for cert in CERTIFICATES}
    # One abstention rate per prediction (the soft certificates share theirs), in registry order.
    abstaining = {}
    for cert in CERTIFICATES:
        abstaining.setdefault(cert.abstains_with, by_cert[cert.key][0])

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
        "abstention_rate": {name: float(np.mean(pred == ABSTAIN)) if m else float("nan")
                            for name, pred in abstaining.items()},
        "average_certified_radius": {name: acr(p, rs) for name, (p, rs) in by_cert.items()},
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples / seconds if seconds > 0 else float("nan"),
    }
    recall_k = {}
    for k in ks:
        per = {}
        for cert in RECALL_AT_K_CERTIFICATES:
            rs = [c.soft_recall_at_k.get(k, {}).get(cert.key) for c in certs]
            r = np.array([-math.inf if v is None else v for v in rs])
            per[cert.key] = {str(rad): float(np.mean(r >= rad)) if m else float("nan") for rad in radii}
        recall_k[str(k)] = per
    out["certified_recall_at_k"] = recall_k
    if any(c.mode == SEQUENTIAL for c in certs):
        # A sequential query stops once every asked radius is decided, so its radius is exact
        # only at the asked radii: between them it is a lower bound of the fixed-n radius.
        out["average_certified_radius_is"] = "a lower bound (sequential mode: radii are exact only at the asked radii)"
    else:
        out["average_certified_radius_is"] = "exact (fixed-n mode)"
    out["certified_recall_curve"] = accuracy_curve(by_cert, labels, radii)
    return out


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
