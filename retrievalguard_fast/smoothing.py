"""Smoothed 1-NN retrieval: the sampling loop and per-query certification (DESIGN.md section 3).

A :class:`SmoothedRetriever` wraps any torch embedding model and a :class:`~.gallery.Gallery`.
For each query it draws ``n0 + n`` noisy copies (counter-based: copy ``i`` of query ``q`` is
sample ``i`` of noise stream ``q`` under ``seed``), embeds them, and with one fused
:func:`~retrievalguard_fast.nn_vote` pass per batch counts the 1-NN labels and accumulates the
mean normalised embedding. From those it certifies

- the vote model V (Cohen et al. CERTIFY: ``n0`` selection votes choose the label, ``n`` fresh
  votes bound its probability with Clopper-Pearson), and
- the soft model S (RetrievalGuard: the nearest gallery label of the mean embedding, with the
  Gaussian and Lipschitz radii of DESIGN.md 3.2 and the McDiarmid Monte-Carlo bound, using all
  ``n0 + n`` samples, since that bound holds for every direction at once),

beside the clean prediction. Results depend only on the seed, each query's stream index and the
parameters; the batch size changes them only if the model's per-row output depends on the
number of rows in its batch (torch's CPU kernels here: not for 64 rows or more).

Guarantee, per query: with probability at least ``1 - alpha`` over
the sampling, each reported radius R is certified: no perturbation of l2 norm below R changes
that model's prediction (for the soft Recall@K radii: the true label stays among the K nearest).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from . import _ops
from .certificates import nearest_label, soft_radii, vote_radius
from .gallery import Gallery
from .sequential import FIXED, Schedule, doubling_schedule, fixed_schedule, soft_decided, vote_decided
from .stats import mean_embedding_deviation

ABSTAIN = -1

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


@dataclass
class QueryCertificate:
    """Everything certified about one query. Abstentions have prediction -1 and radius None."""

    index: int
    label: Optional[int]
    clean_prediction: int
    vote_prediction: int
    vote_selected: int  # the label chosen by the n0 selection votes
    vote_count: int  # fresh votes for it, out of vote_n
    vote_n: int
    vote_pA_lower: float
    vote_radius: Optional[float]
    soft_prediction: int
    soft_gaussian_radius: Optional[float]
    soft_lipschitz_radius: Optional[float]
    soft_deviation: float  # McDiarmid bound t on |F_hat - F|
    soft_recall_at_k: Dict[int, Dict[str, Optional[float]]] = field(default_factory=dict)
    samples: int = 0  # noisy samples drawn for this query (n0 + vote_n)
    seconds: float = 0.0
    mode: str = FIXED  # "fixed-n" or "sequential" (bounds at alpha / number of checkpoints)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["soft_recall_at_k"] = {str(k): v for k, v in self.soft_recall_at_k.items()}
        return d


def _finite_or_none(r: float) -> Optional[float]:
    """Radii as reported: None for 'not certified' (r <= 0); +inf stays inf."""
    return None if r is None or not r > 0 else float(r)


@dataclass
class _Chunk:
    query: int  # position in the current call
    start: int  # first sample index (within the query's noise stream)
    count: int
    selection: bool  # part of the n0 selection samples


class SmoothedRetriever:
    """Randomized smoothing of 1-NN retrieval over a base embedding model.

    ``model``: any ``torch.nn.Module`` mapping a batch of inputs (in the model's own input
    space, e.g. pixels in [0, 1], with any normalisation inside the model) to (batch, k)
    embeddings; it is put in eval mode and run under ``torch.inference_mode()``.
    ``sigma``: noise level in that input space (radii are in the same space).
    ``batch_size``: noisy samples per model call; samples of several queries share a batch when
    one query has fewer left, and the model always sees exactly this many rows (the last batch is
    padded), so a sample's embedding never depends on how the queries were packed. It changes
    speed, not results, as long as the model's output for a row does not depend on the number of
    rows in its batch (see the module docstring).
    Model-stage options: ``bf16`` (run the model under bfloat16 autocast: a different,
    deterministic base model, usually faster on CPUs with AVX-512 BF16 and on GPUs),
    ``channels_last`` (NHWC memory format, for convolutional models), ``compile``
    (``torch.compile`` the model; the first batches pay the compilation).
    ``nn_precision``: the nearest-neighbour search of :func:`~retrievalguard_fast.nn_vote`:
    ``"exact"`` (default), or ``"tf32"`` / ``"bf16"`` (tensor-core screening, verified: the same
    votes and sums bit for bit, so it changes speed, never results; worth it on GPUs with large
    galleries, slower on CPUs).
    """

    def __init__(self, model: torch.nn.Module, gallery: Gallery, sigma: float, *, device: Any = None,
                 batch_size: int = 1000, seed: int = 0, bf16: bool = False, channels_last: bool = False,
                 compile: bool = False, nn_precision: str = "exact"):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"SmoothedRetriever: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(gallery, Gallery):
            raise TypeError(f"SmoothedRetriever: gallery must be a Gallery, got {type(gallery).__name__}")
        # The noise kernels scale by float32(sigma); the certificates use that very value, so a
        # sigma not representable in float32 never makes a radius (slightly) too large.
        self.sigma = float(np.float32(_ops._check_positive_float("SmoothedRetriever", "sigma", sigma)))
        self.batch_size = _ops._check_int("SmoothedRetriever", "batch_size", batch_size, 1, 2**31 - 1)
        self.seed = _ops._check_int("SmoothedRetriever", "seed", seed, 0, 2**64 - 1)
        self.device = torch.device(device) if device is not None else gallery.device
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("SmoothedRetriever: device cuda requested but no GPU is available")
        self.model = model.to(self.device).eval()
        self.gallery = gallery.to(self.device)
        # Model-stage options. Each one runs a different, still deterministic base model (bf16
        # rounds inside the model; the others only change speed, up to float rounding); the
        # certificates hold for the model as run, and model_stage says which one that was.
        self.bf16, self.channels_last, self.compile = bool(bf16), bool(channels_last), bool(compile)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._forward = torch.compile(self.model) if self.compile else self.model
        if nn_precision not in ("exact",) + _ops.SCREEN_PRECISIONS:
            raise ValueError(f"SmoothedRetriever: nn_precision must be one of {('exact',) + _ops.SCREEN_PRECISIONS}, "
                             f"got {nn_precision!r}")
        self.nn_precision = nn_precision

    @property
    def model_stage(self) -> Dict[str, bool]:
        """The model-stage options in effect (recorded with every result)."""
        return {"bf16_autocast": self.bf16, "channels_last": self.channels_last, "torch_compile": self.compile}

    # ------------------------------------------------------------------ checks

    def _embed(self, batch: torch.Tensor, what: str) -> torch.Tensor:
        if self.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        try:
            if self.bf16:
                with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                    e = self._forward(batch)
            else:
                e = self._forward(batch)
        except RuntimeError as exc:  # shape mismatches inside the model
            raise ValueError(f"{what}: the model failed on inputs of shape {tuple(batch.shape)}: {exc}") from exc
        if not isinstance(e, torch.Tensor) or e.ndim != 2 or e.shape[0] != batch.shape[0]:
            shape = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
            raise ValueError(f"{what}: the model must return (batch, k) embeddings; got {shape} for a batch of {batch.shape[0]}")
        if e.shape[1] != self.gallery.dim:
            raise ValueError(f"{what}: the model returns embeddings of dimension {e.shape[1]} but the gallery has {self.gallery.dim}")
        return e.float()

    def _check_queries(self, x, labels, exclude, indices, n0, n, alpha, ks):
        op = "certify"
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        if x.ndim < 2:
            raise ValueError(f"{op}: queries must have shape (M, *input_shape), got {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{op}: queries must have a floating dtype, got {x.dtype}")
        x = x.detach().to(self.device, torch.float32).contiguous()
        if not torch.isfinite(x).all():
            raise ValueError(f"{op}: queries contain non-finite values")
        m = x.shape[0]
        n0 = _ops._check_int(op, "n0", n0, 1, 2**40)
        n = _ops._check_int(op, "n", n, 1, 2**40)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 < float(alpha) < 1.0:
            raise ValueError(f"{op}: alpha must be a number in (0, 1), got {alpha!r}")
        ks = tuple(sorted(set(_ops._check_int(op, "ks", k, 1, len(self.gallery)) for k in ks))) or (1,)

        def int_array(name, a, default, lo, hi):
            if a is None:
                return default
            arr = np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a)
            if arr.shape != (m,) or not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{op}: {name} must be {m} integers (one per query), got shape {arr.shape} of {arr.dtype}")
            if m and (arr.min() < lo or arr.max() > hi):
                raise ValueError(f"{op}: {name} must be in [{lo}, {hi}], got values in [{arr.min()}, {arr.max()}]")
            return arr.astype(np.int64)

        labels = int_array("labels", labels, None, 0, 2**62)
        exclude = int_array("exclude", exclude, np.full(m, -1, np.int64), -1, len(self.gallery) - 1)
        indices = int_array("indices", indices, np.arange(m, dtype=np.int64), 0, 2**32 - 1)
        return x, labels, exclude, indices, n0, n, float(alpha), ks

    # ------------------------------------------------------------------ certification

    def clean_predictions(self, x: torch.Tensor, exclude: np.ndarray) -> np.ndarray:
        """Labels of the gallery rows nearest to the clean (noise-free) embeddings."""
        out = np.empty(len(x), dtype=np.int64)
        buffer = torch.zeros((min(self.batch_size, len(x)),) + tuple(x.shape[1:]), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            for a in range(0, len(x), len(buffer)):
                rows = min(len(buffer), len(x) - a)
                buffer[:rows] = x[a : a + rows]  # one batch shape throughout (see _Run.results)
                e = self._embed(buffer, "certify (clean pass)")[:rows]
                e = torch.nn.functional.normalize(e, dim=1)
                ex = torch.as_tensor(exclude[a : a + rows], device=self.device)
                try:
                    idx, *_ = _ops.nn_search(e, self.gallery.embeddings, exclude=ex)
                except ValueError as exc:
                    raise ValueError(f"certify (clean pass): model output is unusable ({exc})") from exc
                out[a : a + len(e)] = self.gallery.labels_np[idx.cpu().numpy()]
        return out

    def iter_certify(self, queries: Any, labels: Any = None, *, exclude: Any = None, indices: Any = None,
                     n0: int = 100, n: int = 10_000, alpha: float = 0.001, ks: Sequence[int] = (1,),
                     radii: Optional[Sequence[float]] = None, sequential: bool = False, first_checkpoint: int = 1000,
                     on_batch: Optional[Callable[[int], None]] = None) -> Iterator[QueryCertificate]:
        """Certify queries, yielding each :class:`QueryCertificate` as it completes.

        ``queries``: (M, *input_shape). ``labels``: true labels (for Recall@K radii and the
        summary), optional. ``exclude``: a gallery index per query to leave out (-1 for none).
        ``indices``: each query's noise stream (default 0..M-1); give the dataset index so that a
        query's result does not depend on which other queries are certified with it.

        Fixed-n mode (default): every query draws ``n0`` selection and ``n`` certification
        samples. ``sequential=True`` (with ``radii``, the radii that matter) makes ``n`` a cap: a
        query stops at the first checkpoint of a doubling schedule (from ``first_checkpoint``)
        where each radius is certified or out of reach, for the vote and the soft model; every
        bound is then taken at level ``alpha / J`` over the ``J`` checkpoints (see
        :mod:`retrievalguard_fast.sequential`). Results are reported at the stopping checkpoint.

        Queries share batches: as one stops, the next starts, so batches stay full. Results are
        yielded as queries complete (not necessarily in input order); ``on_batch(samples)`` is
        called after each model batch (progress bars).
        """
        x, labels, exclude, indices, n0, n, alpha, ks = self._check_queries(
            queries, labels, exclude, indices, n0, n, alpha, ks)
        if sequential:
            if radii is None or len(radii) == 0:
                raise ValueError("certify: sequential=True needs radii (the radii at which to decide each query)")
            schedule = doubling_schedule(n, alpha, [float(r) for r in radii],
                                         first=_ops._check_int("certify", "first_checkpoint", first_checkpoint, 1, n))
        else:
            schedule = fixed_schedule(n, alpha)
        m = len(x)
        if m == 0:
            return
        clean = self.clean_predictions(x, exclude)  # also validates the model on these inputs
        run = _Run(self, x, labels, exclude, indices, clean, n0, schedule, ks)
        yield from run.results(on_batch)

    def certify(self, queries: Any, labels: Any = None, **kwargs) -> List[QueryCertificate]:
        """All queries' certificates as a list, in input order (see :meth:`iter_certify`)."""
        certs = list(self.iter_certify(queries, labels, **kwargs))
        order = {int(i): k for k, i in enumerate(kwargs.get("indices") if kwargs.get("indices") is not None
                                                 else range(len(certs)))}
        return sorted(certs, key=lambda c: order[c.index])


@dataclass
class _QueryState:
    counts_sel: Any  # (classes,) int64 on the device: votes of the n0 selection samples
    counts_cert: Any  # (classes,) int64: votes of the certification samples so far
    sums: Any  # (dim,) float64: sum of all normalised noisy embeddings so far
    planned: int = 0  # samples put into batches so far (selection first, then certification)
    done: int = 0  # samples whose votes are in
    checkpoint: int = 0  # index of the next checkpoint
    started: float = 0.0


class _Run:
    """One certify call: schedules noisy samples of many queries into full batches, and
    evaluates each query at its checkpoints."""

    def __init__(self, retriever: SmoothedRetriever, x, labels, exclude, indices, clean, n0: int,
                 schedule: Schedule, ks: Sequence[int]):
        self.r, self.x, self.labels, self.exclude, self.indices, self.clean = retriever, x, labels, exclude, indices, clean
        self.n0, self.schedule, self.ks = n0, schedule, ks
        self.dim, self.classes = retriever.gallery.dim, retriever.gallery.num_classes
        self.state: Dict[int, _QueryState] = {}

    def _boundary(self, q: int) -> int:
        """Sample index at which query q must pause: end of selection, or its next checkpoint."""
        st = self.state[q]
        return self.n0 if st.planned < self.n0 else self.n0 + self.schedule.checkpoints[st.checkpoint]

    def _activate(self, q: int) -> None:
        dev = self.r.device
        self.state[q] = _QueryState(torch.zeros(self.classes, dtype=torch.int64, device=dev),
                                    torch.zeros(self.classes, dtype=torch.int64, device=dev),
                                    torch.zeros(self.dim, dtype=torch.float64, device=dev),
                                    started=time.perf_counter())

    def _plan_batch(self, active: List[int], pending: deque) -> List[_Chunk]:
        batch: List[_Chunk] = []
        room, i = self.r.batch_size, 0
        while room > 0:
            if i == len(active):
                if not pending:
                    break
                q = pending.popleft()
                self._activate(q)
                active.append(q)
            q = active[i]
            st = self.state[q]
            boundary = self._boundary(q)
            if st.planned == boundary:  # waiting for its checkpoint to be evaluated
                i += 1
                continue
            take = min(room, boundary - st.planned)
            batch.append(_Chunk(q, st.planned, take, st.planned < self.n0))
            st.planned += take
            room -= take
        return batch

    def results(self, on_batch) -> Iterator[QueryCertificate]:
        r = self.r
        dev = r.device
        # The model always sees a full batch of batch_size rows (the tail of the last batch keeps
        # older, finite samples and is ignored): math libraries pick kernels by matrix shape, and a
        # row's output may change in its last bits with the batch's row count (seen on the CPU for
        # batches under ~64 rows; GPU libraries choose algorithms by shape too). With one shape,
        # a sample's embedding does not depend on how the queries were packed or resumed.
        buffer = torch.zeros((r.batch_size,) + tuple(self.x.shape[1:]), dtype=torch.float32, device=dev)
        check_each_batch = dev.type != "cuda"  # on CUDA: no per-batch synchronisation
        pending = deque(range(len(self.x)))
        active: List[int] = []
        while active or pending:
            batch = self._plan_batch(active, pending)
            rows = 0
            for c in batch:
                _ops.gaussian_noise(self.x[c.query], r.sigma, c.count, seed=r.seed, stream=int(self.indices[c.query]),
                                    start=c.start, out=buffer[rows : rows + c.count], check=False)
                rows += c.count
            with torch.inference_mode():
                emb = r._embed(buffer, "certify")[:rows]
            rows = 0
            for c in batch:
                part = emb[rows : rows + c.count]
                rows += c.count
                st = self.state[c.query]
                try:
                    cnt, s = _ops.nn_vote(part, r.gallery.embeddings, r.gallery.labels, self.classes,
                                          exclude=int(self.exclude[c.query]), check=check_each_batch,
                                          precision=r.nn_precision)
                except ValueError as exc:
                    raise ValueError(f"certify: query {int(self.indices[c.query])}: model output is unusable ({exc})") from exc
                (st.counts_sel if c.selection else st.counts_cert).add_(cnt)
                st.sums.add_(s)
                st.done += c.count
            if on_batch is not None:
                on_batch(rows)
            for q in list(active):
                st = self.state[q]
                if st.done == st.planned == self.n0 + self.schedule.checkpoints[st.checkpoint]:
                    cert = self._evaluate(q)
                    if cert is None:
                        st.checkpoint += 1
                    else:
                        active.remove(q)
                        del self.state[q]
                        yield cert

    def _evaluate(self, q: int) -> Optional[QueryCertificate]:
        """The certificates of query q at its current checkpoint, or None to keep sampling."""
        r, sch, st = self.r, self.schedule, self.state[q]
        n_cert = sch.checkpoints[st.checkpoint]
        final = st.checkpoint == len(sch.checkpoints) - 1
        sel = st.counts_sel.cpu().numpy()
        cert = st.counts_cert.cpu().numpy()
        index = int(self.indices[q])
        if int(sel.sum()) != self.n0 or int(cert.sum()) != n_cert:  # CUDA path: bad rows cast no vote
            raise ValueError(f"certify: query {index}: the model returned non-finite embeddings for "
                             f"{self.n0 + n_cert - int(sel.sum() + cert.sum())} noisy samples")
        g, ex, level = r.gallery, int(self.exclude[q]), sch.level
        # Vote model: Cohen's CERTIFY (selection by the n0 samples, bound on the fresh ones).
        selected = int(np.argmax(sel))  # ties: lowest label
        count = int(cert[selected])
        if not final and not vote_decided(count, n_cert, sch, r.sigma):  # cheap: checked first
            return None
        # Soft model: nearest label of the mean embedding, radii with the McDiarmid bound.
        samples = self.n0 + n_cert
        mean = st.sums.cpu().numpy() / float(samples)
        deviation = mean_embedding_deviation(samples, level, self.dim)
        label = None if self.labels is None else int(self.labels[q])
        with _single_threaded_host_blas():
            predicted = nearest_label(mean, g.embeddings64, g.sq_norms64, g.labels_np, ex)
            # Recall@K radii are for the true label: when it is the prediction, one call gives both.
            radii = soft_radii(mean, deviation, g.embeddings64, g.sq_norms64, g.labels_np, predicted, r.sigma, ex,
                               self.ks if label == predicted else (1,))
            if not final:
                # The most the soft radius could reach at the cap: the estimate's upper edge
                # (u.F_hat + t) with the cap's bound t_cap: deviation t_cap - t.
                t_cap = mean_embedding_deviation(self.n0 + sch.cap, level, self.dim)
                reach = soft_radii(mean, t_cap - deviation, g.embeddings64, g.sq_norms64, g.labels_np, predicted,
                                   r.sigma, ex, (1,))
                if not soft_decided(radii.gaussian, reach.gaussian, sch):
                    return None
            rk = None
            if label is not None:
                rk = radii if label == predicted else soft_radii(
                    mean, deviation, g.embeddings64, g.sq_norms64, g.labels_np, label, r.sigma, ex, self.ks)
        p_lower, r_vote = vote_radius(count, n_cert, level, r.sigma)
        certified = radii.gaussian > 0
        recall_at_k: Dict[int, Dict[str, Optional[float]]] = {}
        if rk is not None:
            recall_at_k = {k: {"gaussian": _finite_or_none(rk.gaussian_at_k[k]),
                               "lipschitz": _finite_or_none(rk.lipschitz_at_k[k])} for k in self.ks}
        return QueryCertificate(
            index=index,
            label=label,
            clean_prediction=int(self.clean[q]),
            vote_prediction=selected if r_vote is not None else ABSTAIN,
            vote_selected=selected,
            vote_count=count,
            vote_n=n_cert,
            vote_pA_lower=p_lower,
            vote_radius=r_vote,
            soft_prediction=predicted if certified else ABSTAIN,
            soft_gaussian_radius=_finite_or_none(radii.gaussian),
            soft_lipschitz_radius=_finite_or_none(radii.lipschitz),
            soft_deviation=deviation,
            soft_recall_at_k=recall_at_k,
            samples=samples,
            seconds=float(time.perf_counter() - st.started),
            mode=sch.mode,
        )


# ---------------------------------------------------------------------- dataset-level results


def certified_accuracy(predictions: np.ndarray, radii: Sequence[Optional[float]], labels: np.ndarray,
                       radius: float) -> float:
    """Fraction of queries predicted correctly with a certified radius >= ``radius``
    (abstentions, None radii, count as failures)."""
    r = np.array([-math.inf if v is None else v for v in radii], dtype=np.float64)
    ok = (np.asarray(predictions) == np.asarray(labels)) & (r >= radius)
    return float(ok.mean()) if len(ok) else float("nan")


def summarize(certs: Sequence[QueryCertificate], radii: Sequence[float], *, ks: Sequence[int] = (1,),
              seconds: Optional[float] = None) -> dict:
    """Certified Recall@1 at each radius for each certificate, clean Recall@1, abstention rates,
    average certified radii (0 for a wrong or abstained query), timing and throughput.

    ``seconds``: the wall time of the run; if None, the sum of the per-query times, which
    overlap when queries shared batches (so samples_per_second is then an underestimate)."""
    if any(c.label is None for c in certs):
        raise ValueError("summarize: every query needs its true label")
    labels = np.array([c.label for c in certs])
    m = len(certs)
    vote_pred = np.array([c.vote_prediction for c in certs])
    soft_pred = np.array([c.soft_prediction for c in certs])
    by_cert = {
        "vote": (vote_pred, [c.vote_radius for c in certs]),
        "gaussian": (soft_pred, [c.soft_gaussian_radius for c in certs]),
        "lipschitz": (soft_pred, [c.soft_lipschitz_radius for c in certs]),
    }

    def acr(pred, rs):
        r = np.array([0.0 if v is None else v for v in rs])
        return float(np.where(pred == labels, r, 0.0).mean()) if m else float("nan")

    samples = int(sum(c.samples for c in certs))
    seconds = float(sum(c.seconds for c in certs)) if seconds is None else float(seconds)
    out = {
        "num_queries": m,
        "clean_recall_at_1": float(np.mean([c.clean_prediction == c.label for c in certs])) if m else float("nan"),
        "certified_recall_at_1": {name: {str(r): certified_accuracy(p, rs, labels, r) for r in radii}
                                  for name, (p, rs) in by_cert.items()},
        "abstention_rate": {"vote": float(np.mean(vote_pred == ABSTAIN)) if m else float("nan"),
                            "soft": float(np.mean(soft_pred == ABSTAIN)) if m else float("nan")},
        "average_certified_radius": {name: acr(p, rs) for name, (p, rs) in by_cert.items()},
        "samples": samples,
        "seconds": seconds,
        "samples_per_second": samples / seconds if seconds > 0 else float("nan"),
    }
    recall_k = {}
    for k in ks:
        per = {}
        for name in ("gaussian", "lipschitz"):
            rs = [c.soft_recall_at_k.get(k, {}).get(name) for c in certs]
            r = np.array([-math.inf if v is None else v for v in rs])
            per[name] = {str(rad): float(np.mean(r >= rad)) if m else float("nan") for rad in radii}
        recall_k[str(k)] = per
    out["certified_recall_at_k"] = recall_k
    return out
