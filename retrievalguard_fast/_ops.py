"""The kernels' Python entry points: argument checks, conversion and backend dispatch.

Every function accepts numpy arrays and torch tensors. numpy arrays and CPU tensors run the C++
kernels (``_core``); CUDA tensors run the CUDA kernels (``_cuda``) on
``torch.cuda.current_stream()`` and the results stay on that device. Results come back in the
kind of the main argument (numpy in, numpy out; tensor in, tensor out).

Inputs of another floating dtype are converted to float32 and non-contiguous inputs are copied;
inputs that cannot be used (integer values, wrong rank or length, mixed devices, non-finite
values) raise ``TypeError`` or ``ValueError`` naming the argument. ``out`` arrays are never
converted: one that does not fit exactly is refused, so no result is written to a copy.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import sys
import warnings
from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from . import _backend
from ._backend import _core

__all__ = ["philox4x32", "gaussian_noise", "nn_search", "nn_vote", "nn_vote_screened", "screen_rel_error", "ScreenedVote"]

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1
_MAX_VOTE_ROWS = 2**31 - 1  # fixed-point embedding sums (see csrc/common/nn_math.h)


# ----------------------------------------------------------------------------- helpers


def _torch():
    return sys.modules.get("torch")


def _is_tensor(a: Any) -> bool:
    torch = _torch()
    return torch is not None and isinstance(a, torch.Tensor)


def _is_cuda(a: Any) -> bool:
    return _is_tensor(a) and a.device.type == "cuda"


def _kind(a: Any) -> str:
    """'numpy', 'torch' (a CPU tensor) or 'cuda'."""
    if _is_tensor(a):
        if a.device.type == "cuda":
            return "cuda"
        if a.device.type != "cpu":
            raise ValueError(f"tensors on device {a.device} are not supported (expected cpu or cuda)")
        return "torch"
    return "numpy"


def _check_same_device(op: str, named: dict) -> str:
    """The backend of a call: 'cpu' or 'cuda'. Refuses CUDA tensors mixed with anything else."""
    devices = {}
    for name, a in named.items():
        if a is None:
            continue
        devices[name] = a.device if _is_cuda(a) else "cpu"
    distinct = set(str(d) for d in devices.values())
    if len(distinct) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"{op}: all arrays must be on one device, got {desc}")
    return "cuda" if distinct and distinct.pop().startswith("cuda") else "cpu"


def _dtype_name(a: Any) -> str:
    return str(a.dtype)


def _is_floating(a: Any) -> bool:
    if _is_tensor(a):
        return a.dtype.is_floating_point
    return np.issubdtype(a.dtype, np.floating)


def _is_integer(a: Any) -> bool:
    if _is_tensor(a):
        torch = _torch()
        return not a.dtype.is_floating_point and not a.dtype.is_complex and a.dtype != torch.bool
    return np.issubdtype(a.dtype, np.integer)


def _as_array(op: str, name: str, a: Any) -> Any:
    """numpy arrays and tensors pass; other array-likes (lists) become numpy arrays."""
    if _is_tensor(a):
        if a.layout != _torch().strided:
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


def _float32(op: str, name: str, a: Any, ndim: Optional[int] = None) -> Any:
    """A C-contiguous float32 version of a floating array (numpy, CPU tensor or CUDA tensor)."""
    a = _as_array(op, name, a)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(a.shape)}")
    if not _is_floating(a):
        raise TypeError(f"{op}: {name} must have a floating dtype (float16/32/64, bfloat16), got {_dtype_name(a)}")
    if _is_tensor(a):
        torch = _torch()
        return a.detach().to(torch.float32).contiguous()
    return np.ascontiguousarray(a, dtype=np.float32)


def _int64(op: str, name: str, a: Any, ndim: int = 1) -> Any:
    a = _as_array(op, name, a)
    if a.ndim != ndim:
        raise ValueError(f"{op}: {name} must be {ndim}-D, got shape {tuple(a.shape)}")
    if not _is_integer(a):
        raise TypeError(f"{op}: {name} must have an integer dtype, got {_dtype_name(a)}")
    if _is_tensor(a):
        torch = _torch()
        if a.dtype == torch.uint64 and a.numel() and bool((a > 2**63 - 1).any()):  # would wrap to negative
            raise ValueError(f"{op}: {name} has values above 2**63 - 1")
        return a.detach().to(torch.int64).contiguous()
    if a.dtype.kind == "u" and a.size and int(a.max()) > 2**63 - 1:
        raise ValueError(f"{op}: {name} has values above 2**63 - 1")
    return np.ascontiguousarray(a, dtype=np.int64)


def _numpy_view(a: Any) -> np.ndarray:
    """The numpy view of a CPU array (no copy)."""
    return a.numpy() if _is_tensor(a) else a


def _all_finite(a: Any) -> bool:
    if _is_tensor(a):
        return bool(_torch().isfinite(a).all().item())
    return bool(np.isfinite(a).all())


def _check_int(op: str, name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{op}: {name} must be an integer, got {type(value).__name__}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{op}: {name} must be in [{lo}, {hi}], got {value}")
    return value


def _check_positive_float(op: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: {name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{op}: {name} must be a finite number > 0, got {value}")
    return value


def _empty(like: Any, kind: str, shape: Tuple[int, ...], dtype: str) -> Any:
    """A new array of numpy dtype name `dtype` of the same kind and device as `like`."""
    if kind == "numpy":
        return np.empty(shape, dtype=dtype)
    torch = _torch()
    return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)


def _cuda_stream(t: Any) -> int:
    return _torch().cuda.current_stream(t.device).cuda_stream


def _device_index(t: Any) -> int:
    return t.device.index if t.device.index is not None else _torch().cuda.current_device()


# ----------------------------------------------------------------------------- philox4x32


def philox4x32(counter: Any, key: Any) -> Any:
    """The raw Philox4x32-10 block (Salmon et al., SC 2011).

    ``counter``: 4 uint32 words, shape (4,) or (m, 4); ``key``: 2 uint32 words, shape (2,) or
    (m, 2) (a single key is used for every counter). Returns the 4 output words per counter:
    numpy uint32 for numpy/CPU input; for CUDA tensors, an int64 tensor on that device holding
    the uint32 values (computed by the CUDA kernel). Deterministic.
    """
    op = "philox4x32"
    counter = _as_array(op, "counter", counter)
    key = _as_array(op, "key", key)
    backend = _check_same_device(op, {"counter": counter, "key": key})
    single = counter.ndim == 1
    if counter.ndim not in (1, 2) or counter.shape[-1] != 4:
        raise ValueError(f"{op}: counter must have shape (4,) or (m, 4), got {tuple(counter.shape)}")
    if key.ndim not in (1, 2) or key.shape[-1] != 2:
        raise ValueError(f"{op}: key must have shape (2,) or (m, 2), got {tuple(key.shape)}")
    for name, a in (("counter", counter), ("key", key)):
        if not _is_integer(a):
            raise TypeError(f"{op}: {name} must have an integer dtype, got {_dtype_name(a)}")
        if a.numel() if _is_tensor(a) else a.size:
            if _is_tensor(a) and a.dtype in (_torch().uint16, _torch().uint32, _torch().uint64):
                a = a.to(_torch().int64)  # min/max are not implemented for these; uint64 > 2**63 wraps negative
            lo, hi = (int(a.min()), int(a.max()))
            if lo < 0 or hi > _UINT32_MAX:
                raise ValueError(f"{op}: {name} words must be in [0, 2**32 - 1], got values in [{lo}, {hi}]")
    if _is_tensor(counter) and counter.dtype in (_torch().uint16, _torch().uint32, _torch().uint64):
        counter = counter.to(_torch().int64)
    if _is_tensor(key) and key.dtype in (_torch().uint16, _torch().uint32, _torch().uint64):
        key = key.to(_torch().int64)
    counters = counter.reshape(-1, 4)
    m = counters.shape[0]
    keys = key.reshape(-1, 2)
    if keys.shape[0] not in (1, m):
        raise ValueError(f"{op}: key must have one row or one row per counter ({m}), got {keys.shape[0]}")

    if backend == "cuda":
        torch = _torch()
        cuda = _backend._require_cuda_module(op, counter.device)
        def as_int32_bits(t):  # uint32 values -> int32 with the same bits (explicit wrap-around)
            t = t.to(torch.int64)
            return torch.where(t >= 2**31, t - 2**32, t).to(torch.int32).contiguous()

        c32 = as_int32_bits(counters)
        k32 = as_int32_bits(keys.expand(m, 2))
        out = torch.empty((m, 4), dtype=torch.int32, device=counter.device)
        cuda.philox4x32(_device_index(out), _cuda_stream(out), c32.data_ptr(), k32.data_ptr(), m, out.data_ptr())
        result = out.to(torch.int64) & _UINT32_MAX
        return result[0] if single else result

    c_np = np.ascontiguousarray(_numpy_view(counters.cpu() if _is_tensor(counters) else counters), dtype=np.uint32)
    k_np = _numpy_view(keys.cpu() if _is_tensor(keys) else keys).astype(np.uint32)
    k_np = np.ascontiguousarray(np.broadcast_to(k_np, (m, 2)))
    out = np.empty((m, 4), dtype=np.uint32)
    _core.philox4x32(c_np, k_np, out)
    return out[0] if single else out


# ----------------------------------------------------------------------------- gaussian_noise


def gaussian_noise(
    x: Any,
    sigma: float,
    n: int,
    *,
    seed: int = 0,
    stream: int = 0,
    start: int = 0,
    out: Any = None,
    dtype: Any = None,
    check: bool = True,
) -> Any:
    """``n`` noisy copies of ``x``: ``out[i] = x + sigma * z_i``, shape ``(n, *x.shape)``.

    ``z_i`` is the package's standard-normal stream at sample index ``start + i`` of stream
    ``stream`` under ``seed`` (Philox4x32-10 counters, Box-Muller; see DESIGN.md section 4).
    Deterministic: copy ``i`` is bit-identical whatever the batch split, thread count or device.
    The sum is formed in float32 (one fused multiply-add). Output float32; for CUDA tensors
    ``dtype`` may also be ``torch.float16`` or ``torch.bfloat16`` (rounded once at the end).

    ``out``, if given, must be a contiguous array of exactly that shape and dtype on the same
    device as ``x`` (for example the model's input buffer); it is filled and returned.
    ``check=False`` skips the finiteness check of ``x`` (a synchronisation on CUDA) for callers
    that validated ``x`` already.
    """
    op = "gaussian_noise"
    x = _as_array(op, "x", x)
    sigma = _check_positive_float(op, "sigma", sigma)
    with np.errstate(over="ignore"):
        sigma32 = np.float32(sigma)
    if not np.isfinite(sigma32) or sigma32 < np.finfo(np.float32).tiny:
        raise ValueError(f"{op}: sigma must be representable in float32 (the kernels' precision), got {sigma}")
    n = _check_int(op, "n", n, 1, 2**62)
    seed = _check_int(op, "seed", seed, 0, _UINT64_MAX)
    stream = _check_int(op, "stream", stream, 0, _UINT32_MAX)
    start = _check_int(op, "start", start, 0, _UINT64_MAX)
    if start + n - 1 > _UINT64_MAX:
        raise ValueError(f"{op}: start + n - 1 must be below 2**64, got start={start}, n={n}")
    kind = _kind(x)
    backend = _check_same_device(op, {"x": x, "out": out})
    x32 = _float32(op, "x", x)
    if check and not _all_finite(x32):
        raise ValueError(f"{op}: x contains non-finite values (NaN or inf); expected finite values")
    dim = x32.numel() if _is_tensor(x32) else x32.size
    if (dim + 3) // 4 > 2**32:
        raise ValueError(f"{op}: x has {dim} elements; at most 2**34 are supported per copy")
    shape = (n,) + tuple(x32.shape)

    out_code = 0
    if backend == "cuda":
        torch = _torch()
        codes = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
        want = torch.float32 if dtype is None else dtype
        if want not in codes:
            raise TypeError(f"{op}: dtype must be torch.float32, torch.float16 or torch.bfloat16 for CUDA tensors, got {dtype}")
        out_code = codes[want]
    elif dtype is not None and dtype not in (np.float32, "float32") and not (
        _torch() is not None and dtype == _torch().float32
    ):
        raise TypeError(f"{op}: dtype must be float32 on the CPU, got {dtype}")

    if out is None:
        if backend == "cuda":
            out = _torch().empty(shape, dtype=want, device=x32.device)
        else:
            out = _empty(x32, kind, shape, "float32")
    else:
        _check_out(op, "out", out, kind, shape, dtype=(want if backend == "cuda" else "float32"))
        if _overlaps(out, x32):
            raise ValueError(f"{op}: out overlaps x (copy 0 would overwrite x before the other copies read it)")

    if backend == "cuda":
        cuda = _backend._require_cuda_module(op, x32.device)
        cuda.gaussian_noise(_device_index(x32), _cuda_stream(x32), x32.data_ptr(), dim, sigma, n, seed, stream,
                            start, out.data_ptr(), out_code)
    else:
        _core.gaussian_noise(_numpy_view(x32).reshape(-1), sigma, n, seed, stream, start,
                             _numpy_view(out).reshape(-1))
    return out


def _overlaps(a: Any, b: Any) -> bool:
    """Whether two arrays (numpy or tensors of one kind) may share memory."""
    if _is_tensor(a) and _is_tensor(b):
        if a.device != b.device or a.numel() == 0 or b.numel() == 0:
            return False
        a0, a1 = a.data_ptr(), a.data_ptr() + a.numel() * a.element_size()
        b0, b1 = b.data_ptr(), b.data_ptr() + b.numel() * b.element_size()
        return a0 < b1 and b0 < a1
    return bool(np.may_share_memory(_numpy_view(a), _numpy_view(b)))


def _check_out(op: str, name: str, out: Any, kind: str, shape: Tuple[int, ...], dtype: Any) -> None:
    """Refuse (never convert) an output array that does not fit exactly."""
    if kind == "numpy":
        if not isinstance(out, np.ndarray):
            raise TypeError(f"{op}: {name} must be a numpy array like x, got {type(out).__name__}")
        ok_dtype = out.dtype == np.float32
        contiguous = out.flags.c_contiguous and out.flags.writeable
    else:
        if not _is_tensor(out):
            raise TypeError(f"{op}: {name} must be a torch tensor like x, got {type(out).__name__}")
        torch = _torch()
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


# ----------------------------------------------------------------------------- nearest neighbours


def _exclude_arg(op: str, exclude: Any) -> Any:
    """None, a Python integer, or an array (lists become numpy arrays)."""
    if exclude is None or (isinstance(exclude, numbers.Integral) and not isinstance(exclude, bool)):
        return exclude
    return _as_array(op, "exclude", exclude)


def _array_or_none(a: Any) -> Any:
    return a if (_is_tensor(a) or isinstance(a, np.ndarray)) else None


def _exclude(op: str, exclude: Any, rows: int, gallery_rows: int, like: Any, backend: str) -> Any:
    """exclude as an int64 array of length rows (or None), with every value in [-1, gallery_rows)."""
    if exclude is None:
        return None
    if isinstance(exclude, numbers.Integral) and not isinstance(exclude, bool):
        value = _check_int(op, "exclude", exclude, -1, gallery_rows - 1)
        if backend == "cuda":
            return _torch().full((rows,), value, dtype=_torch().int64, device=like.device)
        return np.full(rows, value, dtype=np.int64)
    ex = _int64(op, "exclude", exclude)
    if ex.shape[0] != rows:
        raise ValueError(f"{op}: exclude must have one entry per row ({rows}), got {ex.shape[0]}")
    if rows:
        lo, hi = int(ex.min()), int(ex.max())
        if lo < -1 or hi >= gallery_rows:
            raise ValueError(
                f"{op}: exclude values must be gallery indices in [0, {gallery_rows}) or -1 for none, got values in [{lo}, {hi}]"
            )
    return ex


def _nn_inputs(op: str, rows_name: str, rows_arg: Any, gallery: Any, extra: dict) -> tuple:
    rows_arg = _as_array(op, rows_name, rows_arg)
    gallery = _as_array(op, "gallery", gallery)
    extra = {k: _array_or_none(v) for k, v in extra.items()}
    backend = _check_same_device(op, {rows_name: rows_arg, "gallery": gallery, **extra})
    kind = _kind(rows_arg)
    q = _float32(op, rows_name, rows_arg, ndim=2)
    g = _float32(op, "gallery", gallery, ndim=2)
    if g.shape[0] == 0:
        raise ValueError(f"{op}: gallery is empty; expected at least one row")
    if g.shape[1] == 0:
        raise ValueError(f"{op}: gallery rows have dimension 0; expected at least 1")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"{op}: {rows_name} have dimension {q.shape[1]} but gallery rows have {g.shape[1]}")
    return backend, kind, q, g


def _raise_cuda_problems(op: str, rows_name: str, problems: Any) -> None:
    bad_rows, bad_gallery, bad_labels, outside = (int(v) for v in problems.tolist())
    if bad_gallery:
        raise ValueError(f"{op}: gallery has {bad_gallery} row(s) with non-finite values (or values too large for float32)")
    if bad_rows:
        raise ValueError(f"{op}: {rows_name} has {bad_rows} row(s) with non-finite values (or values too large for float32)")
    if bad_labels:
        raise ValueError(f"{op}: {bad_labels} gallery_labels are outside [0, num_classes)")
    if outside:
        raise ValueError(
            f"{op}: {outside} {rows_name} row(s) have l2 norm > 1; with normalize=False rows must have norm <= 1 "
            "(pass normalize=True to normalise them)"
        )


def nn_search(queries: Any, gallery: Any, *, exclude: Any = None, check: bool = True) -> tuple:
    """Nearest and second-nearest gallery rows of each query row, by squared l2 distance.

    Returns ``(index1, dist1, index2, dist2)``: int64 indices and float32 squared distances,
    one per query row (index -1 and distance inf where the gallery has no such row).
    ``exclude``: one gallery index per row (or -1), or a single index for all rows, that is
    skipped (leave-one-out).

    Distances are computed in float32 as ``|q|^2 + |g|^2 - 2 q.g`` (clamped at 0), exactly as
    faiss's flat index does. Exact ties go to the lower gallery index, so the result is
    deterministic and independent of tiling, threads and device; near-ties (within float32
    rounding) may resolve differently on CPU and GPU. ``check`` (CUDA only): read the kernel's
    problem counters back (one synchronisation) and raise on non-finite input.
    """
    op = "nn_search"
    exclude = _exclude_arg(op, exclude)
    backend, kind, q, g = _nn_inputs(op, "queries", queries, gallery, {"exclude": exclude})
    rows, dim = int(q.shape[0]), int(q.shape[1])
    ex = _exclude(op, exclude, rows, int(g.shape[0]), q, backend)
    index1 = _empty(q, kind, (rows,), "int64")
    index2 = _empty(q, kind, (rows,), "int64")
    dist1 = _empty(q, kind, (rows,), "float32")
    dist2 = _empty(q, kind, (rows,), "float32")
    if backend == "cuda":
        torch = _torch()
        cuda = _backend._require_cuda_module(op, q.device)
        problems = torch.zeros(int(cuda.num_problem_slots), dtype=torch.int64, device=q.device)
        cuda.nn_search(_device_index(q), _cuda_stream(q), q.data_ptr(), rows, g.data_ptr(), int(g.shape[0]), dim,
                       ex.data_ptr() if ex is not None else 0, index1.data_ptr(), dist1.data_ptr(),
                       index2.data_ptr(), dist2.data_ptr(), problems.data_ptr())
        if check:
            _raise_cuda_problems(op, "queries", problems)
    else:
        ex_np = _numpy_view(ex) if ex is not None else np.empty(0, dtype=np.int64)
        _core.nn_search(_numpy_view(q).reshape(-1), _numpy_view(g).reshape(-1), dim, ex_np,
                        _numpy_view(index1), _numpy_view(dist1), _numpy_view(index2), _numpy_view(dist2))
    return index1, dist1, index2, dist2


def _vote_args(op: str, embeddings: Any, gallery: Any, gallery_labels: Any, num_classes: Any, exclude: Any,
               normalize: Any) -> tuple:
    """The checked arguments of nn_vote / nn_vote_screened."""
    labels_arg = _as_array(op, "gallery_labels", gallery_labels)
    exclude = _exclude_arg(op, exclude)
    backend, kind, e, g = _nn_inputs(
        op, "embeddings", embeddings, gallery, {"gallery_labels": labels_arg, "exclude": exclude}
    )
    num_classes = _check_int(op, "num_classes", num_classes, 1, 2**62)
    if not isinstance(normalize, (bool, np.bool_)):
        raise TypeError(f"{op}: normalize must be a bool, got {type(normalize).__name__}")
    rows, gallery_rows = int(e.shape[0]), int(g.shape[0])
    if rows > _MAX_VOTE_ROWS:
        raise ValueError(f"{op}: embeddings has {rows} rows; at most 2**31 - 1 per call (split the batch)")
    labels = _int64(op, "gallery_labels", labels_arg)
    if labels.shape[0] != gallery_rows:
        raise ValueError(f"{op}: gallery_labels must have one label per gallery row ({gallery_rows}), got {labels.shape[0]}")
    ex = _exclude(op, exclude, rows, gallery_rows, e, backend)
    if gallery_rows == 1 and ex is not None and rows and int((ex == 0).sum()) > 0:
        raise ValueError(f"{op}: exclude removes the only gallery row, leaving nothing to vote for")
    return backend, kind, e, g, labels, num_classes, ex, bool(normalize)


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

    ``check`` (CUDA only): read the kernel's problem counters back (one synchronisation) and
    raise on non-finite rows or bad labels. With ``check=False`` nothing synchronises; offending
    rows then cast no vote, so ``counts.sum() < rows`` reveals them.

    ``precision``: ``"exact"`` (the default) runs the fused float32 kernel; ``"tf32"`` or
    ``"bf16"`` screens candidates with a tensor-core matmul first (:func:`nn_vote_screened`),
    with the same result bit for bit.
    """
    op = "nn_vote"
    if precision != "exact":
        result = nn_vote_screened(embeddings, gallery, gallery_labels, num_classes, precision=precision,
                                  exclude=exclude, normalize=normalize, check=check)
        return result.counts, result.embedding_sum
    backend, kind, e, g, labels, num_classes, ex, normalize = _vote_args(
        op, embeddings, gallery, gallery_labels, num_classes, exclude, normalize)
    rows, dim, gallery_rows = int(e.shape[0]), int(e.shape[1]), int(g.shape[0])

    counts = _empty(e, kind, (num_classes,), "int64")
    embedding_sum = _empty(e, kind, (dim,), "float64")
    if backend == "cuda":
        torch = _torch()
        cuda = _backend._require_cuda_module(op, e.device)
        problems = torch.zeros(int(cuda.num_problem_slots), dtype=torch.int64, device=e.device)
        cuda.nn_vote(_device_index(e), _cuda_stream(e), e.data_ptr(), rows, g.data_ptr(), gallery_rows, dim,
                     labels.data_ptr(), num_classes, ex.data_ptr() if ex is not None else 0, normalize,
                     counts.data_ptr(), embedding_sum.data_ptr(), problems.data_ptr())
        if check:
            _raise_cuda_problems(op, "embeddings", problems)
    else:
        ex_np = _numpy_view(ex) if ex is not None else np.empty(0, dtype=np.int64)
        _core.nn_vote(_numpy_view(e).reshape(-1), _numpy_view(g).reshape(-1), dim, _numpy_view(labels), num_classes,
                      ex_np, normalize, _numpy_view(counts), _numpy_view(embedding_sum))
    return counts, embedding_sum


# ----------------------------------------------------------------------------- screened search

SCREEN_PRECISIONS = ("tf32", "bf16")
MAX_SCREEN_CANDIDATES = int(getattr(_core, "max_screen_candidates", 16))


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


def _round_to_tf32(x: Any) -> Any:
    """float32 values rounded to the nearest TF32 value (10 explicit mantissa bits, ties to even).

    Done by us, in integer arithmetic on the bit patterns, so the tensor cores' own conversion
    (round or truncate) leaves the values unchanged and the error bound does not depend on it.
    Inputs are finite and far below the overflow threshold (norms are checked).
    """
    torch = _torch()
    bits = x.view(torch.int32)
    rounded = (bits + (0x0FFF + ((bits >> 13) & 1))) & -0x2000
    return rounded.view(torch.float32)


@contextlib.contextmanager
def _screen_matmul_flags(device: Any, precision: str):
    """TF32 allowed for the TF32 screen; bf16 reductions kept in float32 (the bound assumes it).

    torch has a legacy (``set_float32_matmul_precision``) and a newer (``backends.cuda.matmul.
    fp32_precision``) way to allow TF32 and refuses to read a mix of the two, so the flag is set
    and restored through whichever one the caller's process uses.
    """
    torch = _torch()
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    try:
        old_precision, legacy = torch.get_float32_matmul_precision(), True
    except RuntimeError:  # the process set the new per-backend flag
        old_precision, legacy = matmul.fp32_precision, False
    old_reduction = matmul.allow_bf16_reduced_precision_reduction

    def set_precision(value):
        if legacy:
            torch.set_float32_matmul_precision(value)
        else:
            matmul.fp32_precision = value

    try:
        if precision == "tf32":
            set_precision("high" if legacy else "tf32")
        matmul.allow_bf16_reduced_precision_reduction = False
        yield
    finally:
        set_precision(old_precision)
        matmul.allow_bf16_reduced_precision_reduction = old_reduction


def _screen_operand(x: Any, precision: str) -> Any:
    return _round_to_tf32(x) if precision == "tf32" else x.to(_torch().bfloat16)


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
    candidates = _check_int(op, "candidates", candidates, 1, MAX_SCREEN_CANDIDATES)
    backend, kind, e, g, labels, num_classes, ex, normalize = _vote_args(
        op, embeddings, gallery, gallery_labels, num_classes, exclude, normalize)
    if chunk_bytes is not None:
        chunk_bytes = _check_int(op, "chunk_bytes", chunk_bytes, 1, 2**62)
    import torch  # the screening matmul is torch's

    rows, dim, gallery_rows = int(e.shape[0]), int(e.shape[1]), int(g.shape[0])
    rel_error = screen_rel_error(precision, dim)
    with warnings.catch_warnings():  # read-only numpy inputs: only read here
        warnings.simplefilter("ignore", UserWarning)
        et, gt = (torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in (e, g))
    score_dtype = torch.float32 if precision == "tf32" else torch.bfloat16
    if chunk_bytes is None:
        chunk_bytes = 2**30 if backend == "cuda" else 2**26
    chunk = max(1, min(rows, chunk_bytes // (gallery_rows * score_dtype.itemsize)))

    counts = torch.zeros(num_classes, dtype=torch.int64, device=et.device)
    embedding_sum = torch.zeros(dim, dtype=torch.float64, device=et.device)
    nearest = torch.empty(rows, dtype=torch.int64, device=et.device)
    chunk_counts = torch.empty_like(counts)
    chunk_sum = torch.empty_like(embedding_sum)
    undecided = 0
    if backend == "cuda":
        cuda = _backend._require_cuda_module(op, et.device)
        problems = torch.zeros(int(cuda.num_problem_slots), dtype=torch.int64, device=et.device)
        chunk_problems = torch.empty_like(problems)
    labels_np = None if backend == "cuda" else _numpy_view(labels)
    ex_np = None if backend == "cuda" or ex is None else _numpy_view(ex)
    g_flat = None if backend == "cuda" else _numpy_view(g).reshape(-1)

    with _screen_matmul_flags(et.device, precision):
        g_screen = _screen_operand(gt, precision)
        for r0 in range(0, rows, chunk):
            r1 = min(rows, r0 + chunk)
            q = et[r0:r1]
            with torch.autocast(et.device.type, enabled=False):  # a caller's autocast must not change the dtype
                scores = torch.mm(_screen_operand(q, precision), g_screen.T).contiguous()
            if scores.dtype != score_dtype or scores.shape != (r1 - r0, gallery_rows):
                raise RuntimeError(f"{op}: the screening matmul returned {scores.dtype} {tuple(scores.shape)}, expected "
                                   f"{score_dtype} {(r1 - r0, gallery_rows)}")
            if backend == "cuda":
                undecided += int(cuda.nn_vote_screened(
                    _device_index(q), _cuda_stream(q), q.data_ptr(), r1 - r0, gt.data_ptr(), gallery_rows, dim,
                    labels.data_ptr(), num_classes, ex[r0:r1].data_ptr() if ex is not None else 0, normalize,
                    scores.data_ptr(), precision == "bf16", candidates, rel_error, chunk_counts.data_ptr(),
                    chunk_sum.data_ptr(), nearest[r0:r1].data_ptr(), chunk_problems.data_ptr()))
                # Row slots add up over chunks; the gallery and label slots repeat in every chunk.
                problems[0::3] += chunk_problems[0::3]
                problems[1:3] = torch.maximum(problems[1:3], chunk_problems[1:3])
            else:
                scores_np = scores.numpy() if precision == "tf32" else scores.view(torch.int16).numpy().view(np.uint16)
                try:
                    undecided += int(_core.nn_vote_screened(
                        q.numpy().reshape(-1), g_flat, dim, labels_np, num_classes,
                        ex_np[r0:r1] if ex_np is not None else np.empty(0, dtype=np.int64), normalize, scores_np,
                        candidates, rel_error, chunk_counts.numpy(), chunk_sum.numpy(), nearest[r0:r1].numpy()))
                except ValueError as exc:  # the kernel numbers rows within the chunk
                    raise ValueError(f"{op}: in the chunk of embeddings rows [{r0}, {r1}): {exc}") from None
            counts += chunk_counts
            embedding_sum += chunk_sum  # exact: fixed-point multiples of 2^-32 (see nn_vote)
    if backend == "cuda" and check:
        _raise_cuda_problems(op, "embeddings", problems)
    if kind == "numpy":
        return ScreenedVote(counts.numpy(), embedding_sum.numpy(), nearest.numpy(), undecided)
    return ScreenedVote(counts, embedding_sum, nearest, undecided)
