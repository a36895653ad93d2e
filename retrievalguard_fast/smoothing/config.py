"""What a certification run is asked to do: :class:`CertifyConfig`, the sampling and
certification settings that, with the model, the data and the retriever's own settings,
determine every per-query result. One object from the CLI to the certify step, checked once.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Tuple

from ..kernels import arrays as arr
from .sequential import FIXED, SEQUENTIAL, Schedule, doubling_schedule, fixed_schedule
from .stats import BENNETT, SOFT_BOUNDS

#: The radii of a run's summary table (and, in sequential mode, the radii each query is decided at).
DEFAULT_RADII = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
MODES = (SEQUENTIAL, FIXED)


@dataclass(frozen=True)
class CertifyConfig:
    """Sampling and certification settings (docs/certification.md).

    ``n0``: selection samples per query; ``n``: certification samples (the cap in sequential
    mode); ``alpha``: failure probability per query and certificate; ``ks``: K values of the soft
    Recall@K radii; ``mode``: "fixed-n" (always ``n`` samples; the default) or "sequential" (stop
    a query once every radius in ``radii`` is certified or out of reach, bounds at alpha over the
    checkpoints of a doubling schedule from ``first_checkpoint``); ``radii``: the radii of the
    summary table and of the sequential rule; ``soft_bound``: the Monte-Carlo bound behind the soft
    radii, "bennett" (variance-adaptive, never looser) or "mcdiarmid" (RetrievalGuard's published form).

    Invalid settings raise ``ValueError`` (``TypeError`` for a wrong type) naming the setting."""

    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    ks: Tuple[int, ...] = (1,)
    mode: str = FIXED
    radii: Tuple[float, ...] = DEFAULT_RADII
    first_checkpoint: int = 1000
    soft_bound: str = BENNETT

    def __post_init__(self) -> None:
        op = "certify"
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 - frozen dataclass
        set_("n0", arr.check_int(op, "n0", self.n0, 1, 2**40))
        set_("n", arr.check_int(op, "n", self.n, 1, 2**40))
        alpha = self.alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
            raise ValueError(f"{op}: alpha must be a number in (0, 1), got {alpha!r}")
        set_("alpha", float(alpha))
        set_("ks", tuple(sorted(set(arr.check_int(op, "ks", k, 1, 2**31 - 1) for k in self.ks))) or (1,))
        if self.mode not in MODES:
            raise ValueError(f"{op}: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        radii = tuple(sorted(set(float(r) for r in self.radii)))
        if any(not (math.isfinite(r) and r >= 0) for r in radii):
            raise ValueError(f"{op}: radii must be finite and >= 0, got {list(self.radii)}")
        if self.mode == SEQUENTIAL and not radii:
            raise ValueError(f"{op}: mode 'sequential' needs radii (the radii at which to decide each query)")
        set_("radii", radii)
        set_("first_checkpoint", arr.check_int(op, "first_checkpoint", self.first_checkpoint, 1, 2**40))
        if self.soft_bound not in SOFT_BOUNDS:
            raise ValueError(f"{op}: soft_bound must be one of {', '.join(SOFT_BOUNDS)}, got {self.soft_bound!r}")

    @classmethod
    def of(cls, config: "CertifyConfig | None" = None, **settings: Any) -> "CertifyConfig":
        """``config`` (default: the defaults) with ``settings`` replaced, checked."""
        base = cls() if config is None else config
        if not isinstance(base, cls):
            raise TypeError(f"certify: config must be a CertifyConfig, got {type(base).__name__}")
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise TypeError(f"certify: unknown setting(s) {', '.join(unknown)}; CertifyConfig has "
                            f"{', '.join(f.name for f in dataclasses.fields(cls))}")
        return dataclasses.replace(base, **settings) if settings else base

    @property
    def sequential(self) -> bool:
        return self.mode == SEQUENTIAL

    def schedule(self) -> Schedule:
        """The sampling schedule of every query: n at once, or the doubling checkpoints up to n
        (the first one at most n)."""
        if self.sequential:
            return doubling_schedule(self.n, self.alpha, self.radii, first=min(self.first_checkpoint, self.n))
        return fixed_schedule(self.n, self.alpha)

    def first_round_samples(self) -> int:
        """Samples of a query up to its first decision: n0 + the first checkpoint (or n)."""
        return self.n0 + (min(self.n, self.first_checkpoint) if self.sequential else self.n)

    def to_dict(self) -> Dict[str, Any]:
        """The settings as run.json records them (the sequential rule's only in sequential mode)."""
        d: Dict[str, Any] = {"n0": self.n0, "n": self.n, "alpha": self.alpha, "recall_k": list(self.ks),
                             "mode": self.mode, "soft_bound": self.soft_bound}
        if self.sequential:  # the stopping rule depends on the radii and the schedule
            d["radii"] = list(self.radii)
            d["first_checkpoint"] = self.first_checkpoint
        return d
