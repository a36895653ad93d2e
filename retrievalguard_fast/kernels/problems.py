"""Input problems counted by the kernels, reported with one message on every backend.

The kernels of both backends count bad input into named slots (csrc/common/nn_problem.h):
rows or gallery rows with non-finite values or values too large for float32, gallery labels
outside [0, num_classes), rows of norm above 1 with ``normalize=False``. The counts say *that*
something is wrong; this module finds *where* (only on that error path) and raises the same
``ValueError`` whatever device ran the kernel.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Optional

import numpy as np

from .backend import _core

#: Rows whose squared norm exceeds this are refused (the float32 distance expansion overflows).
MAX_ROW_NORM2 = float(_core.max_row_norm2)
#: With normalize=False rows may exceed norm 1 by float32 rounding, up to this squared norm.
MAX_UNNORMALIZED_NORM2 = float(_core.max_unnormalized_norm2)


def _host64(a: Any) -> np.ndarray:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(a, torch.Tensor):
        return a.detach().cpu().to(torch.float64).numpy()
    return np.asarray(a, dtype=np.float64)


def _first(mask: np.ndarray) -> Optional[int]:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


def _first_row_above(a: Any, limit: float):
    """(index, squared norm) of the first row whose squared norm is not <= limit (NaN included)."""
    with np.errstate(over="ignore", invalid="ignore"):
        norm2 = (_host64(a) ** 2).sum(axis=1)
    i = _first(~(norm2 <= limit))
    return (None, None) if i is None else (i, float(norm2[i]))


def raise_input_problems(op: str, problems: Dict[str, int], *, rows_name: str, rows: Any, gallery: Any,
                         labels: Any = None, num_classes: Optional[int] = None, row_offset: int = 0) -> None:
    """Raise ``ValueError`` naming the first offending input when any problem slot is non-zero.
    ``row_offset``: the global index of ``rows[0]`` (for ops that run in chunks)."""
    if not any(problems.values()):
        return
    if problems["bad_labels"]:
        lab = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels)
        i = _first((lab < 0) | (lab >= num_classes))
        where = f"gallery_labels[{i}] = {int(lab[i])} is" if i is not None else f"{problems['bad_labels']} gallery_labels are"
        raise ValueError(f"{op}: {where} outside [0, num_classes={num_classes})")
    if problems["bad_gallery_rows"]:
        i, _ = _first_row_above(gallery, MAX_ROW_NORM2)
        where = f"gallery row {i} has" if i is not None else f"gallery has {problems['bad_gallery_rows']} row(s) with"
        raise ValueError(f"{op}: {where} non-finite values (or values too large for float32); expected finite embeddings")
    if problems["bad_rows"]:
        i, _ = _first_row_above(rows, MAX_ROW_NORM2)
        where = (f"{rows_name} row {i + row_offset} has" if i is not None
                 else f"{rows_name} has {problems['bad_rows']} row(s) with")
        raise ValueError(f"{op}: {where} non-finite values (or values too large for float32); expected finite values")
    if problems["rows_outside_unit_ball"]:
        i, norm2 = _first_row_above(rows, MAX_UNNORMALIZED_NORM2)
        where = (f"{rows_name} row {i + row_offset} has l2 norm {norm2 ** 0.5:.6g}" if i is not None
                 else f"{problems['rows_outside_unit_ball']} {rows_name} row(s) have l2 norm")
        raise ValueError(f"{op}: {where} > 1; with normalize=False rows must have norm <= 1 "
                         "(pass normalize=True to normalise them)")
    raise ValueError(f"{op}: the kernel reported input problems it has no message for: {problems}")
