"""Confidence bounds used by the certificates (derivations: docs/certification.md).

All in float64 on the host, with scipy for the beta quantiles (never a hand-written approximation).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


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


def mean_embedding_deviation(samples: int, alpha: float, dim: int = 0) -> float:
    """Radius t with ``P[|F_hat - F| <= t] >= 1 - alpha`` for the mean F_hat of ``samples``
    i.i.d. vectors of norm <= 1 (McDiarmid; docs/certification.md section 3):

        t = (1 + sqrt(2 ln(1/alpha))) / sqrt(n)

    E|F_hat - F| <= sqrt(E|F_hat - F|^2) <= 1/sqrt(n), and one sample moves |F_hat - F| by at
    most 2/n, so McDiarmid gives the deviation term. ``dim`` adds the kernels' fixed-point
    rounding (at most 2^-33 per coordinate) so the bound covers the
    computed F_hat, not just the exact one (counted twice, 2^-32 per coordinate, to cover the
    float64 rounding of the normalisation too).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return (1.0 + math.sqrt(2.0 * math.log(1.0 / alpha))) / math.sqrt(samples) + math.sqrt(dim) * 2.0**-32
