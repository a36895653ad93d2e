"""Sampling schedules: fixed n, or sequential certification that stops each query early.

Sequential certification (docs/certification.md, section 5, with the proof): when the
radii that matter are known, a query is sampled in rounds up to a fixed, doubling schedule of
checkpoints ``n_1 < ... < n_J = n`` (the cap), and stops at the first checkpoint where every asked
radius is *decided*: certified there, or out of reach even at the cap. Every bound at checkpoint
``j`` is taken at level ``alpha / J``, so by the union bound all of them hold at once with
probability at least ``1 - alpha``, whatever the stopping rule does; the radius reported at the
stopping checkpoint is therefore never above the truth except with probability at most alpha.
The stopping rule itself only decides how many samples are drawn, never validity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

from scipy.special import ndtri

from .stats import clopper_pearson_lower, clopper_pearson_upper

FIXED = "fixed-n"
SEQUENTIAL = "sequential"


@dataclass(frozen=True)
class Schedule:
    """Checkpoints (cumulative certification samples, the last one is the cap n) and levels."""

    checkpoints: Tuple[int, ...]
    alpha: float
    mode: str = FIXED
    radii: Tuple[float, ...] = ()

    @property
    def cap(self) -> int:
        return self.checkpoints[-1]

    @property
    def level(self) -> float:
        """Failure probability allowed at each checkpoint (union bound over the schedule)."""
        return self.alpha / len(self.checkpoints)


def fixed_schedule(n: int, alpha: float) -> Schedule:
    return Schedule((int(n),), float(alpha), FIXED, ())


def doubling_schedule(cap: int, alpha: float, radii: Sequence[float], first: int = 1000) -> Schedule:
    """Checkpoints cap, cap/2, cap/4, ... (rounded up) down to the first one >= ``first``."""
    if not radii:
        raise ValueError("sequential certification needs the radii that matter (e.g. radii=[0.25, 0.5])")
    if any(not (math.isfinite(r) and r >= 0) for r in radii):
        raise ValueError(f"radii must be finite and >= 0, got {list(radii)}")
    if first < 1:
        raise ValueError(f"first checkpoint must be >= 1, got {first}")
    points = [int(cap)]
    while points[-1] > first and math.ceil(points[-1] / 2) >= first:
        points.append(math.ceil(points[-1] / 2))
    return Schedule(tuple(reversed(points)), float(alpha), SEQUENTIAL, tuple(sorted(set(float(r) for r in radii))))


def vote_certifies(p_lower: float, radius: float, sigma: float) -> bool:
    """Whether a lower bound p_lower on the top label's probability certifies ``radius``:
    sigma Phi^-1(p_lower) >= radius, and p_lower > 1/2 (so radius 0 means 'not abstaining')."""
    return p_lower > 0.5 and sigma * float(ndtri(p_lower)) >= radius


def vote_decided(count: int, n: int, schedule: Schedule, sigma: float) -> bool:
    """True when, at a checkpoint with ``count`` of ``n`` fresh votes, every asked radius is
    either certified now or out of reach at the cap: even the upper confidence bound on the
    share, observed over all ``cap`` samples, would not certify it."""
    if n >= schedule.cap or schedule.mode == FIXED:
        return True
    level = schedule.level
    p_lower = float(clopper_pearson_lower(count, n, level))
    p_upper = float(clopper_pearson_upper(count, n, level))
    best_count = min(schedule.cap, math.ceil(p_upper * schedule.cap))
    best_lower = float(clopper_pearson_lower(best_count, schedule.cap, level))
    for r in schedule.radii:
        if not vote_certifies(p_lower, r, sigma) and vote_certifies(best_lower, r, sigma):
            return False
    return True


def soft_decided(radius_now: float, radius_best_at_cap: Optional[float], schedule: Schedule) -> bool:
    """The same rule for a soft radius: certified now (``radius_now >= r > ...``), or the most
    it could reach at the cap (computed with the cap's Monte-Carlo bound around the current
    estimate's upper edge) is below ``r``."""
    if schedule.mode == FIXED or radius_best_at_cap is None:
        return True
    for r in schedule.radii:
        certified = radius_now > 0 and radius_now >= r
        reachable = radius_best_at_cap > 0 and radius_best_at_cap >= r
        if not certified and reachable:
            return False
    return True
