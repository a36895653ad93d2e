"""The array adapter of the kernel ops: numpy arrays, CPU tensors and CUDA tensors alike.

Every public op accepts numpy arrays and torch tensors. Here they are told apart ("numpy",
"torch" for a CPU tensor, "cuda"), checked (dtype, rank, length, device) and converted to the
C-contiguous float32 / int64 arrays the kernels read, with errors that name the op and the
argument. Nothing here knows which backend runs the op (see ``_backend``).
"""

from __future__ import annotations

import math
import numbers
import sys
from typing import Any, Optional, Tuple

import numpy as np

# Fixed-point embedding sums hold 2^31 rows of norm <= 1 (csrc/common/nn_math.h).
MAX_VOTE_ROWS = 2**31 - 1


def torch_module():
    """torch if it was imported (only then can an argument be a tensor), else None."""
    return sys.modules.get("torch")


def is_tensor(a: Any) -> bool:
    torch = torch_module()
    return torch is not None and isinstance(a, torch.Tensor)


def is_cuda(a: Any) -> bool:
    return is_tensor(a) and a.device.type == "cuda"


def array_kind(a: Any) -> str:
    """'numpy', 'torch' (a CPU tensor) or 'cuda'."""
    if is_tensor(a):
        if a.device.type == "cuda":
            return "cuda"
        if a.device.type != "cpu":
            raise ValueError(f"tensors on device {a.device} are not supported (expected cpu or cuda)")
        return "torch"
    return "numpy"


def check_same_device(op: str, named: dict) -> str:
    """The device kind of a call: 'cpu' or 'cuda'. Refuses CUDA tensors mixed with anything else."""
    devices = {}
    for name, a in named.items():
        if a is None:
            continue
        devices[name] = a.device if is_cuda(a) else "cpu"
    distinct = set(str(d) for d in devices.values())
    if len(distinct) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: all arrays must be on one device, got {desc}")
    return "cuda" if distinct and distinct.pop().startswith("cuda") else "cpu"


def dtype_name(a: Any) -> str:
    return str(a.dtype)


def is_floating(a: Any) -> bool:
    if is_tensor(a):
        return a.dtype.is_floating_point
    return np.issubdtype(a.dtype, np.floating)


def is_integer(a: Any) -> bool:
    if is_tensor(a):
        torch = torch_module()
        return not a.dtype.is_floating_point and not a.dtype.is_complex and a.dtype != torch.bool
    return np.issubdtype(a.dtype, np.integer)


def as_array(op: str, name: str, a: Any) -> Any:
    """numpy arrays and tensors pass; other array-likes (lists) become numpy arrays."""
    if is_tensor(a):
        if a.layout != torch_module().strided:
            raise TypeError(f"{op}: {name} must be a dense (strided) tensor, got layout {a.layout}")
        return a
    if isinstance(a, np.ndarray):
        return a
    try:
        arr = np.asarray(a)
    except Exception as exc:  # noqa: BLE001 - report what was wrong with the argument
        raise TypeError(f"{op}: {name} must be a numpy array or torch tensor, got {type(a).__name__}") from exc
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"{op}: {name} must be a numeric numpy array or torch tensor, got {type(a).__name__} of dtype {arr.dtype}")
    return arr


def float32(op: str, name: str, a: Any, ndim: Optional[int] = None) -> Any:
    """A C-contiguous float32 version of a floating array (numpy, CPU tensor or CUDA tensor)."""
    a = as_array(op, name, a)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(a.shape)}")
    if not is_floating(a):
        raise TypeError(f"{op}: {name} must have a floating dtype (float16/32/64, bfloat16), got {dtype_name(a)}")
    if is_tensor(a):
        torch = torch_module()
        return a.detach().to(torch.float32).contiguous()
    return np.ascontiguousarray(a, dtype=np.float32)


def int64(op: str, name: str, a: Any, ndim: int = 1) -> Any:
    a = as_array(op, name, a)
    if a.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(a.shape)}")
    if not is_integer(a):
        raise TypeError(f"{op}: {name} must have an integer dtype, got {dtype_name(a)}")
    if is_tensor(a):
        torch = torch_module()
        if a.dtype == torch.uint64 and a.numel() and bool((a > 2**63 - 1).any()):  # would wrap to negative
            raise ValueError(f"{op}: {name} has values above 2**63 - 1")
        return a.detach().to(torch.int64).contiguous()
    if a.dtype.kind == "u" and a.size and int(a.max()) > 2**63 - 1:
        raise ValueError(f"{op}: {name} has values above 2**63 - 1")
    return np.ascontiguousarray(a, dtype=np.int64)


def numpy_view(a: Any) -> np.ndarray:
    """The numpy view of a CPU array (no copy)."""
    return a.numpy() if is_tensor(a) else a


def all_finite(a: Any) -> bool:
    if is_tensor(a):
        return bool(torch_module().isfinite(a).all().item())
    return bool(np.isfinite(a).all())


def check_int(op: str, name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{op}: {name} must be in [{lo}, {hi}], got {value}")
    return value


def check_positive_float(op: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{op}: {name} must be a finite number > 0, got {value}")
    return value


def empty(like: Any, kind: str, shape: Tuple[int, ...], dtype: str) -> Any:
    """A new array of numpy dtype name `dtype` of the same kind and device as `like`."""
    if kind == "numpy":
        return np.empty(shape, dtype=dtype)
    torch = torch_module()
    return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)


def overlaps(a: Any, b: Any) -> bool:
    """Whether two arrays (numpy or tensors of one kind) may share memory."""
    if is_tensor(a) and is_tensor(b):
        if a.device != b.device or a.numel() == 0 or b.numel() == 0:
            return False
        a0, a1 = a.data_ptr(), a.data_ptr() + a.numel() * a.element_size()
        b0, b1 = b.data_ptr(), b.data_ptr() + b.numel() * b.element_size()
        return a0 < b1 and b0 < a1
    return bool(np.may_share_memory(numpy_view(a), numpy_view(b)))


def check_out(op: str, name: str, out: Any, kind: str, shape: Tuple[int, ...], dtype: Any) -> None:
    """Refuse (never convert) an output array that does not fit exactly."""
    if kind == "numpy":
        if not isinstance(out, np.ndarray):
            raise TypeError(f"{op}: {name} must be a numpy array like x, got {type(out).__name__}")
        ok_dtype = out.dtype == np.float32
        contiguous = out.flags.c_contiguous and out.flags.writeable
    else:
        if not is_tensor(out):
            raise TypeError(f"{op}: {name} must be a torch tensor like x, got {type(out).__name__}")
        torch = torch_module()
        want = torch.float32 if isinstance(dtype, str) else dtype
        ok_dtype = out.dtype == want
        contiguous = out.is_contiguous()
        if out.requires_grad:
            raise TypeError(f"{op}: {name} must not require grad (the kernels write into it directly)")
    if tuple(out.shape) != shape:
        raise ValueError(f"{op}: {name} must have shape {shape}, got {tuple(out.shape)}")
    if not ok_dtype:
        raise TypeError(f"{op}: {name} must have dtype {dtype}, got {out.dtype}")
    if not contiguous:
        raise ValueError(f"{op}: {name} must be C-contiguous and writeable (results are never written to a copy)")



def exclude_arg(op: str, exclude: Any) -> Any:
    """None, a Python integer, or an array (lists become numpy arrays)."""
    if exclude is None or (isinstance(exclude, numbers.Integral) and not isinstance(exclude, bool)):
        return exclude
    return as_array(op, "exclude", exclude)


def array_or_none(a: Any) -> Any:
    return a if (is_tensor(a) or isinstance(a, np.ndarray)) else None


def exclude_rows(op: str, exclude: Any, rows: int, gallery_rows: int, like: Any) -> Any:
    """exclude as an int64 array of length rows (or None), with every value in [-1, gallery_rows)."""
    if exclude is None:
        return None
    if isinstance(exclude, numbers.Integral) and not isinstance(exclude, bool):
        value = check_int(op, "exclude", exclude, -1, gallery_rows - 1)
        if is_cuda(like):
            return torch_module().full((rows,), value, dtype=torch_module().int64, device=like.device)
        return np.full(rows, value, dtype=np.int64)
    ex = int64(op, "exclude", exclude)
    if ex.shape[0] != rows:
        raise ValueError(f"{op}: exclude must have one entry per row ({rows}), got {ex.shape[0]}")
    if rows:
        lo, hi = int(ex.min()), int(ex.max())
        if lo < -1 or hi >= gallery_rows:
            raise ValueError(
                f"{op}: exclude values must be gallery indices in [0, {gallery_rows}) or -1 for none, got values in [{lo}, {hi}]"
            )
    return ex


def nn_inputs(op: str, rows_name: str, rows_arg: Any, gallery: Any, extra: dict) -> tuple:
    """(device kind, array kind, rows, gallery) of a nearest-neighbour op: float32 2-D arrays of one width."""
    rows_arg = as_array(op, rows_name, rows_arg)
    gallery = as_array(op, "gallery", gallery)
    extra = {k: array_or_none(v) for k, v in extra.items()}
    device = check_same_device(op, {rows_name: rows_arg, "gallery": gallery, **extra})
    kind = array_kind(rows_arg)
    q = float32(op, rows_name, rows_arg, ndim=2)
    g = float32(op, "gallery", gallery, ndim=2)
    if g.shape[0] == 0:
        raise ValueError(f"{op}: gallery is empty; expected at least one row")
    if g.shape[1] == 0:
        raise ValueError(f"{op}: gallery rows have dimension 0; expected at least 1")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"{op}: {rows_name} have dimension {q.shape[1]} but gallery rows have {g.shape[1]}")
    return device, kind, q, g




def vote_args(op: str, embeddings: Any, gallery: Any, gallery_labels: Any, num_classes: Any, exclude: Any,
              normalize: Any) -> tuple:
    """The checked arguments of nn_vote and nn_vote_screened:
    (device kind, array kind, embeddings, gallery, labels, num_classes, exclude rows, normalize)."""
    labels_arg = as_array(op, "gallery_labels", gallery_labels)
    exclude = exclude_arg(op, exclude)
    device, kind, e, g = nn_inputs(op, "embeddings", embeddings, gallery, {"gallery_labels": labels_arg, "exclude": exclude})
    num_classes = check_int(op, "num_classes", num_classes, 1, 2**62)
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"{op}: normalize must be a bool, got {type(normalize).__name__}")
    rows, gallery_rows = int(e.shape[0]), int(g.shape[0])
    if rows > MAX_VOTE_ROWS:
        raise ValueError(f"{op}: embeddings has {rows} rows; at most 2**31 - 1 per call (split the batch)")
    labels = int64(op, "gallery_labels", labels_arg)
    if labels.shape[0] != gallery_rows:
        raise ValueError(f"{op}: gallery_labels must have one label per gallery row ({gallery_rows}), got {labels.shape[0]}")
    ex = exclude_rows(op, exclude, rows, gallery_rows, e)
    if gallery_rows == 1 and ex is not None and rows and int((ex == 0).sum()) > 0:
        raise ValueError(f"{op}: exclude removes the only gallery row, leaving nothing to vote for")
    return device, kind, e, g, labels, num_classes, ex, bool(normalize)
