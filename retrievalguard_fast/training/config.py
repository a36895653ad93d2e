"""The settings of a training run, as one object (the CLI's ``train`` options)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ..errors import InputError, Term
from .objective import LOSSES


@dataclass(frozen=True)
class TrainConfig:
    """``sigma``: noise in [0, 1] pixel units (0: no noise), the sigma certify will use;
    ``noise_copies`` noisy copies of each image per step (the consistency penalty needs >= 2);
    ``loss_lr``: the learning rate of the loss's own parameters (the margin loss's betas)."""

    sigma: float
    backbone: str = "cnn"
    weights: Optional[str] = None
    embedding_dim: int = 128
    loss: str = "margin"
    epochs: int = 40
    batch_size: int = 112
    per_class: int = 2
    lr: float = 1e-5
    loss_lr: float = 5e-4
    freeze_bn: bool = False
    consistency: float = 0.0
    noise_copies: int = 1
    seed: int = 0

    def __post_init__(self):
        if not self.sigma >= 0:
            raise InputError(f"{{sigma}} {self.sigma}: must be >= 0 (0: no noise)", sigma=Term("sigma", "--sigma"))
        if self.loss not in LOSSES:
            raise InputError(f"{{loss}} {self.loss}: expected one of {', '.join(LOSSES)}", loss=Term("loss", "--loss"))
        if self.consistency > 0 and self.noise_copies < 2:
            raise InputError("{consistency} needs {copies} >= 2 (the spread of one copy is 0)",
                             consistency=Term("consistency", "--consistency"), copies=Term("noise_copies", "--noise-copies"))
        if self.consistency < 0:
            raise InputError(f"{{consistency}} {self.consistency}: must be >= 0", consistency=Term("consistency", "--consistency"))

    def to_dict(self) -> dict:
        return asdict(self)
