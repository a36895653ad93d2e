"""Certified radii from Monte-Carlo results (docs/certification.md, "Notation" and sections 2-3).

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
_EPS = 2.0**-53  # float64 unit roundoff
# Pairs whose squared separation from the Gram expansion is below _CLOSE (k + 5) max(|g|^2, 1)
# are recomputed from differences: elsewhere the expansion's rounding (at most 4 (k + 5) eps
# max|g|^2) moves the separation by less than 1e-11 of itself (see _pair_terms).
_CLOSE = 2.25e-5
_ROUNDING_ALLOWANCE = 1e-9  # subtracted from every margin (in units of u.F), on top of the bounds


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

    (R_gauss is +inf when tau < -1, -inf when tau >= 1; margins are reduced by a rigorous bound on
    their float64 rounding, see _pair_terms, plus 1e-9). The query's radius is
    ``max_p min_b``; for Recall@K it is ``max_p`` of the K-th smallest over b. The ``exclude``
    row takes no part. No positive gives -inf (never certified); no negative gives +inf.

    ``prune`` skips positives that provably cannot raise the maximum (see below); the result is
    the same as without it up to float64 rounding, only faster. ``gallery_sq_norms`` must be
    float64 sums of squares of the rows (as ``Gallery.sq_norms64``): the rounding bounds assume it.
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

    # Pruning. For any K negatives B_K, the K-th smallest radius of p over all negatives is at
    # most max_{b in B_K} R(p, b). With B_K = the K negatives nearest F_hat (largest g_b.F_hat)
    # that gives cheap upper bounds U_K(p) for every positive; positives are visited in order of
    # decreasing U_1, and one whose bounds are below the best radii found so far (for every K and
    # both certificates) cannot raise them and is skipped. Two computations of one pair differ
    # by rounding (BLAS results depend on the matrix shapes), so the bounds use each pair's
    # margins loosened by twice their rounding bounds (_PairTerms.loosened): U_K(p) is at least
    # what the full computation would give, and a skip never lowers a radius.
    upper = None
    if prune and ks_open and len(pos) > chunk // 8:
        near = neg[np.argsort(-proj[neg], kind="stable")[: max(ks_open)]]
        t = _pair_terms(f, g, gallery_sq_norms, proj, pos, near, deviation).loosened()
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
        lower, tau, degenerate, always = t.lower, t.tau, t.degenerate, t.always  # (tau, always: computed once)
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
        lip_margin = t.lip_margin
        for k in ks_open:
            kth_lip = _kth_smallest(lip_margin, k)
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
    """The margin terms of (positive, negative) pairs, rows p x columns b, already reduced by
    their rounding bounds and the allowance (so they never overstate a radius)."""

    lower: np.ndarray       # lower bound on u.F, clipped to [-1, 1]; -inf for degenerate pairs
    tau_raw: np.ndarray     # upper bound on tau (before the clamps below); 0 for degenerate pairs
    degenerate: np.ndarray  # identical positive and negative rows: never separated
    uf_err: np.ndarray      # bound on the rounding error of the computed u.F_hat
    tau_err: np.ndarray     # bound on the rounding error of the computed tau

    @property
    def lip_margin(self) -> np.ndarray:
        return self.lower - self.tau_raw

    @property
    def always(self) -> np.ndarray:
        """tau < -1: the pair holds for every F (u.F >= -1 > tau), radius +inf."""
        return self.tau_raw < -1.0 - _ROUNDING_ALLOWANCE

    @property
    def tau(self) -> np.ndarray:
        """tau for the Gaussian radius: tau = -1 exactly would need u.F > -1 strictly, which the
        bound cannot show, so such pairs get tau = -1 + 1e-9 (a finite radius); 0 where `always`."""
        return np.where(self.always, 0.0, np.maximum(self.tau_raw, -1.0 + 1e-9))

    def loosened(self) -> "_PairTerms":
        """Margins at least as favourable as any other computation of the same pairs would give:
        each computed value is within its error bound of the exact one, so another computation's
        reduced margin is at most this one's plus twice the bound."""
        lower = np.minimum(self.lower + 2.0 * self.uf_err, 1.0)
        lower[self.degenerate] = -math.inf
        return _PairTerms(lower, self.tau_raw - 2.0 * self.tau_err, self.degenerate, self.uf_err, self.tau_err)


def _pair_terms(f, g, sq_norms, proj, p, b, deviation, g_neg=None) -> _PairTerms:
    """Margin terms of every (positive p, negative b) pair, with rigorous rounding bounds.

    From the Gram expansion: |g_p - g_b|^2 = n_p + n_b - 2 g_p.g_b, u.F = (g_p.F - g_b.F)/sep,
    tau = (n_p - n_b)/(2 sep), where every dot product (in any summation order) and the squared
    norms ``sq_norms`` (float64 sums of squares) carry at most (k + 1) eps of their magnitudes.
    With M = max(n_p, n_b, 1): |error of sep^2| <= 4 (k + 5) eps M, so sep is off by at most
    rel = 2 (k + 5) eps M / sep^2 of itself; u.F by |u.F| (rel + 4 eps) + 2 (k + 2) eps sqrt(M) |F| / sep;
    tau by |tau| (rel + 4 eps) + (k + 2) eps M / sep. Pairs where rel could exceed ~1e-11 are
    recomputed from d = g_p - g_b: sep^2 = d.d, u.F = d.F / sep, tau = d.(g_p + g_b) / (2 sep),
    with errors (k + 2) eps |F| + (k + 5) eps |u.F| and (k + 4) eps sqrt(M) + (k + 5) eps |tau|.
    Every bound is subtracted from the margin (with the fixed allowance on top).
    """
    g_pos, g_b = g[p], (g[b] if g_neg is None else g_neg)
    n2_pos, n2_b = sq_norms[p], sq_norms[b]
    k = g.shape[1]
    f_norm = float(np.sqrt(f @ f)) * (1.0 + 1e-12)
    big = np.maximum(np.maximum(n2_pos[:, None], n2_b[None, :]), 1.0)  # M
    sep2 = n2_pos[:, None] + n2_b[None, :] - 2.0 * (g_pos @ g_b.T)
    close = sep2 < _CLOSE * (k + 5) * big
    with np.errstate(divide="ignore", invalid="ignore"):
        sep = np.sqrt(np.maximum(sep2, 0.0))
        uf = (proj[p][:, None] - proj[b][None, :]) / sep
        tau = (n2_pos[:, None] - n2_b[None, :]) / (2.0 * sep)
        rel = 2.0 * (k + 5) * _EPS * big / sep2
        uf_err = (np.abs(uf) * (rel + 4.0 * _EPS) + 2.0 * (k + 2) * _EPS * np.sqrt(big) * f_norm / sep) * 1.01
        tau_err = (np.abs(tau) * (rel + 4.0 * _EPS) + (k + 2) * _EPS * big / sep) * 1.01
    # Close pairs from differences, vectorised in blocks (row-wise sums: each pair's value does
    # not depend on which other pairs are in the block).
    ii, jj = np.nonzero(close)
    for a in range(0, len(ii), 1 << 16):
        i, j = ii[a : a + (1 << 16)], jj[a : a + (1 << 16)]
        d = g_pos[i] - g_b[j]
        s = np.sqrt((d * d).sum(axis=1))
        sep[i, j] = s
        with np.errstate(divide="ignore", invalid="ignore"):
            u = (d * f).sum(axis=1) / s
            t = (d * (g_pos[i] + g_b[j])).sum(axis=1) / (2.0 * s)
        uf[i, j], tau[i, j] = u, t
        m = big[i, j]
        uf_err[i, j] = ((k + 2) * _EPS * f_norm + (k + 5) * _EPS * np.abs(u)) * 1.01
        tau_err[i, j] = ((k + 4) * _EPS * np.sqrt(m) + (k + 5) * _EPS * np.abs(t)) * 1.01
    degenerate = sep == 0.0  # identical positive and negative rows can never be separated
    # u.F >= u.F_hat - deviation on the Monte-Carlo event, and |u.F| <= |F| <= 1.
    lower = np.clip(uf - deviation - _ROUNDING_ALLOWANCE - uf_err, -1.0, 1.0)
    tau_raw = tau + _ROUNDING_ALLOWANCE + tau_err
    lower[degenerate] = -math.inf
    tau_raw[degenerate] = 0.0
    uf_err[degenerate] = 0.0
    tau_err[degenerate] = 0.0
    return _PairTerms(lower, tau_raw, degenerate, uf_err, tau_err)


def _gauss_all(t: _PairTerms, sigma: float) -> np.ndarray:
    """R_gauss of every pair, with its infinite values."""
    tau, always = t.tau, t.always
    with np.errstate(divide="ignore", invalid="ignore"):
        gauss = sigma * (_half_quantile(t.lower) - _half_quantile(np.minimum(tau, 1.0)))
    gauss = np.where(always, math.inf, np.where(tau >= 1.0, -math.inf, gauss))
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
