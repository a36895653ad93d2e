"""The certify step: from one query's Monte-Carlo evidence to its certificates, or "keep sampling".

:func:`certify_step` is CERTIFY (Cohen et al. 2019, and RetrievalGuard for the soft model) on
one screen: the vote model's selection and bound, the soft model's prediction and radii, and in
sequential mode the stopping rule. The evidence comes from :mod:`~retrievalguard_fast.sampler`;
the bounds and radii from :mod:`~.certificates`, :mod:`~.stats` and :mod:`~.sequential`.

Guarantee, per query: with probability at least ``1 - alpha`` over the sampling, the vote
radius is certified (no perturbation of l2 norm below it changes the vote model's prediction);
and, separately, with probability at least ``1 - alpha`` the soft radii are certified (for the
soft Recall@K radii: the true label stays among the K nearest). The two statements do not hold
jointly at level ``1 - alpha`` (that would take ``1 - 2 alpha`` by the union bound); see
docs/certification.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np

from .certificates import SoftRadii, nearest_label, soft_radii, vote_radius
from .gallery import Gallery
from .record import ABSTAIN, QueryCertificate
from .sequential import Schedule, soft_decided, vote_decided
from .stats import BENNETT, deviation_at_least, mean_embedding_deviation


@dataclass
class Evidence:
    """What the sampler knows about one query at one checkpoint."""

    index: int  # the query's noise stream (its dataset index)
    label: Optional[int]  # true label, if known
    exclude: int  # gallery row left out (-1 for none)
    clean_prediction: int
    selection_votes: np.ndarray  # (classes,) int64: 1-NN labels of the n0 selection samples
    votes: np.ndarray  # (classes,) int64: 1-NN labels of the n certification samples so far
    n0: int
    n: int  # certification samples so far (this checkpoint)
    embedding_sum: np.ndarray  # (dim,) float64: sum of all n0 + n normalised noisy embeddings
    final: bool  # the last checkpoint: certify whatever the evidence says


def _finite_or_none(r: float) -> Optional[float]:
    """Radii as reported: None for 'not certified' (r <= 0); +inf stays inf."""
    return None if r is None or not r > 0 else float(r)


_blas_controller = None


def _single_threaded_host_blas():
    """Run numpy's BLAS on one thread for the per-query certificate maths.

    Those matrices are small; a multi-threaded call wakes OpenBLAS worker threads that then
    busy-wait for a while, and on a small machine they steal the cores the next model batch and
    nn_vote need (measured: certification 2.8x slower on 2 cores). threadpoolctl limits the
    threads only inside the block.
    """
    global _blas_controller
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController

        _blas_controller = ThreadpoolController()
    return _blas_controller.limit(limits=1, user_api="blas")


def certify_step(ev: Evidence, g: Gallery, sigma: float, schedule: Schedule,
                 ks: Sequence[int], soft_bound: str = BENNETT) -> Optional[QueryCertificate]:
    """CERTIFY at one checkpoint: the query's certificates, or None to keep sampling.
    ``soft_bound`` names the bound on ``|F_hat - F|`` (:data:`~.stats.SOFT_BOUNDS`)."""
    level = schedule.level  # alpha, or alpha / J over the J checkpoints of a sequential schedule
    # Vote model (Cohen et al.): the n0 selection votes choose a label (ties: the lowest), the n
    # fresh votes bound its probability from below.
    selected = int(np.argmax(ev.selection_votes))
    count = int(ev.votes[selected])
    if not ev.final and not vote_decided(count, ev.n, schedule, sigma):  # cheap: checked first
        return None
    # Soft model (RetrievalGuard): the nearest label of the mean embedding F_hat, radii within the
    # bound t on |F_hat - F| from all n0 + n samples (it holds for every direction at once).
    samples = ev.n0 + ev.n
    mean = ev.embedding_sum / float(samples)
    norm = float(np.linalg.norm(mean))
    t = mean_embedding_deviation(samples, level, g.dim, mean_norm=norm, bound=soft_bound)
    with _single_threaded_host_blas():
        radii_of = lambda label, deviation, ks: soft_radii(  # noqa: E731
            mean, deviation, g.embeddings64, g.sq_norms64, g.labels_np, label, sigma, ev.exclude, ks)
        predicted = nearest_label(mean, g.embeddings64, g.sq_norms64, g.labels_np, ev.exclude)
        radii = radii_of(predicted, t, ks if ev.label == predicted else (1,))
        if not ev.final:
            # Stop unless some asked radius is not certified now but reachable at the cap: the
            # estimate's upper edge u.F_hat + t with (a lower bound on) the cap's bound t_cap is
            # deviation t_cap - t. Here |F| <= |F_hat| + t and |F| >= |F_hat| - t.
            t_cap = deviation_at_least(ev.n0 + schedule.cap, level, g.dim, norm_of_mean_at_most=norm + t,
                                       norm_of_mean_at_least=norm - t, bound=soft_bound)
            if not soft_decided(radii.gaussian, radii_of(predicted, t_cap - t, (1,)).gaussian, schedule):
                return None
        # Recall@K radii are for the true label: when it is the prediction, one call gave both.
        at_label = None if ev.label is None else radii if ev.label == predicted else radii_of(ev.label, t, ks)
    p_lower, r_vote = vote_radius(count, ev.n, level, sigma)
    return QueryCertificate(
        index=ev.index, label=ev.label, clean_prediction=ev.clean_prediction,
        vote_prediction=selected if r_vote is not None else ABSTAIN, vote_selected=selected, vote_count=count,
        vote_n=ev.n, vote_pA_lower=p_lower, vote_radius=r_vote,
        soft_prediction=predicted if radii.gaussian > 0 else ABSTAIN,
        soft_gaussian_radius=_finite_or_none(radii.gaussian), soft_lipschitz_radius=_finite_or_none(radii.lipschitz),
        soft_deviation=t, soft_recall_at_k=_recall_at_k(at_label, ks), samples=samples, mode=schedule.mode,
        label_count=_label_count(ev), soft_mean_norm=norm)


def _label_count(ev: Evidence) -> Optional[int]:
    """The fresh votes for the true label (0 for a label no gallery row has)."""
    if ev.label is None:
        return None
    return int(ev.votes[ev.label]) if 0 <= ev.label < len(ev.votes) else 0


def _recall_at_k(at_label: Optional[SoftRadii], ks: Sequence[int]) -> Dict[int, Dict[str, Optional[float]]]:
    if at_label is None:
        return {}
    return {k: {"gaussian": _finite_or_none(at_label.gaussian_at_k[k]),
                "lipschitz": _finite_or_none(at_label.lipschitz_at_k[k])} for k in ks}
