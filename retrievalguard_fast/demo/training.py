"""Training an embedding model under Gaussian noise augmentation.

A smoothed model only certifies anything if its base model works on noisy inputs, so the base
model must be trained (or fine-tuned) on inputs with noise of the sigma that will be certified
(Cohen et al. 2019; Wu et al. 2022). The loss is a normalised softmax (cosine classifier): the
l2-normalised embedding against learned, normalised class proxies, scaled, with cross-entropy
- a standard metric-learning loss whose geometry matches 1-NN retrieval on normalised embeddings.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch


def train_embedding_model(model: torch.nn.Module, x: Any, y: Any, *, sigma: float, epochs: int = 30,
                          batch_size: int = 128, lr: float = 2e-3, scale: float = 16.0, seed: int = 0,
                          device: Any = "cpu", num_classes: Optional[int] = None,
                          verbose: bool = False) -> torch.nn.Module:
    """Train ``model`` (inputs -> (batch, k) embeddings) on ``(x, y)`` with Gaussian noise of
    standard deviation ``sigma`` added to every input, in place; returns it in eval mode.
    Deterministic for a given seed on the CPU."""
    if not sigma >= 0:
        raise ValueError(f"train_embedding_model: sigma must be >= 0, got {sigma}")
    if epochs < 1 or batch_size < 1:
        raise ValueError("train_embedding_model: epochs and batch_size must be >= 1")
    device = torch.device(device)
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x, dtype=torch.float32).to(device)
    y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y, dtype=torch.int64).to(device)
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"train_embedding_model: x and y must be non-empty and of one length, got {len(x)} and {len(y)}")
    classes = int(num_classes or int(y.max()) + 1)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    torch.manual_seed(seed)
    model = model.to(device).train()
    with torch.no_grad():
        dim = model(x[:2]).shape[1]
    proxies = torch.nn.Parameter(torch.randn(classes, dim, generator=gen).to(device))
    opt = torch.optim.Adam(list(model.parameters()) + [proxies], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        total = 0.0
        for a in range(0, len(x), batch_size):
            idx = order[a : a + batch_size]
            noise = torch.randn(x[idx].shape, generator=gen).to(device) * sigma
            emb = torch.nn.functional.normalize(model(x[idx] + noise), dim=1)
            logits = scale * emb @ torch.nn.functional.normalize(proxies, dim=1).T
            loss = torch.nn.functional.cross_entropy(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        sched.step()
        if verbose:
            print(f"epoch {epoch + 1}/{epochs}: loss {total / len(x):.4f}")
    return model.eval()
