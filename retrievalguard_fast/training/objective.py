"""What a training step minimises: a metric loss of pytorch-metric-learning on the embeddings of
noisy copies of the batch, plus, with ``consistency`` lambda > 0, the spread of each image's
copies around their mean.

- ``margin`` (default): RetrievalGuard's recipe (Wu et al. 2022, after Roth et al. 2020):
  MarginLoss with margin 0.2 and a trainable per-class beta starting at 1.2 (its own Adam at
  5e-4), triplets from DistanceWeightedMiner with cut-offs 0.5 and 1.4;
- ``multi-similarity``: MultiSimilarityLoss with MultiSimilarityMiner (their defaults);
- ``contrastive``: ContrastiveLoss (its defaults), every pair.

Consistency (Jeong & Shin, NeurIPS 2020, carried over to unit embeddings): for the ``m`` noisy
unit embeddings ``e_j`` of one image with mean ``F``, ``mean_j |e_j - F|^2 = 1 - |F|^2`` exactly.
``|F|`` caps every margin of the soft certificate and sets the variance term of its Bennett
bound, so shrinking the spread is what the certificate rewards. The penalty is lambda times its
mean over the batch.

Noise comes from the package's counter-based kernel (:func:`~..kernels.gaussian_noise`), pixels
in [0, 1] as certify's: copy ``j`` of training image ``i`` in epoch ``t`` is sample
``t * m + j`` of stream ``i``, so it is the same whatever the batch, the rank or a resume. The
key is derived from the seed and differs from certify's (:func:`noise_seed`): a model must not be
trained on the very noise its certificate will be estimated with.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import torch

from ..errors import InputError
from ..kernels import gaussian_noise

LOSSES = ("margin", "multi-similarity", "contrastive")


def noise_seed(seed: int) -> int:
    """The training noise's Philox key: a digest of the seed, never equal to a certify seed in use."""
    return int.from_bytes(hashlib.sha256(f"retrievalguard-train-noise:{seed}".encode()).digest()[:8], "little")


def noisy_copies(x: torch.Tensor, indices, sigma: float, copies: int, seed: int, epoch: int) -> torch.Tensor:
    """``(copies * B, *input_shape)``: copy-major (rows ``j*B .. j*B+B-1`` are copy ``j``)."""
    if sigma == 0:
        return x.repeat((copies,) + (1,) * (x.ndim - 1))
    key = noise_seed(seed)
    per_image = [gaussian_noise(x[b], sigma, copies, seed=key, stream=int(i), start=epoch * copies)
                 for b, i in enumerate(indices)]
    return torch.stack(per_image, dim=1).reshape((copies * len(x),) + tuple(x.shape[1:]))


def spread(embeddings: torch.Tensor, copies: int) -> torch.Tensor:
    """Per image, the mean squared distance of its ``copies`` unit embeddings (copy-major rows)
    to their mean: ``1 - |F|^2``."""
    e = embeddings.reshape(copies, -1, embeddings.shape[1])
    return (e - e.mean(dim=0, keepdim=True)).pow(2).sum(dim=2).mean(dim=0)


class Objective(torch.nn.Module):
    """The metric loss (and its miner) plus the consistency penalty; its parameters (the margin
    loss's betas) are trained with the model, at ``loss_lr``."""

    def __init__(self, loss: str, num_classes: int, consistency: float = 0.0, copies: int = 1):
        super().__init__()
        try:
            from pytorch_metric_learning import losses, miners
        except ImportError:
            raise InputError("train needs pytorch-metric-learning: pip install 'retrievalguard_fast[train]'") from None

        self.consistency, self.copies, self.miner = consistency, copies, None
        if loss == "margin":
            self.loss = losses.MarginLoss(margin=0.2, nu=0.0, beta=1.2, triplets_per_anchor="all", learn_beta=True,
                                          num_classes=num_classes)
            self.miner = miners.DistanceWeightedMiner(cutoff=0.5, nonzero_loss_cutoff=1.4)
        elif loss == "multi-similarity":
            self.loss = losses.MultiSimilarityLoss()
            self.miner = miners.MultiSimilarityMiner()
        elif loss == "contrastive":
            self.loss = losses.ContrastiveLoss()
        else:
            raise ValueError(f"Objective: loss must be one of {', '.join(LOSSES)}, got {loss!r}")

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor):
        """(total, metric loss, mean spread) of copy-major ``embeddings`` of a batch with
        ``labels`` (class positions 0..C-1, one per image)."""
        labels = labels.repeat(self.copies)
        pairs = self.miner(embeddings, labels) if self.miner is not None else None
        metric = self.loss(embeddings, labels, pairs)
        mean_spread: Optional[torch.Tensor] = spread(embeddings, self.copies).mean() if self.copies > 1 else None
        total = metric if mean_spread is None or self.consistency == 0 else metric + self.consistency * mean_spread
        return total, metric, mean_spread
