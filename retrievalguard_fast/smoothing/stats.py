"""Confidence bounds used by the certificates (derivations: docs/certification.md).

All in float64 on the host, with scipy for the beta quantiles (never a hand-written approximation).
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import numpy as np
from scipy import optimize, stats

# The Monte-Carlo bound on |F_hat - F| behind every soft radius (docs/certification.md, section 3).
BENNETT = "bennett"  # Pinelis' Bennett inequality in Hilbert space, variance from the same samples
MCDIARMID = "mcdiarmid"  # the published RetrievalGuard form
SOFT_BOUNDS = (BENNETT, MCDIARMID)


def _check_counts(successes, trials, alpha):
    k = np.asarray(successes)
    n = np.asarray(trials)
    if not (np.issubdtype(k.dtype, np.integer) and np.issubdtype(n.dtype, np.integer)):
        raise TypeError("successes and trials must be integers")
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise ValueError("expected 0 <= successes <= trials and trials >= 1")
    if not 0.0 < float(alpha) < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return k, n


def clopper_pearson_lower(successes, trials, alpha):
    """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion.

    ``P[p >= bound] >= 1 - alpha``: the bound is ``Beta(alpha; k, n - k + 1)``, and 0 when
    ``k = 0``. Vectorised over arrays of counts.
    """
    k, n = _check_counts(successes, trials, alpha)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(alpha, k, n - k + 1)
    return np.where(k == 0, 0.0, bound)[()]


def clopper_pearson_upper(successes, trials, alpha):
    """One-sided (1 - alpha) Clopper-Pearson upper bound: ``Beta(1 - alpha; k + 1, n - k)``, 1 when k = n."""
    k, n = _check_counts(successes, trials, alpha)
    with np.errstate(invalid="ignore"):
        bound = stats.beta.ppf(1.0 - alpha, k + 1, n - k)
    return np.where(k == n, 1.0, bound)[()]


def mcdiarmid_deviation(samples: int, alpha: float) -> float:
    """McDiarmid's radius ``(1 + sqrt(2 ln(1/alpha))) / sqrt(n)`` on ``|F_hat - F|`` for the mean of
    ``n`` i.i.d. vectors of norm <= 1 (RetrievalGuard's bound; docs/certification.md, section 3)."""
    return (1.0 + math.sqrt(2.0 * math.log(1.0 / alpha))) / math.sqrt(samples)


def _bennett_h(u: float) -> float:
    """Bennett's function h(u) = (1 + u) ln(1 + u) - u, without cancellation for small u."""
    if u < 1e-4:
        # h(u) = sum_{k>=2} (-1)^k u^k / (k (k - 1)), alternating with decreasing terms for u < 1: a
        # partial sum ending on a negative term is below h, so the radius is never made smaller.
        return u * u * (0.5 - u * (1.0 / 6.0 - u * (1.0 / 12.0 - u / 20.0)))
    return (1.0 + u) * math.log1p(u) - u


def bennett_deviation(samples: int, alpha: float, variance: float, step: float) -> float:
    """Radius s with ``P[|F_hat - F| >= s] <= alpha`` for the mean ``F_hat`` of ``n`` i.i.d. vectors
    of a Hilbert space with ``E|f - F|^2 <= variance`` and ``|f - F| <= step`` almost surely.

    Pinelis (1994, Theorem 3.4, a Hilbert space being (2, 1)-smooth):
    ``P[|S_n| >= r] <= 2 exp(-(b^2/a^2) h(r a / b^2))`` for ``S_n = sum (f_i - F)``,
    ``b^2 = n variance``, ``a = step``; with ``r = n s`` the exponent is
    ``E(s) = n (v/a^2) h(a s / v)``, increasing in s. The returned s satisfies
    ``E(s) >= ln(2/alpha)`` with a relative 1e-9 to spare (never rounded down), and is increasing
    in ``variance`` and ``step``. Bernstein's ``h(u) >= u^2 / (2 (1 + u/3))`` gives the bracket.
    """
    if variance <= 0.0:
        return 0.0  # f = F almost surely
    # A larger variance only enlarges the radius; below 1e-200, a s / v would overflow.
    n, v, a = float(samples), max(float(variance), 1e-200), float(step)
    target = math.log(2.0 / alpha)

    def excess(s: float) -> float:
        return n * (v / (a * a)) * _bennett_h(a * s / v) - target

    # Bernstein's radius: the root of n s^2 = target (2 v + 2 a s / 3), where E(s) >= target already.
    c = 2.0 * a * target / 3.0
    upper = (c + math.sqrt(c * c + 8.0 * n * v * target)) / (2.0 * n)
    upper *= 1.0 + 1e-12
    if excess(upper) <= 0.0:  # only by rounding; Bernstein's radius is never below Bennett's
        return upper * (1.0 + 1e-9)
    s = optimize.brentq(excess, 0.0, upper, xtol=1e-15, rtol=1e-13)
    for _ in range(60):  # step above the root until the exponent is reached in floating point
        if excess(s) >= 0.0:
            break
        s = min(upper, s * (1.0 + 1e-12) + 1e-16)
    # h's float64 evaluation is off by at most ~1e-11 of itself (log1p's cancellation near u = 1e-4);
    # a relative 1e-9 more covers that, so the radius is never below the exact root.
    return min(upper, s) * (1.0 + 1e-9)


def _rounding(dim: int) -> float:
    """The kernels accumulate F_hat in 2^-32 fixed point: at most 2^-33 per coordinate, counted
    twice (the second half covers the float64 normalisation), so |F_hat_computed - F_hat| <= this."""
    return math.sqrt(dim) * 2.0**-32


def _check(samples: int, alpha: float, bound: str) -> None:
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if bound not in SOFT_BOUNDS:
        raise ValueError(f"soft bound must be one of {', '.join(SOFT_BOUNDS)}, got {bound!r}")


@functools.lru_cache(maxsize=256)
def _worst_bennett(samples: int, alpha: float) -> float:
    """Bennett's radius at variance 1 and step 2: the same for every query at a checkpoint, so
    computed once per (n, alpha)."""
    return bennett_deviation(samples, alpha, 1.0, 2.0)


def uses_bennett(samples: int, alpha: float, bound: str = BENNETT) -> bool:
    """Whether ``bound`` at this ``(samples, alpha)`` is Bennett's: only where its worst case
    (variance 1, step 2) is below McDiarmid's. The choice depends on n and alpha alone, never
    on the samples, so no failure probability is spent on it, and the bound used is never
    looser than McDiarmid's (for very small n, McDiarmid's is used)."""
    return bound == BENNETT and _worst_bennett(samples, alpha) <= mcdiarmid_deviation(samples, alpha)


def mean_embedding_deviation(samples: int, alpha: float, dim: int = 0, *, mean_norm: Optional[float] = None,
                             bound: str = BENNETT) -> float:
    """Radius t with ``P[|F_hat - F| <= t] >= 1 - alpha``, where ``F_hat`` is the (computed) mean
    of ``samples`` i.i.d. vectors of norm <= 1 and ``F`` their expectation
    (docs/certification.md, section 3).

    ``bound="mcdiarmid"``: ``(1 + sqrt(2 ln(1/alpha))) / sqrt(n)``. ``bound="bennett"`` (the
    default): Pinelis' Bennett inequality with the unknown variance ``E|f - F|^2 <= 1 - |F|^2``
    and step ``|f - F| <= 1 + |F|`` bounded from ``mean_norm = |F_hat|`` on the event itself:
    there ``|F| >= |F_hat| - t``, so t is the largest fixed point of
    ``s = t_Bennett(1 - (|F_hat| - s)_+^2, min(2, 1 + |F_hat| + s))``, reached from above (every
    iterate is valid). Without ``mean_norm`` the worst case (variance 1, step 2). Where Bennett's
    worst case is above McDiarmid's (n < 33 at alpha = 1e-3), McDiarmid's is used (:func:`uses_bennett`).
    ``dim`` adds the kernels' fixed-point rounding of ``F_hat`` (:func:`_rounding`); pass it
    whenever ``mean_norm`` comes from the kernels' sums (their |F_hat| may exceed 1 by up to that
    rounding, which is refused without it).
    """
    _check(samples, alpha, bound)
    rounding = _rounding(dim)
    if not uses_bennett(samples, alpha, bound):
        return mcdiarmid_deviation(samples, alpha) + rounding
    s = _worst_bennett(samples, alpha)
    if mean_norm is None:
        return s + rounding
    if not 0.0 <= mean_norm <= 1.0 + rounding:
        raise ValueError(f"mean_norm must be in [0, 1] (the mean of vectors of norm <= 1), got {mean_norm}")
    lower, upper = float(mean_norm) - rounding, float(mean_norm) + rounding  # |F_hat| (exact) is between
    for _ in range(100):
        nxt = bennett_deviation(samples, alpha, 1.0 - max(0.0, lower - s) ** 2, min(2.0, 1.0 + upper + s))
        done = nxt >= s * (1.0 - 1e-7)
        s = min(s, nxt)  # both are at least the largest fixed point
        if done:
            break
    return s + rounding


def deviation_at_least(samples: int, alpha: float, dim: int = 0, *, norm_of_mean_at_most: float,
                       norm_of_mean_at_least: float, bound: str = BENNETT) -> float:
    """A lower bound on the radius :func:`mean_embedding_deviation` would report from ``samples``
    samples, given ``|F|`` between the two norms (for the sequential stopping rule's "most it could
    reach at the cap": it only decides how many samples are drawn, never validity).

    On the events of both checkpoints the reported radius is at least Bennett's with variance
    ``1 - min(1, |F|_max)^2`` and step ``1 + |F|_min`` (docs/certification.md, section 5).
    """
    _check(samples, alpha, bound)
    if not uses_bennett(samples, alpha, bound):
        return mcdiarmid_deviation(samples, alpha) + _rounding(dim)
    variance = 1.0 - min(1.0, max(0.0, norm_of_mean_at_most)) ** 2
    step = 1.0 + min(1.0, max(0.0, norm_of_mean_at_least))
    return bennett_deviation(samples, alpha, variance, step) + _rounding(dim)
