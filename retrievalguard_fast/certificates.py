"""Certified radii from Monte-Carlo results (DESIGN.md section 3; derivations in docs/certification.md).

Pure float64 numpy functions, separate from sampling so they can be checked on their own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
from scipy.special import ndtri  # standard normal quantile Phi^-1

from .stats import clopper_pearson_lower

LIPSCHITZ_FACTOR = math.sqrt(math.pi / 2.0)  # F is sqrt(2/pi)/sigma-Lipschitz along any unit u
# Pairs of gallery rows closer than this (squared) get their distance recomputed directly,
# so a near-duplicate pair never has its separation (the denominator of the margin) underestimated.
_NEAR_DUPLICATE2 = 1e-6  # relative to the rows' squared norms
_ROUNDING_ALLOWANCE = 1e-9  # subtracted from every margin (in units of u.F), see soft_radii


def vote_radius(count: int, n: int, alpha: float, sigma: float):
    """Cohen et al. CERTIFY's radius for ``count`` of ``n`` fresh votes for the selected label.

    Returns ``(p_lower, radius)``: the one-sided (1 - alpha) Clopper-Pearson lower bound on the
    top label's probability, and ``sigma * Phi^-1(p_lower)`` when ``p_lower > 1/2``, else None
    (abstain).
    """
    p_lower = float(clopper_pearson_lower(int(count), int(n), alpha))
    if p_lower <= 0.5:
        return p_lower, None
    return p_lower, float(sigma * ndtri(p_lower))


@dataclass
class SoftRadii:
    """Radii of the soft (smoothed-embedding) model for one query and one class."""

    gaussian: float  # max_p min_b R_gauss(p, b); <= 0 means not certified
    lipschitz: float
    gaussian_at_k: Dict[int, float]  # max_p (K-th smallest over b of R_gauss(p, b))
    lipschitz_at_k: Dict[int, float]


def soft_radii(
    mean_embedding: np.ndarray,
    deviation: float,
    gallery: np.ndarray,
    gallery_sq_norms: np.ndarray,
    gallery_labels: np.ndarray,
    label: int,
    sigma: float,
    exclude: int = -1,
    ks: Sequence[int] = (1,),
    chunk: int = 64,
    prune: bool = True,
) -> SoftRadii:
    """Gaussian and Lipschitz radii for "a gallery row of ``label`` is the nearest (or among the
    K nearest) to the smoothed embedding F".

    For a positive p (label ``label``) and a negative b (any other label) the pair holds while
    ``u.F > tau`` with ``u = (g_p - g_b)/|g_p - g_b|`` and ``tau = (|g_p|^2 - |g_b|^2)/(2|g_p - g_b|)``.
    ``u.F`` is bounded below by ``u.F_hat - deviation`` (valid for every direction at once), then

        R_lip(p, b)   = sigma sqrt(pi/2) (u.F_hat - deviation - tau)
        R_gauss(p, b) = sigma [Phi^-1((1 + u.F_hat - deviation)/2) - Phi^-1((1 + tau)/2)]

    (R_gauss is +inf when tau < -1, -inf when tau >= 1; margins are reduced by 1e-9 to absorb
    float64 rounding). The query's radius is
    ``max_p min_b``; for Recall@K it is ``max_p`` of the K-th smallest over b. The ``exclude``
    row takes no part. No positive gives -inf (never certified); no negative gives +inf.

    ``prune`` skips positives that provably cannot raise the maximum (see below); the result is
    the same as without it (the tests compare both), only faster.
    """
    f = np.asarray(mean_embedding, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    labels = np.asarray(gallery_labels)
    keep = np.ones(len(g), dtype=bool)
    if exclude is not None and exclude >= 0:
        keep[exclude] = False
    pos = np.flatnonzero(keep & (labels == label))
    neg = np.flatnonzero(keep & (labels != label))
    ks = sorted(set(int(k) for k in ks) | {1})  # K = 1 is the query's radius itself
    if len(pos) == 0:
        none = {k: -math.inf for k in ks}
        return SoftRadii(-math.inf, -math.inf, dict(none), dict(none))
    if len(neg) == 0:
        inf = {k: math.inf for k in ks}
        return SoftRadii(math.inf, math.inf, dict(inf), dict(inf))

    proj = g @ f  # g_j . F_hat
    best_gauss = {k: -math.inf for k in ks}
    best_lip = {k: -math.inf for k in ks}
    for k in ks:
        if k > len(neg):  # fewer negatives than K: a positive is always in the top K
            best_gauss[k] = best_lip[k] = math.inf
    ks_open = [k for k in ks if k <= len(neg)]

    # Pruning (exact). For any K negatives B_K, the K-th smallest radius of p over all negatives is
    # at most max_{b in B_K} R(p, b). With B_K = the K negatives nearest F_hat (largest g_b.F_hat)
    # that gives cheap upper bounds U_K(p) for every positive; positives are visited in order of
    # decreasing U_1, and one whose bounds are below the best radii found so far (for every K and
    # both certificates, with a 1e-9 relative margin for rounding differences between the two
    # computations) cannot change the result and is skipped.
    upper = None
    if prune and ks_open and len(pos) > chunk // 8:
        near = neg[np.argsort(-proj[neg], kind="stable")[: max(ks_open)]]
        t = _pair_terms(f, g, gallery_sq_norms, proj, pos, near, deviation)
        gauss = _gauss_all(t, sigma)
        lip = sigma * LIPSCHITZ_FACTOR * t.lip_margin
        upper = {k: (np.max(gauss[:, :k], axis=1), np.max(lip[:, :k], axis=1)) for k in ks_open}
        order = np.argsort(-upper[1][0], kind="stable")
        pos = pos[order]
        upper = {k: (ug[order], ul[order]) for k, (ug, ul) in upper.items()}

    g_neg = g[neg]
    a = 0
    first = max(1, chunk // 8) if upper is not None else chunk  # a small first chunk sets the bar
    while a < len(pos):
        b = a + (first if a == 0 else chunk)
        p = pos[a:b]
        if upper is not None:
            useful = np.zeros(len(p), dtype=bool)
            for k in ks_open:
                ug, ul = upper[k][0][a:b], upper[k][1][a:b]
                useful |= ~(ug < _below(best_gauss[k])) | ~(ul < _below(best_lip[k]))
            p = p[useful]
        a = b
        if len(p) == 0:
            continue
        t = _pair_terms(f, g, gallery_sq_norms, proj, p, neg, deviation, g_neg=g_neg)
        lower, tau, degenerate, always = t.lower, t.tau, t.degenerate, t.always
        # Gaussian radius R_gauss(p, b) = sigma [N(lower_pb) - N(tau_pb)], N(v) = Phi^-1((1 + v)/2).
        # Quantiles are the cost, so only candidate pairs are evaluated: N is increasing with
        # slope >= sqrt(pi/2), so a negative b with lower_pb > lower_(K) + delta_p, where
        # delta_p = (N(max_b tau_pb) - N(min_b tau_pb)) / sqrt(pi/2), has R_gauss(p, b) >= the
        # radius of each of the K negatives of smallest lower_pb; the K-th smallest radius is
        # therefore attained among the candidates, and the result is exact. (A normalised float32
        # gallery has tau within ~1e-7 of 0, so delta_p is tiny and there are few candidates.)
        exact_tau = not always.any() and float(tau.max()) < 1.0
        if exact_tau:
            tau_term_max = _half_quantile(tau.max(axis=1))
            tau_term_min = _half_quantile(tau.min(axis=1))
            delta = (tau_term_max - tau_term_min) / LIPSCHITZ_FACTOR * (1.0 + 1e-9) + 1e-15
        else:  # some tau <= -1 or >= 1: every pair exactly, with its infinite radii
            gauss_all = _gauss_all(t, sigma)
        for k in ks_open:
            kth_lip = _kth_smallest(t.lip_margin, k)
            best_lip[k] = max(best_lip[k], float(sigma * LIPSCHITZ_FACTOR * kth_lip.max()))
            if exact_tau:
                candidate = lower <= (_kth_smallest(lower, k) + delta)[:, None]
                gauss = np.full(lower.shape, math.inf)
                with np.errstate(invalid="ignore"):
                    gauss[candidate] = sigma * (_half_quantile(lower[candidate]) - _half_quantile(tau[candidate]))
                gauss[degenerate] = -math.inf
                kth = _kth_smallest(gauss, k)
            else:
                kth = _kth_smallest(gauss_all, k)
            kth = np.nan_to_num(kth, nan=-math.inf, posinf=math.inf, neginf=-math.inf)
            best_gauss[k] = max(best_gauss[k], float(kth.max()))
    return SoftRadii(best_gauss[1], best_lip[1], best_gauss, best_lip)


def _below(best: float) -> float:
    """A bound strictly under which an upper bound cannot reach ``best`` (1e-9 relative margin)."""
    return best - 1e-9 * max(1.0, abs(best)) if math.isfinite(best) else best


@dataclass
class _PairTerms:
    lower: np.ndarray       # lower bound on u.F, clipped to [-1, 1]; -inf for degenerate pairs
    tau: np.ndarray         # tau + allowance, kept in [-1 + 1e-9, ...); 0 where `always`
    degenerate: np.ndarray  # identical positive and negative rows: never separated
    always: np.ndarray      # tau < -1: the pair holds for every F (infinite Gaussian radius)
    lip_margin: np.ndarray  # lower - tau (before the Gaussian-specific tau clamp)


def _pair_terms(f, g, sq_norms, proj, p, b, deviation, g_neg=None) -> _PairTerms:
    """The margin terms of every (positive p, negative b) pair, rows p x columns b."""
    g_pos, g_b = g[p], (g[b] if g_neg is None else g_neg)
    n2_pos, n2_b = sq_norms[p], sq_norms[b]
    sep2 = n2_pos[:, None] + n2_b[None, :] - 2.0 * (g_pos @ g_b.T)  # |g_p - g_b|^2
    with np.errstate(divide="ignore", invalid="ignore"):
        sep = np.sqrt(np.maximum(sep2, 0.0))
        uf = (proj[p][:, None] - proj[b][None, :]) / sep
        tau = (n2_pos[:, None] - n2_b[None, :]) / (2.0 * sep)
    # Pairs close relative to their norms lose digits to cancellation in the expansions
    # above: recompute them from differences, tau as (g_p - g_b).(g_p + g_b) / (2 sep).
    close = sep2 < _NEAR_DUPLICATE2 * np.maximum(np.maximum(n2_pos[:, None], n2_b[None, :]), 1.0)
    for i, j in np.argwhere(close):
        d = g_pos[i] - g_b[j]
        sep[i, j] = math.sqrt(float(d @ d))
        if sep[i, j] > 0:
            uf[i, j] = float(d @ f) / sep[i, j]
            tau[i, j] = float(d @ (g_pos[i] + g_b[j])) / (2.0 * sep[i, j])
    degenerate = sep == 0.0  # identical positive and negative rows can never be separated
    # u.F >= u.F_hat - deviation on the Monte-Carlo event, and |u.F| <= |F| <= 1. The
    # allowance covers float64 rounding in u.F_hat and tau (errors ~1e-13 here), so the
    # margin is never overstated; it costs ~1e-9 sigma of radius.
    lower = np.clip(uf - deviation - _ROUNDING_ALLOWANCE, -1.0, 1.0)
    tau = tau + _ROUNDING_ALLOWANCE
    lower[degenerate] = -math.inf
    tau[degenerate] = 0.0
    lip_margin = lower - tau
    # tau < -1: the pair holds for every F (u.F >= -1 > tau), radius +inf. tau = -1 exactly
    # would need u.F > -1 strictly, which the bound cannot show: such pairs (within the
    # allowance) get tau = -1 + 1e-9, a finite radius. tau >= 1: never holds.
    always = tau < -1.0 - _ROUNDING_ALLOWANCE
    tau = np.where(always, 0.0, np.maximum(tau, -1.0 + 1e-9))
    return _PairTerms(lower, tau, degenerate, always, lip_margin)


def _gauss_all(t: _PairTerms, sigma: float) -> np.ndarray:
    """R_gauss of every pair, with its infinite values."""
    with np.errstate(divide="ignore", invalid="ignore"):
        gauss = sigma * (_half_quantile(t.lower) - _half_quantile(np.minimum(t.tau, 1.0)))
    gauss = np.where(t.always, math.inf, np.where(t.tau >= 1.0, -math.inf, gauss))
    gauss[t.degenerate] = -math.inf
    return gauss


def _half_quantile(v):
    """N(v) = Phi^-1((1 + v)/2), with N(-inf) = N(-1) = -inf and N(1) = +inf."""
    with np.errstate(invalid="ignore"):
        return ndtri((1.0 + np.maximum(v, -1.0)) / 2.0)


def _kth_smallest(a: np.ndarray, k: int) -> np.ndarray:
    """K-th smallest (1-based) along axis 1."""
    return a.min(axis=1) if k == 1 else np.partition(a, k - 1, axis=1)[:, k - 1]


def nearest_label(vector: np.ndarray, gallery: np.ndarray, gallery_sq_norms: np.ndarray,
                  gallery_labels: np.ndarray, exclude: int = -1) -> Optional[int]:
    """Label of the gallery row nearest to ``vector`` in float64 (ties: lower index)."""
    d = gallery_sq_norms - 2.0 * (np.asarray(gallery, dtype=np.float64) @ np.asarray(vector, dtype=np.float64))
    if exclude is not None and exclude >= 0:
        d[exclude] = np.inf
    if not np.isfinite(d).any():
        return None
    return int(np.asarray(gallery_labels)[int(np.argmin(d))])
