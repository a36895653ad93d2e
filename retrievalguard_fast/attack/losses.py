"""The attack's differentiable losses.

Two kinds per attacked model (docs/attack.md, "PGD"):

- the *selection margin*, positive exactly when the attacked model retrieves another label (or,
  for a Recall@K claim, when no row of the reference is among the K nearest); it picks the best
  candidate of each radius and is the objective of Recall@K claims;
- the *objective* PGD ascends, chosen per candidate by ``targets``: the selection margin itself
  (MARGIN), a loss over all rival classes (UNTARGETED) or against one rival class (a targeted
  pass, the class's label). A margin takes its gradient from two gallery rows only; the other
  objectives take it from every class, and each finds breaks the others miss.
"""

from __future__ import annotations

import math

import torch

UNTARGETED = -1  # a candidate's target when it is attacked against all rival classes
MARGIN = -2  # a candidate's target when it ascends the selection margin itself


def _gallery_sq_distances(e: torch.Tensor, gallery, exclude: int) -> torch.Tensor:
    """|e - g_j|^2 for unit (or shorter) rows e (..., k); the excluded row at +inf."""
    g = gallery.embeddings
    d = (e * e).sum(-1, keepdim=True) + (g * g).sum(-1) - 2.0 * e @ g.T
    if exclude >= 0:
        d[..., exclude] = math.inf
    return d


def margin_loss(e: torch.Tensor, gallery, reference: int, exclude: int, k: int = 1) -> torch.Tensor:
    """``min_p |e - g_p|^2 - (k-th smallest |e - g_b|^2)`` per row over rows p of ``reference`` and
    b of other labels: > 0 iff at least k rows of other labels are nearer than every row of the
    reference (k = 1: the 1-NN label is another; k > 1: Recall@k of the reference is 0)."""
    d = _gallery_sq_distances(e, gallery, exclude)
    positive = gallery.labels == reference
    inf = torch.tensor(math.inf, dtype=d.dtype, device=d.device)
    negatives = torch.where(positive, inf, d)
    k = min(int(k), negatives.shape[-1])
    kth = negatives.topk(k, dim=-1, largest=False).values[..., -1]
    return torch.where(positive, d, inf).min(-1).values - kth


def _class_log_scores(e: torch.Tensor, gallery, exclude: int, temperature: float) -> torch.Tensor:
    """``-min_{j: y_j = c} |e - g_j|^2 / T`` per class c (..., C); -inf for a class with no row."""
    d = _gallery_sq_distances(e, gallery, exclude)
    shape = d.shape[:-1] + (gallery.num_classes,)
    nearest = torch.full(shape, math.inf, dtype=d.dtype, device=d.device)
    nearest = nearest.scatter_reduce(-1, gallery.labels.expand_as(d), d, reduce="amin")
    return -nearest / temperature


def _against(log_scores: torch.Tensor, reference: int, targets: torch.Tensor) -> torch.Tensor:
    """Per row b: ``log sum_{c != ref} exp(s_c) - s_ref`` if ``targets[b]`` is UNTARGETED, else
    ``s_target - s_ref`` (the value for a MARGIN row is unused). log_scores (B, C), targets (B,)."""
    others = log_scores.clone()
    others[:, reference] = -math.inf
    # clamp: with no rival class at all the loss is flat (gradient 0), not NaN
    untargeted = torch.logsumexp(others, dim=-1).clamp_min(-1e30)
    targeted = log_scores.gather(-1, targets.clamp_min(0)[:, None])[:, 0].clamp_min(-1e30)
    return torch.where(targets == UNTARGETED, untargeted, targeted) - log_scores[:, reference]


def _max_rival(log_scores: torch.Tensor, reference: int) -> torch.Tensor:
    """``max_{c != ref} s_c - s_ref`` per row: > 0 iff another class scores higher."""
    others = log_scores.clone()
    others[:, reference] = -math.inf
    return others.max(-1).values - log_scores[:, reference]


def nearest_rivals(e: torch.Tensor, gallery, reference: int, exclude: int, count: int) -> list:
    """The ``count`` labels other than ``reference`` whose nearest row is nearest to ``e`` (k,)."""
    if count <= 0:
        return []
    with torch.no_grad():
        scores = _class_log_scores(e[None], gallery, exclude, 1.0)[0]
        scores[reference] = -math.inf
        best = scores.topk(min(count, len(scores))).indices.tolist()
    return [int(c) for c in best if math.isfinite(float(scores[c]))]


def embedding_losses(e: torch.Tensor, gallery, reference: int, exclude: int, temperature: float,
                     targets: torch.Tensor, k: int = 1):
    """(objective, selection margin) of embeddings e (B, k) for the base and soft models.
    Objective: the class scores ``-min_{y_j = c} |e - g_j|^2 / T`` against all rivals or one
    (:func:`_against`); for a Recall@K claim (k > 1) the margin itself, which has no
    per-class form."""
    margin = margin_loss(e, gallery, reference, exclude, k)
    if k > 1:
        return margin, margin
    objective = _against(_class_log_scores(e, gallery, exclude, temperature), reference, targets)
    return torch.where(targets == MARGIN, margin, objective), margin


def vote_log_probabilities(e: torch.Tensor, gallery, exclude: int, temperature: float) -> torch.Tensor:
    """e: (B, S, k) normalised noisy embeddings. ``log P(c)`` (B, C) of the vote surrogate
    ``P(c) = mean_s sum_{y_j = c} softmax_j(-|e_s - g_j|^2/T)`` (SmoothAdv's, pooled by label).

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
    return torch.logsumexp(log_pooled, dim=1) - math.log(e.shape[1])


def vote_surrogate_loss(e: torch.Tensor, gallery, reference: int, exclude: int, temperature: float) -> torch.Tensor:
    """``log max_{c != ref} P(c) - log P(ref)`` per candidate (> 0: the surrogate votes another label)."""
    return _max_rival(vote_log_probabilities(e, gallery, exclude, temperature), reference)


def vote_losses(e: torch.Tensor, gallery, reference: int, exclude: int, temperature: float, targets: torch.Tensor):
    """(objective, selection margin) for the vote model: ``log P(rivals) - log P(ref)`` (all
    rivals, or the target; MARGIN: the margin) and the margin ``log max_{c != ref} P(c) - log P(ref)``."""
    log_p = vote_log_probabilities(e, gallery, exclude, temperature)
    margin = _max_rival(log_p, reference)
    return torch.where(targets == MARGIN, margin, _against(log_p, reference, targets)), margin
