"""Exact nearest-neighbour kernels: :func:`nn_search` (nearest and second-nearest rows) and
:func:`nn_vote` (the certifier's fused normalise + 1-NN + label vote + embedding sum pass).
Dispatch and argument rules: :mod:`retrievalguard_fast.kernels`."""

from __future__ import annotations

from typing import Any

from . import arrays as arr
from .backend import backend_for
from .problems import raise_input_problems
from .screen import NN_PRECISIONS, nn_vote_screened

__all__ = ["nn_search", "nn_vote"]


def nn_search(queries: Any, gallery: Any, *, exclude: Any = None, check: bool = True) -> tuple:
    """Nearest and second-nearest gallery rows of each query row, by squared l2 distance.

    Returns ``(index1, dist1, index2, dist2)``: int64 indices and float32 squared distances,
    one per query row (index -1 and distance inf where the gallery has no such row).
    ``exclude``: one gallery index per row (or -1), or a single index for all rows, that is
    skipped (leave-one-out).

    Distances are computed in float32 as ``|q|^2 + |g|^2 - 2 q.g`` (clamped at 0), exactly as
    faiss's flat index does. Candidates are ranked by keys computed the same way bit for bit on
    the CPU and on CUDA (fixed-order float32 dot products, float64 norms summed in index order),
    and exact ties go to the lower gallery index, so the result is deterministic and identical
    across tiling, threads and device. ``check=False`` (meaningful on CUDA, where reading the
    kernel's problem counters back synchronises) skips the check for non-finite input; the CPU
    always checks.
    """
    op = "nn_search"
    exclude = arr.exclude_arg(op, exclude)
    device, kind, q, g = arr.nn_inputs(op, "queries", queries, gallery, {"exclude": exclude})
    rows = int(q.shape[0])
    ex = arr.exclude_rows(op, exclude, rows, int(g.shape[0]), q)
    backend = backend_for(device, op, getattr(q, "device", None))
    index1, index2 = arr.empty(q, kind, (rows,), "int64"), arr.empty(q, kind, (rows,), "int64")
    dist1, dist2 = arr.empty(q, kind, (rows,), "float32"), arr.empty(q, kind, (rows,), "float32")
    problems = backend.new_problems(q)
    backend.nn_search(q, g, ex, False, index1, dist1, index2, dist2, problems)
    if check or backend.always_checks:
        raise_input_problems(op, backend.read_problems(problems), rows_name="queries", rows=q, gallery=g)
    return index1, dist1, index2, dist2


def nn_vote(
    embeddings: Any,
    gallery: Any,
    gallery_labels: Any,
    num_classes: int,
    *,
    exclude: Any = None,
    normalize: bool = True,
    check: bool = True,
    precision: str = "exact",
) -> tuple:
    """The certifier's fused pass over one batch of (noisy) embeddings.

    For each row of ``embeddings``: l2-normalise it (``normalize=True``; a zero row, or one of
    norm below 1e-30 whose inverse norm would overflow, stays zero),
    find its nearest gallery row (skipping ``exclude``), and vote for that row's label. Returns
    ``(counts, embedding_sum)``: int64 vote counts of length ``num_classes``, and the float64
    sum of the (normalised) rows, shape ``(dim,)``. With ``normalize=False`` every row must
    already have norm <= 1 (the certificates need it).

    Memory beyond the inputs is O(rows + gallery + classes): the distance matrix is never
    formed. Deterministic: the sum is accumulated in 2^-32 fixed point (exact and associative),
    so it is identical for any thread count, and the float64 sums of separate batches add up
    exactly while their total stays below 2^21 in magnitude; ties go to the lower gallery index.

    ``check``: raise on non-finite rows, bad labels or (with ``normalize=False``) rows outside
    the unit ball. The CPU always checks (it costs nothing there); on CUDA reading the kernel's
    problem counters back synchronises, so ``check=False`` skips it: offending rows then cast no
    vote, and ``counts.sum() < rows`` reveals them.

    ``precision``: ``"exact"`` (the default) runs the fused float32 kernel; ``"tf32"`` or
    ``"bf16"`` screens candidates with a tensor-core matmul first (:func:`nn_vote_screened`),
    with the same result bit for bit.
    """
    op = "nn_vote"
    if precision != "exact":
        if precision not in NN_PRECISIONS:
            raise ValueError(f"{op}: precision must be one of {NN_PRECISIONS}, got {precision!r}")
        result = nn_vote_screened(embeddings, gallery, gallery_labels, num_classes, precision=precision,
                                  exclude=exclude, normalize=normalize, check=check)
        return result.counts, result.embedding_sum
    device, kind, e, g, labels, num_classes, ex, normalize = arr.vote_args(
        op, embeddings, gallery, gallery_labels, num_classes, exclude, normalize)
    backend = backend_for(device, op, getattr(e, "device", None))
    counts = arr.empty(e, kind, (num_classes,), "int64")
    embedding_sum = arr.empty(e, kind, (int(e.shape[1]),), "float64")
    problems = backend.new_problems(e)
    backend.nn_vote(e, g, labels, num_classes, ex, normalize, counts, embedding_sum, problems)
    if check or backend.always_checks:
        raise_input_problems(op, backend.read_problems(problems), rows_name="embeddings", rows=e, gallery=g,
                             labels=labels, num_classes=num_classes)
    return counts, embedding_sum
