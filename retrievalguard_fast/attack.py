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
  :func:`~.stats.mean_embedding_deviation` (``|F̂ - F| <= t`` with probability ``1 - alpha``);
  broken if every row of the reference label is beaten by some row of another label even at the
  edge of that ball: ``u.F̂ + t < tau`` in the pair notation of docs/certification.md section 3;
- base: deterministic, the 1-NN label of the attacked point differs from the clean one.

Randomness: the attack's noise comes from a torch generator seeded by ``(seed, query index)``;
the re-estimates use the package's Philox streams under ``seed``, stream = query index, each
re-estimate its own range of sample indices (slot 0 the clean point, then one slot per model
and radius). A query's record thus depends only on the seed, its index and the parameters.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import _ops
from .certify import ABSTAIN
from .stats import BENNETT, clopper_pearson_lower, clopper_pearson_upper, mean_embedding_deviation

MODELS = ("vote", "soft", "base")
#: Certificates compared against each attacked model: (record field of the prediction, of the radius).
CERTIFIED_FIELDS = {"vote": ("vote_prediction", "vote_radius"), "soft": ("soft_prediction", "soft_gaussian_radius")}
_MARGIN_ALLOWANCE = 1e-9  # subtracted from every soft break margin, as the certificates do
SCREEN_LEVEL = 0.01  # a point that the test could break is screened out with probability at most this
_PROJECTION_SHRINK = 1.0 - 1e-5  # project into a slightly smaller ball, so float32 rounding stays inside


def soft_deviation(samples: int, alpha: float, mean: np.ndarray, bound: str) -> float:
    """The soft model's concentration bound t (``|F̂ - F| <= t`` w.p. ``1 - alpha``) at the mean
    ``F̂`` of ``samples`` normalised embeddings: the one call of the project's bound, so the break
    test uses the certifier's bound (``bound``: :data:`~.stats.SOFT_BOUNDS`)."""
    return mean_embedding_deviation(samples, alpha, len(mean), mean_norm=float(np.linalg.norm(mean)), bound=bound)


@dataclass(frozen=True)
class AttackConfig:
    """Parameters of the attack and of the break test (all recorded in run.json)."""

    radii: Tuple[float, ...]
    models: Tuple[str, ...] = MODELS
    steps: int = 20
    eot: int = 32  # noise draws per PGD step (expectation over transformation)
    restarts: int = 2
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
                "restarts": self.restarts, "step_size": self.step_size, "temperature": self.temperature,
                "clip": list(self.clip), "n0": self.n0, "n": self.n, "alpha": self.alpha, "seed": self.seed,
                "soft_bound": self.soft_bound}


# ---------------------------------------------------------------------- break tests


def vote_break_test(selection: np.ndarray, counts: np.ndarray, reference: int, alpha: float,
                    bound: str = "lower") -> dict:
    """Is the vote model's prediction some label other than ``reference``, with confidence
    ``1 - alpha``? ``selection``: votes of the n0 selection samples (they choose the rival c');
    ``counts``: votes of the n fresh test samples. Sign test of ``p_c' > p_ref``: broken when the
    Clopper-Pearson lower bound on the rival's share of the two exceeds 1/2. With
    ``bound="upper"`` (the screen) "broken" means only "not excluded": the upper bound exceeds 1/2."""
    rivals = selection.astype(np.int64).copy()
    if 0 <= reference < len(rivals):
        rivals[reference] = -1  # never the reference itself
    rival = int(np.argmax(rivals))
    ref_count = int(counts[reference]) if 0 <= reference < len(counts) else 0
    rival_count = int(counts[rival])
    total = ref_count + rival_count
    if bound == "upper":
        return {"broken": total > 0 and float(clopper_pearson_upper(rival_count, total, alpha)) > 0.5}
    low = float(clopper_pearson_lower(rival_count, total, alpha)) if total > 0 else 0.0
    return {"broken": low > 0.5, "rival": rival, "reference_count": ref_count, "rival_count": rival_count,
            "rival_share_lower": low}


def soft_break_margin(mean: np.ndarray, t: float, gallery, reference: int, exclude: int = -1,
                      chunk: int = 256) -> float:
    """``min_p max_b (tau - u.F̂) - t`` over rows p of ``reference`` and b of other labels (minus
    a 1e-9 allowance): positive iff every positive row p has a negative b with ``u.F̂ + t < tau``,
    i.e. on the event ``|F̂ - F| <= t`` b is strictly closer to F than p, so the nearest row of F
    has another label. +inf when the reference label has no row, -inf when no other label has."""
    g, n2, labels = gallery.embeddings64, gallery.sq_norms64, gallery.labels_np
    keep = np.ones(len(labels), dtype=bool)
    if exclude >= 0:
        keep[exclude] = False
    pos, neg = np.flatnonzero(keep & (labels == reference)), np.flatnonzero(keep & (labels != reference))
    if len(pos) == 0:
        return math.inf
    if len(neg) == 0:
        return -math.inf
    gn, n2n, fn = g[neg], n2[neg], g[neg] @ mean
    worst = math.inf
    for a in range(0, len(pos), chunk):
        p = pos[a : a + chunk]
        sep = np.sqrt(np.maximum(n2[p][:, None] + n2n[None, :] - 2.0 * g[p] @ gn.T, 1e-300))
        uf = ((g[p] @ mean)[:, None] - fn[None, :]) / sep  # u.F̂, u = (g_p - g_b)/|g_p - g_b|
        tau = (n2[p][:, None] - n2n[None, :]) / (2.0 * sep)
        worst = min(worst, float((tau - uf).max(axis=1).min()))  # each p's best beating negative
    return worst - t - _MARGIN_ALLOWANCE


# ---------------------------------------------------------------------- losses


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


# ---------------------------------------------------------------------- the attack


def _generator(seed: int, index: int, device) -> torch.Generator:
    """The attack noise of one query: a torch generator keyed by (seed, query index)."""
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(index),)).generate_state(1, np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


class Attacker:
    """PGD + EOT against the soft, vote and base models of one :class:`~.smoothing.SmoothedRetriever`
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
        votes = torch.zeros(self.g.num_classes, dtype=torch.int64, device=self.device)
        sums = torch.zeros(self.g.dim, dtype=torch.float64, device=self.device)
        bs = self.r.batch_size
        with torch.inference_mode():
            for a in range(0, count, bs):
                rows = min(bs, count - a)
                noisy = _ops.gaussian_noise(x, self.r.sigma, rows, seed=self.c.seed, stream=index,
                                            start=slot * (self.c.n0 + self.c.n) + start + a)
                cnt, s = _ops.nn_vote(self.r.embed(noisy, "attack (re-estimate)"), self.g.embeddings, self.g.labels,
                                      self.g.num_classes, exclude=exclude, precision=self.r.nn_precision)
                votes.add_(cnt)
                sums.add_(s)
        return votes.cpu().numpy(), sums.cpu().numpy()

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
                "prediction": _nearest_label(mean, self.g, exclude)}, n0 + n

    def _base_label(self, x: torch.Tensor, exclude: int) -> int:
        with torch.inference_mode():
            e = self._embed(x[None])
            idx, *_ = _ops.nn_search(e, self.g.embeddings, exclude=torch.tensor([exclude], device=self.device))
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
                      "soft": _nearest_label(sums / total, self.g, exclude),
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


def _nearest_label(mean: np.ndarray, gallery, exclude: int) -> int:
    from .certificates import nearest_label

    return int(nearest_label(mean, gallery.embeddings64, gallery.sq_norms64, gallery.labels_np, exclude))


# ---------------------------------------------------------------------- summaries and the alarm


def robust_at(record: dict, model: str, radius: float) -> bool:
    """Whether the attack left the query correct at ``radius``: the clean reference is its true
    label and no attacked radius <= ``radius`` broke it (a point inside a smaller ball is inside
    this one)."""
    m = record[model]
    if m["reference"] != record["label"]:
        return False
    return m["break_radius"] is None or m["break_radius"] > radius


def empirical_recall(records: Sequence[dict], model: str, radii: Sequence[float]) -> Dict[str, float]:
    """Empirical robust Recall@1 (an upper bound on the true one, up to the tests' alpha) per radius."""
    return {str(float(r)): float(np.mean([robust_at(rec, model, float(r)) for rec in records])) if records else float("nan")
            for r in radii}


def soundness_alarm(records: Sequence[dict], certified: Dict[int, dict]) -> dict:
    """Certified queries broken inside their certified radius, per certificate.

    For the vote and soft models: a certified record (prediction c, radius R) and the attack
    record of the same query whose clean reference is c and whose breaking point has norm < R:
    the attack changed, with confidence 1 - alpha, a prediction certified not to change. Queries
    whose certified prediction differs from the attack's clean reference are counted apart
    (``disagree``); their breaks are not evidence against the certificate."""
    out = {"broken_inside_radius": 0, "by_model": {}, "cases": []}
    for model, (pred_field, radius_field) in CERTIFIED_FIELDS.items():
        counts = {"certified": 0, "broken_inside_radius": 0, "disagree": 0}
        for rec in records:
            cert = certified.get(int(rec["index"]))
            if model not in rec or cert is None:
                continue
            pred, radius = cert.get(pred_field), cert.get(radius_field)
            if pred is None or pred == ABSTAIN or radius is None:
                continue
            counts["certified"] += 1
            m = rec[model]
            if m["reference"] != pred:
                counts["disagree"] += 1
                continue
            if m["break_norm"] is not None and m["break_norm"] < float(radius):
                counts["broken_inside_radius"] += 1
                out["cases"].append({"index": int(rec["index"]), "model": model, "certified_radius": float(radius),
                                     "break_radius": m["break_radius"], "break_norm": m["break_norm"]})
        out["by_model"][model] = counts
        out["broken_inside_radius"] += counts["broken_inside_radius"]
    return out


# ---------------------------------------------------------------------- a run kept in a folder


def certified_records(folder: str, identity: dict, sigma: float, model_stage: dict) -> Dict[int, dict]:
    """The records of a certify results folder over the same queries, model and sigma (else an
    InputError naming ``--certified``), by query index."""
    from .errors import InputError
    from .runstore import read_run

    params, records = read_run(folder, "--certified")
    if params.get("command", "certify") != "certify" or any("vote_radius" not in r for r in records):
        raise InputError(f"--certified {folder}: not a folder of certify results (it holds {params.get('command')!r} "
                         "records); pass the --out of a certify run")
    # The same model and data; the selection (--every/--max-queries) may differ: records are keyed
    # by the query's index in its data set, and the summary compares the queries both runs hold.
    same = {k: v for k, v in identity.items() if k != "selection"}
    differ = [k for k in same if params.get(k) != same[k]]
    if params.get("sigma") != sigma:
        differ.append(f"sigma {params.get('sigma')} != {sigma}")
    if params.get("model_stage", model_stage) != model_stage:
        differ.append("model_stage")
    if differ:
        raise InputError(f"--certified {folder}: not a run over the same model, queries and sigma ({', '.join(differ)} "
                         "differ); certify with the same --model/--queries/--gallery/--sigma first")
    return {int(r["index"]): r for r in records}


def check_clip(x, clip: Tuple[float, float], what: str) -> None:
    """PGD keeps every point inside ``clip``: a query outside it would be attacked in a box that
    does not contain it."""
    from .errors import InputError

    lo, hi = clip
    if float(x.min()) < lo or float(x.max()) > hi:
        raise InputError(f"{what}: values lie in [{float(x.min()):g}, {float(x.max()):g}], outside --clip {lo:g},{hi:g}; "
                         "pass the bounds of the model's input space with --clip")


def attack_to_folder(out, retriever, queries, labels, *, identity: dict, config: AttackConfig,
                     exclude: Optional[np.ndarray] = None, indices: Optional[Sequence[int]] = None,
                     certified: Optional[str] = None, resume: bool = False, quiet: bool = False) -> dict:
    """Attack every query into the folder ``out`` (run.json, results.jsonl: one record per query,
    flushed and fsync'ed as it finishes; summary.json / .csv; attack_vs_certified.png) and
    return the summary. ``out``: a folder name or a :class:`~.runstore.RunFolder` the caller
    holds. ``queries``: an array (M, *input_shape) or a source read in chunks (as for
    :func:`~.runstore.certify_to_folder`). ``indices``: each query's index in its data set
    (default 0..M-1), which keys its randomness and names its record, so ``resume=True`` continues
    an interrupted run with identical results. ``certified``: a certify results folder over the
    same queries; its certified Recall@1 is set beside the empirical one and every certified
    query is checked against the attack (:func:`soundness_alarm`)."""
    from .errors import out_of_memory_is_input_error
    from .progress import Progress
    from .report import attack_summary, write_attack_reports
    from .runstore import RunFolder, RunInterrupted, query_chunks

    labels = np.asarray(labels, dtype=np.int64)
    m = int(len(queries))
    exclude = np.full(m, -1, np.int64) if exclude is None else np.asarray(exclude, dtype=np.int64)
    indices = np.arange(m, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    params = {"command": "attack", **identity, "sigma": float(str(np.float32(retriever.sigma))), **config.to_dict(),
              "num_queries": m, "device_type": retriever.device.type, "batch_size": retriever.batch_size,
              "model_stage": retriever.model_stage}
    cert = None if certified is None else certified_records(certified, identity, params["sigma"], retriever.model_stage)
    attacker = Attacker(retriever, config)
    if not hasattr(queries, "iter_chunks"):  # an array: checked whole before the folder is touched
        check_clip(queries, config.clip, "the queries")
    folder = RunFolder(out) if isinstance(out, str) else out
    try:
        records = folder.start(params, resume)
        done = {int(r["index"]) for r in records}
        todo = np.array([k for k in range(m) if int(indices[k]) not in done], dtype=np.int64)
        progress = Progress(m, len(done), quiet=quiet)
        started = time.perf_counter()
        try:
            with out_of_memory_is_input_error("attacking a query in batches of batch_size model rows",
                                              "--batch-size (or --eot)"):
                for positions, xs in query_chunks(queries, todo):
                    for k, x in zip(positions, xs):
                        index = int(indices[k])
                        check_clip(x, config.clip, f"query {index}")
                        record = attacker.attack_query(x, index, int(labels[k]), int(exclude[k]))
                        records.append(folder.append(record))
                        progress.samples(record["attack_rows"] + record["test_samples"])
                        progress.query_done()
        except KeyboardInterrupt:
            progress.close()
            raise RunInterrupted(f"interrupted: {len(records)} of {m} queries are saved in {folder.results_path}; "
                                 "rerun with --resume to continue") from None
        progress.close()
        summary = attack_summary(sorted(records, key=lambda r: r["index"]), params, cert, certified_folder=certified,
                                 device=retriever.device, session_queries=len(todo),
                                 session_seconds=time.perf_counter() - started)
        write_attack_reports(folder.out, summary)
    finally:
        if folder is not out:
            folder.close()
    return summary
