"""What a training run trains, behind the methods the one training loop (:mod:`~.run`) calls:

- :class:`EmbeddingTask` (``train``'s default): an embedding model, a backbone with its head,
  under the noise it will be certified with (:mod:`~.objective`: a metric loss, the consistency
  penalty), validated by clean Recall@1, shipped as ``model.pt`` for ``certify --model``;
- :class:`DenoiserTask` (``--denoiser-objective stability``): a denoiser in front of a frozen
  ``--encoder`` (:mod:`~.denoiser`), validated by the Recall@1 of noisy queries with and
  without it, shipped as ``denoiser.pt`` for ``certify --denoiser``.

A task holds the modules the loop trains (``trained``: checkpointed and gradient-averaged
across ranks), its optimizers, the batches of an epoch, the loss of a step with the terms the
history records (``step_terms``, the same on every rank), the validation and the export.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..kernels import gaussian_noise, nn_search
from .config import TrainConfig
from .denoiser import build_denoiser, check_encoder_output, freeze, stability_loss, unit
from .model import build_embedder, export_torchscript
from .objective import Objective, noise_seed, noisy_copies
from .sampler import check_per_class, epoch_batches

#: The first sample index of the validation noise in each image's training-noise stream: beyond
#: every training sample (``epoch * copies`` < 2**40), so validation never reuses training noise.
VALIDATION_NOISE_START = 1 << 40


def set_train_mode(model: torch.nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:  # Roth et al.'s frozen BatchNorm: running statistics stay those of the pretrained backbone
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def embed_all(model, data, batch_size: int, device, sigma: float = 0.0, seed: int = 0) -> torch.Tensor:
    """Embeddings of every image of ``data``, in order, with the model in eval mode; with
    ``sigma`` > 0 of one noisy copy of each (image ``i``'s validation sample of its stream)."""
    model.eval()
    order = np.arange(len(data))
    out = []
    with torch.no_grad():
        chunks = [order[a:a + batch_size] for a in range(0, len(order), batch_size)]
        for idx, x in zip(chunks, data.batches(chunks)):
            x = x.to(device)
            if sigma > 0:
                x = torch.stack([gaussian_noise(x[b], sigma, 1, seed=noise_seed(seed), stream=int(i),
                                                start=VALIDATION_NOISE_START)[0] for b, i in enumerate(idx)])
            out.append(model(x).cpu())
    return torch.cat(out)


def leave_one_out_recall(queries: torch.Tensor, gallery: torch.Tensor, labels: np.ndarray) -> float:
    """Recall@1 of query ``i`` against every gallery row but ``i``, with the package's exact 1-NN
    kernel on unit embeddings (what certify retrieves with)."""
    q, g = unit(queries).contiguous(), unit(gallery).contiguous()
    index1 = nn_search(q, g, exclude=torch.arange(len(q)))[0].numpy()
    return float(np.mean(labels[index1] == labels))


class EmbeddingTask:
    """An embedding model trained with a metric loss on noisy copies of each batch."""

    output = "model.pt"

    def __init__(self, config: TrainConfig, data, example: torch.Tensor, device):
        check_per_class(data.labels, config.per_class, config.batch_size, data.what)
        classes, positions = np.unique(data.labels, return_inverse=True)
        self.config, self.data, self.device = config, data, device
        self.targets = torch.as_tensor(positions, dtype=torch.int64)
        self.model, features = build_embedder(config.backbone, config.weights, example, config.embedding_dim)
        self.model = self.model.to(device)
        self.objective = Objective(config.loss, len(classes), config.consistency, config.noise_copies).to(device)
        self.params = {"num_classes": len(classes), "backbone_features": features}
        self.trained: List[torch.nn.Module] = [self.model, self.objective]
        self.step_terms: Tuple[str, ...] = ("loss", "metric_loss") + (("spread",) if config.noise_copies > 1 else ())

    def optimizers(self) -> List[torch.optim.Optimizer]:
        opts = [torch.optim.Adam(self.model.parameters(), lr=self.config.lr)]
        if list(self.objective.parameters()):  # the margin loss's betas, at their own rate
            opts.append(torch.optim.Adam(self.objective.parameters(), lr=self.config.loss_lr))
        return opts

    def train_mode(self) -> None:
        set_train_mode(self.model, self.config.freeze_bn)
        self.objective.train()

    def batches(self, epoch: int) -> List[np.ndarray]:
        c = self.config
        return epoch_batches(self.data.labels, c.per_class, c.batch_size, c.seed, epoch)

    def step(self, idx: np.ndarray, x: torch.Tensor, epoch: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """The loss of one batch, and the terms the history records (batch means)."""
        c = self.config
        noisy = noisy_copies(x.to(self.device), idx, c.sigma, c.noise_copies, c.seed, epoch)
        # (total, metric loss, mean spread 1 - |F|^2 over the batch's images: None for one copy)
        values = self.objective(self.model(noisy), self.targets[idx].to(self.device))
        return values[0], dict(zip(self.step_terms, values))

    def validate(self, val) -> Dict[str, float]:
        """Clean leave-one-out Recall@1 of ``val`` (the Recall@1 certify reports for the same data
        as queries and gallery)."""
        e = embed_all(self.model, val, self.config.batch_size, self.device)
        return {"recall_at_1": leave_one_out_recall(e, e, val.labels)}

    def export(self, example: torch.Tensor, params: dict, write) -> None:
        extra = {"sigma": self.config.sigma, "training": {k: params[k] for k in (
            "backbone", "embedding_dim", "loss", "epochs", "consistency", "noise_copies", "seed", "data")}}
        export_torchscript(self.model, example, extra, write)


class DenoiserTask:
    """A denoiser trained against a frozen encoder with the stability objective (no labels: the
    data's labels serve only the validation's Recall@1)."""

    output = "denoiser.pt"

    def __init__(self, config: TrainConfig, data, example: torch.Tensor, device, encoder: torch.nn.Module,
                 encoder_id: str):
        self.config, self.data, self.device = config, data, device
        self.denoiser = build_denoiser(config.backbone, config.weights, example).to(device)
        self.encoder = freeze(encoder.to(device))
        dim = check_encoder_output(self.encoder, example.to(device), config.encoder)
        self.params = {"encoder_id": encoder_id, "encoder_dim": dim}
        self.trained: List[torch.nn.Module] = [self.denoiser]
        self.step_terms: Tuple[str, ...] = ("loss",)
        # The frozen encoder's side of the validation, the same every epoch: (clean embeddings,
        # Recall@1 of the noisy images through the encoder alone), computed at the first one.
        self._frozen: Optional[Tuple[torch.Tensor, float]] = None

    def optimizers(self) -> List[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.denoiser.parameters(), lr=self.config.lr)]

    def train_mode(self) -> None:
        set_train_mode(self.denoiser, self.config.freeze_bn)
        self.encoder.eval()

    def batches(self, epoch: int) -> List[np.ndarray]:
        """Every image once, in an order of the seed and the epoch, cut into batches."""
        c = self.config
        order = np.random.default_rng([c.seed, epoch, 0x646E6F69]).permutation(len(self.data))  # "dnoi"
        return [order[a:a + c.batch_size] for a in range(0, len(order), c.batch_size)]

    def step(self, idx: np.ndarray, x: torch.Tensor, epoch: int) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        c = self.config
        x = x.to(self.device)
        noisy = noisy_copies(x, idx, c.sigma, 1, c.seed, epoch)
        loss = stability_loss(self.encoder, self.denoiser, x, noisy).mean()
        return loss, {"loss": loss}

    def validate(self, val) -> Dict[str, float]:
        """Recall@1 of one noisy copy of each ``val`` image (leave-one-out, against the clean
        embeddings) through encoder(denoiser(.)), and through the encoder alone."""
        c, bs = self.config, self.config.batch_size
        if self._frozen is None:
            clean = embed_all(self.encoder, val, bs, self.device)
            noisy = embed_all(self.encoder, val, bs, self.device, c.sigma, c.seed)
            self._frozen = clean, leave_one_out_recall(noisy, clean, val.labels)
        clean, alone = self._frozen
        denoised = embed_all(torch.nn.Sequential(self.denoiser, self.encoder), val, bs, self.device, c.sigma, c.seed)
        return {"noisy_recall_at_1": leave_one_out_recall(denoised, clean, val.labels),
                "noisy_recall_at_1_encoder_alone": alone}

    def export(self, example: torch.Tensor, params: dict, write) -> None:
        extra = {"sigma": self.config.sigma, "training": {
            "denoiser_objective": self.config.denoiser_objective, "encoder_id": params["encoder_id"],
            **{k: params[k] for k in ("backbone", "epochs", "seed", "data")}}}
        export_torchscript(self.denoiser, example, extra, write)
