"""The settings of a training run, as one object (the CLI's ``train`` options)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from ..errors import InputError, Term
from .denoiser import OBJECTIVES
from .objective import LOSSES

#: The settings of an embedding model's training only; a denoiser run neither uses nor records them.
EMBEDDING_ONLY = ("embedding_dim", "loss", "per_class", "loss_lr", "consistency", "noise_copies")


@dataclass(frozen=True)
class TrainConfig:
    """``sigma``: noise in [0, 1] pixel units (0: no noise), the sigma certify will use;
    ``noise_copies`` noisy copies of each image per step (the consistency penalty needs >= 2);
    ``loss_lr``: the learning rate of the loss's own parameters (the margin loss's betas);
    ``denoiser_objective``: train a denoiser (``backbone``) in front of the frozen ``encoder``
    (a ``certify --model`` spec) instead of an embedding model (:mod:`~.denoiser`)."""

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
    denoiser_objective: Optional[str] = None
    encoder: Optional[str] = None

    def __post_init__(self):
        objective, encoder = Term("denoiser_objective", "--denoiser-objective"), Term("encoder", "--encoder")
        if self.denoiser_objective is not None:
            if self.denoiser_objective not in OBJECTIVES:
                raise InputError(f"{{objective}} {self.denoiser_objective}: expected one of {', '.join(OBJECTIVES)}",
                                 objective=objective)
            if self.encoder is None:
                raise InputError("{objective} needs {encoder} MODEL: the frozen embedding model the denoiser is trained "
                                 "for (a TorchScript file or module:factory, as certify --model)",
                                 objective=objective, encoder=encoder)
            if not self.sigma > 0:
                raise InputError(f"{{sigma}} {self.sigma}: a denoiser is trained for noise of sigma > 0",
                                 sigma=Term("sigma", "--sigma"))
        elif self.encoder is not None:
            raise InputError("{encoder} is the frozen model of a denoiser run: pass {objective} stability with it, "
                             "or drop it to train an embedding model", objective=objective, encoder=encoder)
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
        """Every setting the run uses (train.json's parameters; a denoiser's encoder: by content)."""
        d = asdict(self)
        if self.denoiser_objective is None:
            for k in ("denoiser_objective", "encoder"):  # an embedding run's record is what it always was
                del d[k]
        else:
            # The encoder is identified by content (the task's ``encoder_id``), not by how its path
            # is spelled, so a resume from another directory is the same run.
            for k in (*EMBEDDING_ONLY, "encoder"):
                del d[k]
        return d
