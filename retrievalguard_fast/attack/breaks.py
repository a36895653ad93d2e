"""Break tests: is an attacked point's smoothed prediction, re-estimated with fresh noise, another
label than the clean reference, with confidence ``1 - alpha``? (docs/attack.md)"""

from __future__ import annotations

import math

import numpy as np

from ..smoothing.certificates import nearest_label as _nearest_row_label
from ..smoothing.stats import clopper_pearson_lower, clopper_pearson_upper, mean_embedding_deviation

_MARGIN_ALLOWANCE = 1e-9  # subtracted from every soft break margin, as the certificates do
SCREEN_LEVEL = 0.01  # a point that the test could break is screened out with probability at most this


def soft_deviation(samples: int, alpha: float, mean: np.ndarray, bound: str) -> float:
    """The soft model's concentration bound t (``|F̂ - F| <= t`` w.p. ``1 - alpha``) at the mean
    ``F̂`` of ``samples`` normalised embeddings: the one call of the project's bound, so the break
    test uses the certifier's bound (``bound``: :data:`~..smoothing.stats.SOFT_BOUNDS`)."""
    return mean_embedding_deviation(samples, alpha, len(mean), mean_norm=float(np.linalg.norm(mean)), bound=bound)


def vote_break_test(selection: np.ndarray, counts: np.ndarray, reference: int, alpha: float,
                    bound: str = "lower") -> dict:
    """Is the vote model's prediction some label other than ``reference``, with confidence
    ``1 - alpha``? ``selection``: votes of the n0 selection samples (they choose the rival c');
    ``counts``: votes of the n fresh test samples. Sign test of ``p_c' > p_ref``: broken when the
    Clopper-Pearson lower bound on the rival's share of the two exceeds 1/2. With
    ``bound="upper"`` (the screen) "broken" means only "not excluded": the upper bound exceeds 1/2."""
    rivals = selection.astype(np.int64).copy()
    if 0 <= reference < len(rivals):
        rivals[reference] = -1  # never the reference itself
    rival = int(np.argmax(rivals))
    ref_count = int(counts[reference]) if 0 <= reference < len(counts) else 0
    rival_count = int(counts[rival])
    total = ref_count + rival_count
    if bound == "upper":
        return {"broken": total > 0 and float(clopper_pearson_upper(rival_count, total, alpha)) > 0.5}
    low = float(clopper_pearson_lower(rival_count, total, alpha)) if total > 0 else 0.0
    return {"broken": low > 0.5, "rival": rival, "reference_count": ref_count, "rival_count": rival_count,
            "rival_share_lower": low}


def soft_break_margin(mean: np.ndarray, t: float, gallery, reference: int, exclude: int = -1, k: int = 1,
                      chunk: int = 256) -> float:
    """``min_p (k-th largest over b of (tau - u.F̂)) - t`` over rows p of ``reference`` and b of
    other labels (minus a 1e-9 allowance): positive iff every positive row p has k negatives b
    with ``u.F̂ + t < tau``, i.e. on the event ``|F̂ - F| <= t`` each of them is strictly closer
    to F than p. Then the nearest positive has k rows of other labels nearer than itself: for
    k = 1 the nearest row of F has another label, for k > 1 no row of ``reference`` is among the
    k nearest (Recall@k is 0). +inf when the reference label has no row, -inf when fewer than k
    rows have another label."""
    g, n2, labels = gallery.embeddings64, gallery.sq_norms64, gallery.labels_np
    keep = np.ones(len(labels), dtype=bool)
    if exclude >= 0:
        keep[exclude] = False
    pos, neg = np.flatnonzero(keep & (labels == reference)), np.flatnonzero(keep & (labels != reference))
    if len(pos) == 0:
        return math.inf
    if len(neg) < k:
        return -math.inf
    gn, n2n, fn = g[neg], n2[neg], g[neg] @ mean
    worst = math.inf
    for a in range(0, len(pos), chunk):
        p = pos[a : a + chunk]
        sep = np.sqrt(np.maximum(n2[p][:, None] + n2n[None, :] - 2.0 * g[p] @ gn.T, 1e-300))
        uf = ((g[p] @ mean)[:, None] - fn[None, :]) / sep  # u.F̂, u = (g_p - g_b)/|g_p - g_b|
        tau = (n2[p][:, None] - n2n[None, :]) / (2.0 * sep)
        # each p's k-th best beating negative
        kth = -np.partition(-(tau - uf), k - 1, axis=1)[:, k - 1]
        worst = min(worst, float(kth.min()))
    return worst - t - _MARGIN_ALLOWANCE


def nearest_label(mean: np.ndarray, gallery, exclude: int) -> int:
    """The soft model's label at the mean embedding ``mean``: its nearest gallery row's."""
    return int(_nearest_row_label(mean, gallery.embeddings64, gallery.sq_norms64, gallery.labels_np, exclude))
