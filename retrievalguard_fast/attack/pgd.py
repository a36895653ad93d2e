"""Empirical robustness: an l2 PGD attack with expectation over the noise (EOT), the upper bound
that brackets the certificates' lower bound from above (docs/attack.md).

Three models are attacked, each at every radius of a grid and, given the query's certify record,
at each certified radius (:mod:`.claims`):

- ``soft``: the soft smoothed model S (nearest gallery label of ``F(x) = E f̄(x + δ)``); ``F`` is
  the mean of ``eot`` normalised noisy embeddings per step;
- ``vote``: the vote smoothed model V, through a differentiable surrogate (SmoothAdv, Salman et
  al. 2019): per noise draw a softmax over ``-|f̄(x + δ) - g_j|^2 / T`` pooled by label, averaged
  over the draws into ``P(c)``;
- ``base``: the base model's 1-NN label of ``f̄(x)`` without noise.

Losses (:mod:`.losses`). The selection margin is positive exactly when the model's label
changes: ``min_p |e - g_p|^2 - min_b |e - g_b|^2`` (``e``: ``F`` or ``f̄(x)``; p: rows of the
reference label, b: of any other; a Recall@k claim: the k-th smallest ``|e - g_b|^2``) and, for
the vote, ``log max_{c != ref} P(c) - log P(ref)``; it picks the best candidate of a radius. The
objectives with a gradient from every class use the class scores ``s_c = -min_{y_j = c} |e - g_j|^2
/ T`` (for the vote ``s_c = log P(c)``): against all rival classes, ``log sum_{c != ref}
exp(s_c) - s_ref``, or, in a targeted pass, against one rival, ``s_c - s_ref``.

PGD: per radius ``restarts`` candidates ascending the margin (the first from the clean point, the
others uniform in the ball), then from the clean point one against all rival classes and
``targets`` targeted passes against the rival labels nearest to the clean point (ranked at
``F̂`` of the clean re-estimate, or at ``f̄(x)`` for the base model); ``steps`` steps of size ``step_size * radius / steps`` along the
normalised gradient, each followed by the projection on the l2 ball and the clip to the pixel
bounds (the clip never lengthens a perturbation of a point inside the bounds: each coordinate
moves towards the clean one). The best candidate (by the selection margin under fresh attack
noise) is kept, and its perturbation norm is checked in float64.

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
  broken if every row of the reference label is beaten by some row (for a Recall@k claim: by k
  rows) of another label even at the edge of that ball: ``u.F̂ + t < tau`` in the pair notation
  of docs/certification.md section 3;
- base: deterministic, the 1-NN label of the attacked point differs from the clean one.

Randomness: the attack's noise comes from a torch generator seeded by ``(seed, query index)``;
the re-estimates use the package's Philox streams under ``seed``, stream = query index, each
re-estimate its own range of sample indices (slot 0 the clean point, then one slot per model
and radius, then one per certified claim). A query's record thus depends only on the seed, its
index, the parameters and its certify record. A claim's test runs at ``alpha / (the query's
number of claims)``. Only a smoothed model draws smoothing samples: ``models=("base",)`` draws none.
"""

from __future__ import annotations

import time
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from .. import kernels
from ..errors import InputError
from ..smoothing.sampler import smoothed_evidence
from .breaks import SCREEN_LEVEL, nearest_label, soft_break_margin, soft_deviation, vote_break_test
from .claims import certified_claims
from .config import MODELS, AttackConfig
from .losses import MARGIN, UNTARGETED, embedding_losses, nearest_rivals, vote_losses

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
        if config.targets < 0:
            raise ValueError(f"attack: targets must be >= 0, got {config.targets}")
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

    def _loss(self, model: str, x_adv: torch.Tensor, gen: torch.Generator, reference: int, exclude: int,
              targets: torch.Tensor, k: int):
        """(objective, selection margin) per candidate of ``x_adv`` (B, *shape), differentiable;
        noise from ``gen``; ``targets`` (B,): each candidate's objective (a rival label, UNTARGETED:
        all rivals, MARGIN: the selection margin)."""
        b, shape = x_adv.shape[0], tuple(x_adv.shape[1:])
        temperature = self.c.temperature
        if model == "base":
            return embedding_losses(self._embed(x_adv), self.g, reference, exclude, temperature, targets, k)
        s = self.c.eot
        noise = torch.randn((b, s) + shape, generator=gen, device=self.device) * self.r.sigma
        e = self._embed((x_adv[:, None] + noise).reshape((b * s,) + shape)).reshape(b, s, -1)
        if model == "soft":  # F averaged over the draws
            return embedding_losses(e.mean(1), self.g, reference, exclude, temperature, targets, k)
        return vote_losses(e, self.g, reference, exclude, temperature, targets)

    def _losses_chunked(self, model, x_adv, gen, reference, exclude, targets, k, grad: bool):
        """Selection margins (and the objective's input gradients) of all candidates, in chunks
        of about batch_size model rows."""
        step = max(1, self.r.batch_size // self._rows_per_candidate(model))
        margins, grads = [], []
        for a in range(0, len(x_adv), step):
            part = x_adv[a : a + step].detach().requires_grad_(grad)
            with torch.set_grad_enabled(grad):
                objective, margin = self._loss(model, part, gen, reference, exclude, targets[a : a + step], k)
                if grad:
                    (g,) = torch.autograd.grad(objective.sum(), part)
                    grads.append(g)
            margins.append(margin.detach())
        return torch.cat(margins), (torch.cat(grads) if grad else None)

    def _rows_per_candidate(self, model: str) -> int:
        return 1 if model == "base" else self.c.eot

    def _project(self, x: torch.Tensor, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Onto the l2 ball of radius eps (per candidate), then into the pixel bounds."""
        flat = delta.flatten(1)
        norm = flat.norm(dim=1).clamp_min(1e-30)
        flat = flat * torch.clamp(eps * _PROJECTION_SHRINK / norm, max=1.0)[:, None]
        lo, hi = self.c.clip
        return (x[None] + flat.view_as(delta)).clamp(lo, hi) - x[None]

    def pgd(self, model: str, x: torch.Tensor, reference: int, exclude: int, gen: torch.Generator,
            radii: Sequence[float], rivals: Sequence[int] = (), k: int = 1) -> Tuple[torch.Tensor, int]:
        """The attacked points (one per radius) and the number of model rows evaluated.

        Candidates per radius: ``restarts`` ascending the selection margin (the first from the
        clean point, the others uniform in the ball), then, from the clean point, one against all
        rival classes and one targeted pass against each of ``rivals``; the best by the selection
        margin under fresh attack noise. ``k > 1``: a Recall@k claim, attacked through its margin
        alone (it has no per-class form)."""
        per_radius = [MARGIN] * self.c.restarts + ([UNTARGETED] + [int(c) for c in rivals] if k == 1 else [])
        m = len(per_radius)
        eps = torch.tensor([r for r in radii for _ in range(m)], dtype=torch.float32, device=self.device)
        targets = torch.tensor(per_radius * len(radii), dtype=torch.int64, device=self.device)
        shape = tuple(x.shape)
        d = x.numel()
        # Random starts: a random direction, norm eps * U^(1/d) (uniform in the ball).
        delta = torch.randn((len(eps),) + shape, generator=gen, device=self.device)
        delta = delta / delta.flatten(1).norm(dim=1).clamp_min(1e-30).view((-1,) + (1,) * len(shape))
        u = torch.rand(len(eps), generator=gen, device=self.device) ** (1.0 / d)
        delta = delta * (eps * u).view((-1,) + (1,) * len(shape))
        from_clean = torch.tensor([j == 0 or j >= self.c.restarts for j in range(m)] * len(radii), device=self.device)
        delta[from_clean] = 0.0
        delta = self._project(x, delta, eps)
        rows = 0
        for _ in range(self.c.steps):
            _, grad = self._losses_chunked(model, x[None] + delta, gen, reference, exclude, targets, k, grad=True)
            gnorm = grad.flatten(1).norm(dim=1).clamp_min(1e-30).view((-1,) + (1,) * len(shape))
            alpha = (self.c.step_size * eps / self.c.steps).view((-1,) + (1,) * len(shape))
            delta = self._project(x, delta + alpha * grad / gnorm, eps)
            rows += len(eps) * self._rows_per_candidate(model)
        # The best candidate per radius, judged by the selection margin under fresh attack noise.
        final, _ = self._losses_chunked(model, x[None] + delta, gen, reference, exclude, targets, k, grad=False)
        rows += len(eps) * self._rows_per_candidate(model)
        best = final.view(len(radii), m).argmax(1)
        chosen = delta.view((len(radii), m) + shape)[torch.arange(len(radii), device=self.device), best]
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

    def _smoothed_test(self, model: str, x_adv: torch.Tensor, index: int, slot: int, ref: int, exclude: int,
                       level: float, k: int = 1):
        """The break test at an attacked point at ``level``, and the samples it drew. The n0
        samples choose the vote's rival and screen: a point they show (at level SCREEN_LEVEL)
        cannot be broken is not tested further. Skipping a test can only miss a break, never
        make one, so the screen costs at most SCREEN_LEVEL of power and nothing of validity.
        ``k > 1`` (soft only): broken when no row of ``ref`` is among the k nearest."""
        n0, n = self.c.n0, self.c.n
        sel, sel_sum = self._evidence(x_adv, index, slot, exclude, 0, n0)
        if model == "vote":
            screen = vote_break_test(sel, sel, ref, SCREEN_LEVEL, bound="upper")
        else:
            screen_mean = sel_sum / n0
            screen_margin = soft_break_margin(screen_mean, -soft_deviation(n0, SCREEN_LEVEL, screen_mean, self.c.soft_bound),
                                              self.g, ref, exclude, k)
            screen = {"broken": screen_margin > 0}
        if not screen["broken"]:
            return {"broken": False, "screened_out": True}, n0
        test, test_sum = self._evidence(x_adv, index, slot, exclude, n0, n)
        if model == "vote":
            return vote_break_test(sel, test, ref, level), n0 + n
        mean = (sel_sum + test_sum) / (n0 + n)  # all n0 + n samples: t holds for every direction at once
        t = soft_deviation(n0 + n, level, mean, self.c.soft_bound)
        margin = soft_break_margin(mean, t, self.g, ref, exclude, k)
        return {"broken": margin > 0, "margin": margin, "deviation": t,
                "prediction": nearest_label(mean, self.g, exclude)}, n0 + n

    def _break_test(self, model, x_adv, index, slot, ref, exclude, level, k=1):
        """(result, samples drawn) of the break test of ``model`` at ``x_adv``."""
        if model == "base":
            got = self._base_label(x_adv, exclude)
            return {"broken": got != ref, "prediction": got}, 0
        return self._smoothed_test(model, x_adv, index, slot, ref, exclude, level, k)

    def _clean_embedding(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self._embed(x[None])[0].clone()

    def _base_label(self, x: torch.Tensor, exclude: int) -> int:
        with torch.inference_mode():
            e = self._embed(x[None])
            idx, *_ = kernels.nn_search(e, self.g.embeddings, exclude=torch.tensor([exclude], device=self.device))
        return int(self.g.labels_np[int(idx[0])])

    # ---------------------------------------------------------------- one query

    def attack_query(self, x, index: int, label: Optional[int] = None, exclude: int = -1,
                     certified: Optional[dict] = None) -> dict:
        """Attack one query (its dataset ``index`` keys its randomness) with every configured
        model at every radius and, given its certify record ``certified``, every claim of that
        record at its own certified radius (:func:`~.claims.certified_claims`); the JSON-ready
        record (docs/attack.md, "Records")."""
        started = time.perf_counter()
        x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(self.device, torch.float32)
        gen = _generator(self.c.seed, index, self.device)
        models = self.c.models
        claims = certified_claims(certified, models)
        record = {"index": int(index), "label": None if label is None else int(label)}
        # The clean point: the base model's embedding and label, and, only for a smoothed model,
        # its smoothed evidence (re-estimate slot 0); each model's rival labels are ranked there.
        centre = {"base": self._clean_embedding(x)}
        references = {"base": self._base_label(x, exclude)}
        test_samples = 0
        if any(m != "base" for m in models):
            total = self.c.n0 + self.c.n
            votes, sums = self._evidence(x, index, 0, exclude, 0, total)
            test_samples += total
            centre["vote"] = centre["soft"] = torch.as_tensor(sums / total, dtype=torch.float32, device=self.device)
            references["vote"] = int(np.argmax(votes))
            references["soft"] = nearest_label(sums / total, self.g, exclude)
        attack_rows = 0

        def rivals(model: str, reference: int) -> list:
            return nearest_rivals(centre[model], self.g, reference, exclude, self.c.targets)

        for mi, model in enumerate(models):
            ref = references[model]
            out = {"reference": ref, "break_radius": None, "break_norm": None, "tests": []}
            if self.radii:
                points, rows = self.pgd(model, x, ref, exclude, gen, self.radii, rivals(model, ref))
                attack_rows += rows
                for j, radius in enumerate(self.radii):  # ascending: the first break settles the rest
                    x_adv = points[j].detach()
                    norm = self.checked_norm(x, x_adv, radius)
                    result, drawn = self._break_test(model, x_adv, index, 1 + mi * len(self.radii) + j, ref, exclude,
                                                     self.level)
                    test_samples += drawn
                    out["tests"].append({"radius": radius, "norm": norm, **result})
                    if result["broken"]:
                        out["break_radius"], out["break_norm"] = radius, norm
                        break
            record[model] = out
        # Each certified claim at its own radius, against its own label (which may differ from
        # the clean re-estimate's): slots after the grid's; Bonferroni over the query's claims.
        record["certified"] = []
        for ci, claim in enumerate(claims):
            points, rows = self.pgd(claim.model, x, claim.reference, exclude, gen, [claim.radius],
                                    rivals(claim.model, claim.reference), claim.k)
            attack_rows += rows
            x_adv = points[0].detach()
            norm = self.checked_norm(x, x_adv, claim.radius)
            slot = 1 + len(models) * len(self.radii) + ci
            result, drawn = self._break_test(claim.model, x_adv, index, slot, claim.reference, exclude,
                                             self.c.alpha / len(claims), claim.k)
            test_samples += drawn
            record["certified"].append({**claim.to_dict(), "norm": norm, **result})
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
