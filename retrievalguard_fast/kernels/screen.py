"""The screened nearest-neighbour vote: a tensor-core matmul picks candidates, exact arithmetic
decides, and a rigorous error bound proves the decision (docs/certification.md section 6).

For each chunk of rows, torch multiplies the rows by the gallery in low precision (TF32 or
bf16; on a GPU both run on tensor cores). The kernel (``csrc/common/nn_screen.h``, one body for
CPU and CUDA) keeps the best candidates per row by these scores, rescores them with the exact
mode's float32 arithmetic and votes for the winner only when :func:`screen_rel_error` proves no
other gallery row can beat it. The rows it cannot decide are searched again here, by the exact
kernel, so every row's nearest index is exactly the exact mode's.

The error model :func:`screen_rel_error` lives here, beside the matmul whose error it bounds;
its proof is docs/certification.md section 6.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, NamedTuple, Optional

import numpy as np

from . import arrays as arr
from .backend import _core, backend_for
from .problems import raise_input_problems

__all__ = ["nn_vote_screened", "screen_rel_error", "ScreenedVote", "SCREEN_PRECISIONS", "NN_PRECISIONS",
           "MAX_SCREEN_CANDIDATES"]

SCREEN_PRECISIONS = ("tf32", "bf16")
#: Every nearest-neighbour precision: the exact kernel, or a screen verified exactly (same results).
NN_PRECISIONS = ("exact",) + SCREEN_PRECISIONS
MAX_SCREEN_CANDIDATES = int(_core.max_screen_candidates)


class ScreenedVote(NamedTuple):
    """Result of :func:`nn_vote_screened`."""

    counts: Any          #: int64 votes per class, as nn_vote
    embedding_sum: Any   #: float64 sum of the normalised rows, as nn_vote
    nearest: Any         #: int64 nearest gallery index per row (-1 where none)
    undecided_rows: int  #: rows the screen could not decide; the exact kernel searched them


def screen_rel_error(precision: str, dim: int) -> float:
    """Bound on the screening matmul's error: ``|score - q.g| <= screen_rel_error * |q| |g|``.

    docs/certification.md section 6 derives it. Products of TF32 or bf16 inputs are exact in
    float32; the terms are: rounding of each input (TF32: to nearest by us, 2^-11; bf16: to
    nearest by torch, 2^-8), float32 accumulation of ``dim`` products in any order with rounding
    or truncation (``(dim + 1) 2^-23``), and for bf16 the output rounding (2^-7, which also covers
    truncation). Every term uses ``sum_i |q_i g_i| <= |q| |g|``.
    """
    if precision not in SCREEN_PRECISIONS:
        raise ValueError(f"precision must be one of {SCREEN_PRECISIONS}, got {precision!r}")
    u_in = 2.0**-11 if precision == "tf32" else 2.0**-8
    input_rounding = 2.0 * u_in + u_in * u_in
    accumulation = (dim + 1) * 2.0**-23 * (1.0 + u_in) ** 2
    if precision == "tf32":
        # torch's "high" float32 precision may run the bf16x3 algorithm instead of TF32: it drops
        # the low x low product (< 2^-16 of each term) and adds three products per term.
        bf16x3 = 2.0**-14 + 2.0 * (dim + 1) * 2.0**-23
        return input_rounding + accumulation + bf16x3
    output_rounding = 2.0**-7 * (1.0 + u_in) ** 2 * (1.0 + (dim + 1) * 2.0**-23)
    return input_rounding + accumulation + output_rounding


def round_to_tf32(x: Any) -> Any:
    """float32 values rounded to the nearest TF32 value (10 explicit mantissa bits, ties to even).

    Done by us, in integer arithmetic on the bit patterns, so the tensor cores' own conversion
    (round or truncate) leaves the values unchanged and the error bound does not depend on it.
    Inputs are finite and far below the overflow threshold (norms are checked).
    """
    torch = arr.torch_module()
    bits = x.view(torch.int32)
    rounded = (bits + (0x0FFF + ((bits >> 13) & 1))) & -0x2000
    return rounded.view(torch.float32)


def screen_operand(x: Any, precision: str) -> Any:
    """A matmul operand of the screen: TF32-rounded float32, or bfloat16."""
    return round_to_tf32(x) if precision == "tf32" else x.to(arr.torch_module().bfloat16)


@contextlib.contextmanager
def screen_matmul_precision(device: Any, precision: str):
    """Pin torch's matmul precision to what :func:`screen_rel_error` assumes, whatever the caller set.

    CUDA: TF32 allowed for the TF32 screen, bf16 reductions kept in float32. CPU: full float32
    (a caller's ``set_float32_matmul_precision("medium")`` would let oneDNN compute float32
    matmuls in bf16, far beyond the TF32 bound). torch has a legacy
    (``set_float32_matmul_precision``) and a newer (``backends.*.matmul.fp32_precision``) way to
    set these and refuses to read a mix of the two, so the flags are set and restored through
    whichever one the caller's process uses.
    """
    torch = arr.torch_module()
    try:
        old_legacy, legacy = torch.get_float32_matmul_precision(), True
    except RuntimeError:  # the process set the new per-backend flags
        old_legacy, legacy = None, False
    if device.type == "cuda":
        flags = torch.backends.cuda.matmul
        wanted = ("high" if precision == "tf32" else "highest") if legacy else ("tf32" if precision == "tf32" else "ieee")
    else:  # the per-backend oneDNN flag exists from torch 2.9 on; before that, only the legacy one
        flags = getattr(torch.backends.mkldnn, "matmul", None)
        wanted = "highest" if legacy else "ieee"
    old = (old_legacy if legacy else flags.fp32_precision, torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction)

    def apply(precision_setting, bf16_reduction: bool) -> None:
        if legacy:
            torch.set_float32_matmul_precision(precision_setting)
        else:
            flags.fp32_precision = precision_setting
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = bf16_reduction

    apply(wanted, False)
    try:
        yield
    finally:
        apply(*old)


def nn_vote_screened(
    embeddings: Any,
    gallery: Any,
    gallery_labels: Any,
    num_classes: int,
    *,
    precision: str = "tf32",
    candidates: int = 8,
    exclude: Any = None,
    normalize: bool = True,
    check: bool = True,
    chunk_bytes: Optional[int] = None,
) -> ScreenedVote:
    """:func:`nn_vote` with a tensor-core screen: the same counts and sum, bit for bit, and faster on GPUs.

    Rows are processed in chunks. For each chunk, torch multiplies the rows by the gallery in
    low precision (``precision="tf32"``: inputs rounded to TF32, float32 output;
    ``"bf16"``: bfloat16 inputs and output; on a GPU both run on tensor cores), which costs
    ``chunk_bytes`` of scratch (default 1 GiB on CUDA, 64 MiB on the CPU). The kernel then keeps
    the ``candidates`` best gallery rows per row by these scores, rescores them with the exact
    mode's float32 arithmetic, and accepts the best one only when the screening error bound
    (:func:`screen_rel_error`, docs/certification.md section 6) proves that no other gallery row
    can beat it. The rows it cannot decide (near ties within the screening error) are searched
    again by the exact kernel. So the nearest index of every row is exactly what the exact mode
    returns; ``undecided_rows`` says how many rows needed the exact search.

    Returns a :class:`ScreenedVote`. Other arguments as in :func:`nn_vote`. Needs torch (numpy
    inputs are wrapped without copying; results come back as numpy).
    """
    op = "nn_vote_screened"
    if precision not in SCREEN_PRECISIONS:
        raise ValueError(f"{op}: precision must be one of {SCREEN_PRECISIONS} (or 'exact' for nn_vote), got {precision!r}")
    candidates = arr.check_int(op, "candidates", candidates, 1, MAX_SCREEN_CANDIDATES)
    device, kind, e, g, labels, num_classes, ex, normalize = arr.vote_args(
        op, embeddings, gallery, gallery_labels, num_classes, exclude, normalize)
    if chunk_bytes is not None:
        chunk_bytes = arr.check_int(op, "chunk_bytes", chunk_bytes, 1, 2**62)
    import torch  # the screening matmul is torch's

    rows, dim, gallery_rows = int(e.shape[0]), int(e.shape[1]), int(g.shape[0])
    rel_error = screen_rel_error(precision, dim)
    with warnings.catch_warnings():  # read-only numpy inputs: only read here
        warnings.simplefilter("ignore", UserWarning)
        et, gt, lt, ext = (torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in (e, g, labels, ex))
    backend = backend_for(device, op, et.device)
    score_dtype = torch.float32 if precision == "tf32" else torch.bfloat16
    if chunk_bytes is None:
        chunk_bytes = 2**30 if device == "cuda" else 2**26
    chunk = max(1, min(rows, chunk_bytes // (gallery_rows * score_dtype.itemsize)))

    counts = torch.zeros(num_classes, dtype=torch.int64, device=et.device)
    embedding_sum = torch.zeros(dim, dtype=torch.float64, device=et.device)
    nearest = torch.empty(rows, dtype=torch.int64, device=et.device)
    chunk_counts, chunk_sum = torch.empty_like(counts), torch.empty_like(embedding_sum)
    problems = backend.new_problems(et)
    undecided = 0
    with screen_matmul_precision(et.device, precision):
        g_screen = screen_operand(gt, precision)
        for r0 in range(0, rows, chunk):
            r1 = min(rows, r0 + chunk)
            q, q_ex, q_nearest = et[r0:r1], None if ext is None else ext[r0:r1], nearest[r0:r1]
            with torch.autocast(et.device.type, enabled=False):  # a caller's autocast must not change the dtype
                scores = torch.mm(screen_operand(q, precision), g_screen.T).contiguous()
            if scores.dtype != score_dtype or scores.shape != (r1 - r0, gallery_rows):
                raise RuntimeError(f"{op}: the screening matmul returned {scores.dtype} {tuple(scores.shape)}, expected "
                                   f"{score_dtype} {(r1 - r0, gallery_rows)}")
            backend.nn_screen(q, gt, lt, num_classes, q_ex, normalize, scores, candidates, rel_error, chunk_counts,
                              chunk_sum, q_nearest, problems)
            if check or backend.always_checks:
                raise_input_problems(op, backend.read_problems(problems), rows_name="embeddings", rows=q, gallery=gt,
                                     labels=lt, num_classes=num_classes, row_offset=r0)
            # Rows the screen left undecided (nearest -1): the exact search, normalised as the
            # screen normalised them, ranks by the same keys as the exact nn_vote.
            left = (q_nearest < 0).nonzero().flatten()
            if len(left):
                found = _exact_nearest(backend, q[left], gt, None if q_ex is None else q_ex[left], normalize)
                q_nearest[left] = found
                # Only bad input (possible with check=False on CUDA) leaves a row without a nearest
                # gallery row or a label outside [0, num_classes): such rows cast no vote, as in nn_vote.
                found = found[found >= 0]
                undecided += len(found)
                label = lt[found]
                chunk_counts += torch.bincount(label[(label >= 0) & (label < num_classes)], minlength=num_classes)
            counts += chunk_counts
            embedding_sum += chunk_sum  # exact: fixed-point multiples of 2^-32 (see nn_vote)
    if kind == "numpy":
        return ScreenedVote(counts.numpy(), embedding_sum.numpy(), nearest.numpy(), undecided)
    return ScreenedVote(counts, embedding_sum, nearest, undecided)


def _exact_nearest(backend, rows: Any, gallery: Any, exclude: Any, normalize: bool) -> Any:
    """The exact kernel's nearest gallery index of each row (-1 where none)."""
    torch = arr.torch_module()
    n = len(rows)
    index1, index2 = (torch.empty(n, dtype=torch.int64, device=rows.device) for _ in range(2))
    dist1, dist2 = (torch.empty(n, dtype=torch.float32, device=rows.device) for _ in range(2))
    backend.nn_search(rows.contiguous(), gallery, exclude, normalize, index1, dist1, index2, dist2,
                      backend.new_problems(rows))  # the screen counted these rows' problems already
    return index1
