"""The sampler: noisy copies of many queries packed into full model batches, embedded, searched
and voted, and each query's evidence handed to the certify step at its checkpoints.

Copy ``i`` of a query is sample ``i`` of noise stream ``index`` (the query's dataset index)
under the seed, so a query's evidence does not depend on which other queries share its batches,
on the batch size (see :class:`~.retriever.SmoothedRetriever`) or on how a run was resumed.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch

from .. import kernels
from .certify import Evidence
from .record import QueryCertificate
from .sequential import Schedule


@dataclass
class _Chunk:
    query: int  # position in the current call
    start: int  # first sample index (within the query's noise stream)
    count: int
    selection: bool  # part of the n0 selection samples


@dataclass
class _QueryState:
    counts_sel: Any  # (classes,) int64 on the device: votes of the n0 selection samples
    counts_cert: Any  # (classes,) int64: votes of the certification samples so far
    sums: Any  # (dim,) float64: sum of all normalised noisy embeddings so far
    planned: int = 0  # samples put into batches so far (selection first, then certification)
    done: int = 0  # samples whose votes are in
    checkpoint: int = 0  # index of the next checkpoint
    started: float = 0.0


class Sampler:
    """Draws ``n0`` selection samples, then certification samples up to each checkpoint of
    ``schedule``, for every query, in batches of exactly ``retriever.batch_size`` rows."""

    def __init__(self, retriever, x: torch.Tensor, labels: Optional[np.ndarray], exclude: np.ndarray,
                 indices: np.ndarray, clean: np.ndarray, n0: int, schedule: Schedule):
        self.r, self.x, self.labels, self.exclude, self.indices, self.clean = retriever, x, labels, exclude, indices, clean
        self.n0, self.schedule = n0, schedule
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

    def _evidence(self, q: int) -> Evidence:
        st, sch = self.state[q], self.schedule
        n = sch.checkpoints[st.checkpoint]
        selection, votes = st.counts_sel.cpu().numpy(), st.counts_cert.cpu().numpy()
        index = int(self.indices[q])
        if int(selection.sum()) != self.n0 or int(votes.sum()) != n:  # CUDA path: bad rows cast no vote
            raise ValueError(f"certify: query {index}: the model returned non-finite embeddings for "
                             f"{self.n0 + n - int(selection.sum() + votes.sum())} noisy samples")
        return Evidence(index=index, label=None if self.labels is None else int(self.labels[q]),
                        exclude=int(self.exclude[q]), clean_prediction=int(self.clean[q]), selection_votes=selection,
                        votes=votes, n0=self.n0, n=n, embedding_sum=st.sums.cpu().numpy(),
                        final=st.checkpoint == len(sch.checkpoints) - 1)

    def run(self, certify: Callable[[Evidence], Optional[QueryCertificate]],
            on_batch: Optional[Callable[[int], None]] = None) -> Iterator[QueryCertificate]:
        """Sample until ``certify`` returns a certificate for every query (it must at the final
        checkpoint), yielding them as they complete; ``on_batch(rows)`` after each model batch."""
        r = self.r
        # The model always sees a full batch of batch_size rows (the tail of the last batch keeps
        # older, finite samples and is ignored): math libraries pick kernels by matrix shape, and a
        # row's output may change in its last bits with the batch's row count (seen on the CPU for
        # batches under ~64 rows; GPU libraries choose algorithms by shape too). With one shape,
        # a sample's embedding does not depend on how the queries were packed or resumed.
        buffer = torch.zeros((r.batch_size,) + tuple(self.x.shape[1:]), dtype=torch.float32, device=r.device)
        check_each_batch = r.device.type != "cuda"  # on CUDA: no per-batch synchronisation
        pending = deque(range(len(self.x)))
        active: List[int] = []
        while active or pending:
            batch = self._plan_batch(active, pending)
            rows = 0
            for c in batch:
                kernels.gaussian_noise(self.x[c.query], r.sigma, c.count, seed=r.seed, stream=int(self.indices[c.query]),
                                       start=c.start, out=buffer[rows : rows + c.count], check=False)
                rows += c.count
            with torch.inference_mode():
                emb = r.embed(buffer, "certify")[:rows]
            rows = 0
            for c in batch:
                part = emb[rows : rows + c.count]
                rows += c.count
                st = self.state[c.query]
                try:
                    cnt, s = kernels.nn_vote(part, r.gallery.embeddings, r.gallery.labels, self.classes,
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
                    cert = certify(self._evidence(q))
                    if cert is None:
                        st.checkpoint += 1
                    else:
                        cert.seconds = float(time.perf_counter() - st.started)
                        active.remove(q)
                        del self.state[q]
                        yield cert


def smoothed_evidence(retriever, x: torch.Tensor, *, seed: int, stream: int, start: int, count: int, exclude: int,
                      what: str):
    """The smoothed model's evidence at one point ``x``: the 1-NN votes (int64, per class) and the
    float64 sum of the normalised embeddings of samples ``start .. start + count - 1`` of noise
    stream ``stream`` under ``seed``, in batches of at most ``batch_size`` rows (the attack's
    re-estimates; :meth:`Sampler.run` packs many queries into full batches instead)."""
    g = retriever.gallery
    votes = torch.zeros(g.num_classes, dtype=torch.int64, device=retriever.device)
    sums = torch.zeros(g.dim, dtype=torch.float64, device=retriever.device)
    bs = retriever.batch_size
    with torch.inference_mode():
        for a in range(0, count, bs):
            rows = min(bs, count - a)
            noisy = kernels.gaussian_noise(x, retriever.sigma, rows, seed=seed, stream=stream, start=start + a)
            cnt, s = kernels.nn_vote(retriever.embed(noisy, what), g.embeddings, g.labels, g.num_classes,
                                     exclude=exclude, precision=retriever.nn_precision)
            votes.add_(cnt)
            sums.add_(s)
    return votes.cpu().numpy(), sums.cpu().numpy()
