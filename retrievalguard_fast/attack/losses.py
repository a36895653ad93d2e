"""The attack's differentiable losses: positive once the attacked model retrieves another label."""

from __future__ import annotations

import math

import torch


def _gallery_sq_distances(e: torch.Tensor, gallery, exclude: int) -> torch.Tensor:
    """|e - g_j|^2 for unit (or shorter) rows e (..., k); the excluded row at +inf."""
    g = gallery.embeddings
    d = (e * e).sum(-1, keepdim=True) + (g * g).sum(-1) - 2.0 * e @ g.T
    if exclude >= 0:
        d[..., exclude] = math.inf
    return d


def margin_loss(e: torch.Tensor, gallery, reference: int, exclude: int) -> torch.Tensor:
    """``min_p |e - g_p|^2 - min_b |e - g_b|^2`` per row (> 0: a row of another label is nearer)."""
    d = _gallery_sq_distances(e, gallery, exclude)
    positive = gallery.labels == reference
    inf = torch.tensor(math.inf, dtype=d.dtype, device=d.device)
    return torch.where(positive, d, inf).min(-1).values - torch.where(positive, inf, d).min(-1).values


def vote_surrogate_loss(e: torch.Tensor, gallery, reference: int, exclude: int, temperature: float) -> torch.Tensor:
    """e: (B, S, k) normalised noisy embeddings. ``P(c) = mean_s sum_{y_j = c} softmax_j(-|e_s - g_j|^2/T)``;
    loss ``log max_{c != ref} P(c) - log P(ref)`` per candidate (> 0: the surrogate votes another label).

    Computed in log space (log-softmax, per-label logsumexp, logsumexp over the draws), so a
    probability far below float32's range still has a gradient: far from the boundary every
    draw votes the reference with probability 1 - 1e-30 and the attack must still move."""
    logp = torch.log_softmax(-_gallery_sq_distances(e, gallery, exclude) / temperature, dim=-1)  # (B, S, N)
    labels = gallery.labels.expand_as(logp)
    shape = logp.shape[:-1] + (gallery.num_classes,)
    # Per-label logsumexp with a per-label shift: the shift is detached (logsumexp does not depend
    # on it, so the gradient is exact) and only keeps exp() in range.
    shift = torch.full(shape, -math.inf, dtype=logp.dtype, device=logp.device)
    shift = shift.scatter_reduce(-1, labels, logp.detach(), reduce="amax").nan_to_num(neginf=0.0)
    pooled = torch.zeros(shape, dtype=logp.dtype, device=logp.device).index_add(
        -1, gallery.labels, torch.exp(logp - shift.gather(-1, labels)))
    log_pooled = pooled.clamp_min(1e-38).log() + shift  # (B, S, C); empty labels ~ -inf
    log_p = torch.logsumexp(log_pooled, dim=1) - math.log(e.shape[1])  # (B, C): log P(c)
    others = log_p.clone()
    others[:, reference] = -math.inf
    return others.max(-1).values - log_p[:, reference]
