"""Empirical robustness: an l2 PGD attack with expectation over the noise (EOT), the upper bound
that brackets the certificates' lower bound from above (docs/attack.md).

Three models are attacked, each at every radius of a grid:

- ``soft``: the soft smoothed model S (nearest gallery label of ``F(x) = E f̄(x + δ)``). The loss
  is the margin ``min_p |F - g_p|^2 - min_b |F - g_b|^2`` (p: rows of the reference label, b:
  rows of any other label), positive once ``F`` has crossed the bisector to the nearest row of
  another label; ``F`` is the mean of ``eot`` normalised noisy embeddings per step.
- ``vote``: the vote smoothed model V, through a differentiable surrogate (SmoothAdv, Salman et
  al. 2019): per noise draw a softmax over ``-|f̄(x + δ) - g_j|^2 / T`` pooled by label, averaged
  over the draws into ``P(c)``; the loss is ``log max_{c != ref} P(c) - log P(ref)``.
- ``base``: the base model's 1-NN label without noise, with the soft margin on ``f̄(x)``.

PGD: ``restarts`` starts (the clean point, then uniform points in the ball), ``steps`` steps of
size ``step_size * radius / steps`` along the normalised gradient, each followed by the projection
on the l2 ball and the clip to the pixel bounds (the clip never lengthens a perturbation of a
point inside the bounds: each coordinate moves towards the clean one). The best restart (by the
loss under fresh attack noise) is kept, and its perturbation norm is checked in float64.

A query is *broken* at a radius only if the attacked point's smoothed prediction, re-estimated
with fresh noise, differs from the clean reference with confidence ``1 - alpha`` (Bonferroni over
the query's radii, so the whole statement "broken at the smallest such radius" has that level):

- screen: ``n0`` fresh samples first; a point they show cannot be broken (at level 0.01, so a
  breakable point is passed over with probability at most 0.01) is not tested further: skipping
  a test can only miss a break, never make one, and most attacked points are far from breaking;
- vote: the ``n0`` samples pick the strongest other label ``c'``; ``n`` more fresh samples count
  ``n_ref`` and ``n_c'``; broken if the one-sided Clopper-Pearson lower bound on
  ``n_c' / (n_ref + n_c')`` exceeds 1/2, i.e. ``p_c' > p_ref`` (a sign test: given the total,
  ``n_c'`` is binomial with parameter ``p_c' / (p_ref + p_c')``);
- soft: ``F̂`` over all ``n0 + n`` fresh samples and the concentration bound ``t`` of
  :func:`~..smoothing.stats.mean_embedding_deviation` (``|F̂ - F| <= t`` with probability ``1 - alpha``);
  broken if every row of the reference label is beaten by some row of another label even at the
  edge of that ball: ``u.F̂ + t < tau`` in the pair notation of docs/certification.md section 3;
- base: deterministic, the 1-NN label of the attacked point differs from the clean one.

Randomness: the attack's noise comes from a torch generator seeded by ``(seed, query index)``;
the re-estimates use the package's Philox streams under ``seed``, stream = query index, each
re-estimate its own range of sample indices (slot 0 the clean point, then one slot per model
and radius). A query's record thus depends only on the seed, its index and the parameters.
"""

from __future__ import annotations

import time
from typing import Optional, Tuple

import numpy as np
import torch

from .. import kernels
from ..errors import InputError
from ..smoothing.sampler import smoothed_evidence
from .breaks import SCREEN_LEVEL, nearest_label, soft_break_margin, soft_deviation, vote_break_test
from .config import MODELS, AttackConfig
from .losses import margin_loss, vote_surrogate_loss

_PROJECTION_SHRINK = 1.0 - 1e-5  # project into a slightly smaller ball, so float32 rounding stays inside


def _generator(seed: int, index: int, device) -> torch.Generator:
    """The attack noise of one query: a torch generator keyed by (seed, query index)."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


class Attacker:
    """PGD + EOT against the soft, vote and base models of one :class:`~..smoothing.SmoothedRetriever`
    (same base model as run, model-stage options included, same gallery and sigma)."""

    def __init__(self, retriever, config: AttackConfig):
        bad = [m for m in config.models if m not in MODELS]
        if bad or not config.models:
            raise ValueError(f"attack: models must be a non-empty subset of {MODELS}, got {config.models}")
        lo, hi = config.clip
        if not lo < hi:
            raise ValueError(f"attack: clip must be (low, high) with low < high, got {config.clip}")
        self.r, self.c = retriever, config
        self.g = retriever.gallery
        self.device = retriever.device
        self.radii = config.attacked_radii
        self.level = config.alpha / max(len(self.radii), 1)  # Bonferroni over a query's radii
        for p in self.r.model.parameters():
            p.requires_grad_(False)  # only the input's gradient is needed

    # ---------------------------------------------------------------- helpers

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised embeddings of a batch, differentiable (the retriever's configured model)."""
        return torch.nn.functional.normalize(self.r.embed(x, "attack"), dim=-1)

    def _loss(self, model: str, x_adv: torch.Tensor, gen: torch.Generator, reference: int, exclude: int) -> torch.Tensor:
        """Per-candidate loss of ``x_adv`` (B, *shape), differentiable; noise from ``gen``."""
        b, shape = x_adv.shape[0], tuple(x_adv.shape[1:])
        if model == "base":
            return margin_loss(self._embed(x_adv), self.g, reference, exclude)
        s = self.c.eot
        noise = torch.randn((b, s) + shape, generator=gen, device=self.device) * self.r.sigma
        e = self._embed((x_adv[:, None] + noise).reshape((b * s,) + shape)).reshape(b, s, -1)
        if model == "soft":
            return margin_loss(e.mean(1), self.g, reference, exclude)  # F averaged over the draws
        return vote_surrogate_loss(e, self.g, reference, exclude, self.c.temperature)

    def _losses_chunked(self, model, x_adv, gen, reference, exclude, grad: bool):
        """Losses (and input gradients) of all candidates, in chunks of about batch_size model rows."""
        per = 1 if model == "base" else self.c.eot
        step = max(1, self.r.batch_size // per)
        losses, grads = [], []
        for a in range(0, len(x_adv), step):
            part = x_adv[a : a + step].detach().requires_grad_(grad)
            with torch.set_grad_enabled(grad):
                loss = self._loss(model, part, gen, reference, exclude)
                if grad:
                    (g,) = torch.autograd.grad(loss.sum(), part)
                    grads.append(g)
            losses.append(loss.detach())
        return torch.cat(losses), (torch.cat(grads) if grad else None)

    def _project(self, x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Onto the l2 ball of radius eps (per candidate), then into the pixel bounds."""
        flat = delta.flatten(1)
        norm = flat.norm(dim=1).clamp_min(1e-30)
        flat = flat * torch.clamp(eps * _PROJECTION_SHRINK / norm, max=1.0)[:, None]
        lo, hi = self.c.clip
        return (x[None] + flat.view_as(delta)).clamp(lo, hi) - x[None]

    def pgd(self, model: str, x: torch.Tensor, reference: int, exclude: int, gen: torch.Generator) -> Tuple[torch.Tensor, int]:
        """The attacked points (one per radius) and the number of model rows evaluated."""
        radii, k = self.radii, self.c.restarts
        eps = torch.tensor([r for r in radii for _ in range(k)], dtype=torch.float32, device=self.device)
        shape = tuple(x.shape)
        d = x.numel()
        # Restart 0 starts at the clean point; the others uniformly in the ball (a random
        # direction, norm eps * U^(1/d)).
        delta = torch.randn((len(eps),) + shape, generator=gen, device=self.device)
        delta = delta / delta.flatten(1).norm(dim=1).clamp_min(1e-30).view((-1,) + (1,) * len(shape))
        u = torch.rand(len(eps), generator=gen, device=self.device) ** (1.0 / d)
        delta = delta * (eps * u).view((-1,) + (1,) * len(shape))
        delta[0::k] = 0.0
        delta = self._project(x, delta, eps)
        per = 1 if model == "base" else self.c.eot
        rows = 0
        for _ in range(self.c.steps):
            _, grad = self._losses_chunked(model, x[None] + delta, gen, reference, exclude, grad=True)
            gnorm = grad.flatten(1).norm(dim=1).clamp_min(1e-30).view((-1,) + (1,) * len(shape))
            alpha = (self.c.step_size * eps / self.c.steps).view((-1,) + (1,) * len(shape))
            delta = self._project(x, delta + alpha * grad / gnorm, eps)
            rows += len(eps) * per
        # The best restart per radius, judged under fresh attack noise.
        final, _ = self._losses_chunked(model, x[None] + delta, gen, reference, exclude, grad=False)
        rows += len(eps) * per
        best = final.view(len(radii), k).argmax(1)
        chosen = delta.view((len(radii), k) + shape)[torch.arange(len(radii), device=self.device), best]
        # Clamped again: x + (clamp(x + d) - x) may round one ulp past a bound; clamping moves
        # towards the query (inside the bounds), so it never lengthens the perturbation.
        return (x[None] + chosen).clamp(*self.c.clip), rows

    def checked_norm(self, x: torch.Tensor, x_adv: torch.Tensor, radius: float) -> float:
        """The perturbation's l2 norm in float64, checked against the radius and the pixel bounds
        (after projection and clipping, on the float32 point that is evaluated)."""
        norm = float((x_adv.double() - x.double()).norm())
        lo, hi = self.c.clip
        if not norm <= radius or float(x_adv.min()) < lo or float(x_adv.max()) > hi:
            raise RuntimeError(f"attack: the perturbation left its constraints (norm {norm!r} for radius {radius!r}, "
                               f"values in [{float(x_adv.min())}, {float(x_adv.max())}] for clip {self.c.clip})")
        return norm

    def _evidence(self, x: torch.Tensor, index: int, slot: int, exclude: int, start: int, count: int):
        """Fresh smoothed evidence at x: the votes and the sum of the normalised embeddings of
        samples ``start .. start + count - 1`` of re-estimate ``slot`` (Philox stream ``index``;
        each slot has its own range of n0 + n sample indices)."""
        return smoothed_evidence(self.r, x, seed=self.c.seed, stream=index, start=slot * (self.c.n0 + self.c.n) + start,
                                 count=count, exclude=exclude, what="attack (re-estimate)")

    def _smoothed_test(self, model: str, x_adv: torch.Tensor, index: int, slot: int, ref: int, exclude: int):
        """The break test at an attacked point, and the samples it drew. The n0 samples choose
        the vote's rival and screen: a point they show (at level SCREEN_LEVEL) cannot be broken is
        not tested further. Skipping a test can only miss a break, never make one, so the screen
        costs at most SCREEN_LEVEL of power and nothing of validity."""
        n0, n = self.c.n0, self.c.n
        sel, sel_sum = self._evidence(x_adv, index, slot, exclude, 0, n0)
        if model == "vote":
            screen = vote_break_test(sel, sel, ref, SCREEN_LEVEL, bound="upper")
        else:
            screen_mean = sel_sum / n0
            screen_margin = soft_break_margin(screen_mean, -soft_deviation(n0, SCREEN_LEVEL, screen_mean, self.c.soft_bound),
                                              self.g, ref, exclude)
            screen = {"broken": screen_margin > 0}
        if not screen["broken"]:
            return {"broken": False, "screened_out": True}, n0
        test, test_sum = self._evidence(x_adv, index, slot, exclude, n0, n)
        if model == "vote":
            return vote_break_test(sel, test, ref, self.level), n0 + n
        mean = (sel_sum + test_sum) / (n0 + n)  # all n0 + n samples: t holds for every direction at once
        t = soft_deviation(n0 + n, self.level, mean, self.c.soft_bound)
        margin = soft_break_margin(mean, t, self.g, ref, exclude)
        return {"broken": margin > 0, "margin": margin, "deviation": t,
                "prediction": nearest_label(mean, self.g, exclude)}, n0 + n

    def _base_label(self, x: torch.Tensor, exclude: int) -> int:
        with torch.inference_mode():
            e = self._embed(x[None])
            idx, *_ = kernels.nn_search(e, self.g.embeddings, exclude=torch.tensor([exclude], device=self.device))
        return int(self.g.labels_np[int(idx[0])])

    # ---------------------------------------------------------------- one query

    def attack_query(self, x, index: int, label: Optional[int] = None, exclude: int = -1) -> dict:
        """Attack one query (its dataset ``index`` keys its randomness) with every configured
        model at every radius; the JSON-ready record (docs/attack.md, "Records")."""
        started = time.perf_counter()
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(self.device, torch.float32)
        gen = _generator(self.c.seed, index, self.device)
        total = self.c.n0 + self.c.n
        votes, sums = self._evidence(x, index, 0, exclude, 0, total)
        references = {"vote": int(np.argmax(votes)),
                      "soft": nearest_label(sums / total, self.g, exclude),
                      "base": self._base_label(x, exclude)}
        record = {"index": int(index), "label": None if label is None else int(label)}
        attack_rows, test_samples = 0, total
        for mi, model in enumerate(self.c.models):
            ref = references[model]
            out = {"reference": ref, "break_radius": None, "break_norm": None, "tests": []}
            if self.radii:
                points, rows = self.pgd(model, x, ref, exclude, gen)
                attack_rows += rows
                for j, radius in enumerate(self.radii):  # ascending: the first break settles the rest
                    x_adv = points[j].detach()
                    norm = self.checked_norm(x, x_adv, radius)
                    if model == "base":
                        got = self._base_label(x_adv, exclude)
                        result = {"broken": got != ref, "prediction": got}
                    else:
                        result, drawn = self._smoothed_test(model, x_adv, index, 1 + mi * len(self.radii) + j, ref, exclude)
                        test_samples += drawn
                    out["tests"].append({"radius": radius, "norm": norm, **result})
                    if result["broken"]:
                        out["break_radius"], out["break_norm"] = radius, norm
                        break
            record[model] = out
        record["attack_rows"] = int(attack_rows)
        record["test_samples"] = int(test_samples)
        record["seconds"] = float(time.perf_counter() - started)
        return record


def check_clip(x, clip: Tuple[float, float], what: str) -> None:
    """PGD keeps every point inside ``clip``: a query outside it would be attacked in a box that
    does not contain it."""
    lo, hi = clip
    if float(x.min()) < lo or float(x.max()) > hi:
        raise InputError(f"{what}: values lie in [{float(x.min()):g}, {float(x.max()):g}], outside --clip {lo:g},{hi:g}; "
                         "pass the bounds of the model's input space with --clip")
