"""The attack's parameters: :class:`AttackConfig` (all recorded in run.json) and the attacked models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from ..smoothing.stats import BENNETT

#: The attacked models: the vote and soft smoothed models and the base model without noise.
MODELS = ("vote", "soft", "base")


@dataclass(frozen=True)
class AttackConfig:
    """Parameters of the attack and of the break test (all recorded in run.json)."""

    radii: Tuple[float, ...]
    models: Tuple[str, ...] = MODELS
    steps: int = 20
    eot: int = 32  # noise draws per PGD step (expectation over transformation)
    restarts: int = 2  # candidates per radius ascending the margin (the clean point, then random starts)
    targets: int = 2  # targeted passes per radius, one against each of the nearest rival labels
    # (and, always, one candidate per radius against all rival classes)
    step_size: float = 2.5  # PGD step = step_size * radius / steps (Madry et al.'s 2.5 eps / steps)
    temperature: float = 0.05  # of the vote surrogate's softmax over -|e - g|^2
    clip: Tuple[float, float] = (0.0, 1.0)
    n0: int = 1000  # re-estimate: selection samples (the vote's rival; the screen)
    n: int = 10_000  # re-estimate: test samples
    alpha: float = 0.001
    seed: int = 0
    soft_bound: str = BENNETT  # the soft break test's concentration bound, as in certify

    @property
    def attacked_radii(self) -> List[float]:
        """Radius 0 is the clean point itself: it is not attacked, only its reference counts."""
        return sorted(set(float(r) for r in self.radii if r > 0))

    def to_dict(self) -> dict:
        return {"radii": self.attacked_radii, "models": list(self.models), "steps": self.steps, "eot": self.eot,
                "restarts": self.restarts, "targets": self.targets, "step_size": self.step_size, "temperature": self.temperature,
                "clip": list(self.clip), "n0": self.n0, "n": self.n, "alpha": self.alpha, "seed": self.seed,
                "soft_bound": self.soft_bound}
