"""Counter-based noise: the raw Philox4x32-10 block (:func:`philox4x32`) and noisy copies of an
input from a counter-based normal stream (:func:`gaussian_noise`). Dispatch and argument rules:
:mod:`retrievalguard_fast.kernels`."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import arrays as arr
from .backend import backend_for

__all__ = ["philox4x32", "gaussian_noise"]

_UINT32_MAX = 2**32 - 1
_UINT64_MAX = 2**64 - 1


def philox4x32(counter: Any, key: Any) -> Any:
    """The raw Philox4x32-10 block (Salmon et al., SC 2011).

    ``counter``: 4 uint32 words, shape (4,) or (m, 4); ``key``: 2 uint32 words, shape (2,) or
    (m, 2) (a single key is used for every counter). Returns the 4 output words per counter:
    numpy uint32 for numpy/CPU input; for CUDA tensors, an int64 tensor on that device holding
    the uint32 values (computed by the CUDA kernel). Deterministic.
    """
    op = "philox4x32"
    counter = arr.as_array(op, "counter", counter)
    key = arr.as_array(op, "key", key)
    device = arr.check_same_device(op, {"counter": counter, "key": key})
    single = counter.ndim == 1
    if counter.ndim not in (1, 2) or counter.shape[-1] != 4:
        raise ValueError(f"{op}: counter must have shape (4,) or (m, 4), got {tuple(counter.shape)}")
    if key.ndim not in (1, 2) or key.shape[-1] != 2:
        raise ValueError(f"{op}: key must have shape (2,) or (m, 2), got {tuple(key.shape)}")
    words = {}
    for name, a in (("counter", counter), ("key", key)):
        if not arr.is_integer(a):
            raise TypeError(f"{op}: {name} must have an integer dtype, got {arr.dtype_name(a)}")
        if arr.is_tensor(a):
            a = a.to(arr.torch_module().int64)  # min/max are not implemented for uint32/uint64 tensors
        if a.size if isinstance(a, np.ndarray) else a.numel():
            lo, hi = int(a.min()), int(a.max())
            if lo < 0 or hi > _UINT32_MAX:
                raise ValueError(f"{op}: {name} words must be in [0, 2**32 - 1], got values in [{lo}, {hi}]")
        words[name] = a
    counters = words["counter"].reshape(-1, 4)
    keys = words["key"].reshape(-1, 2)
    m = counters.shape[0]
    if keys.shape[0] not in (1, m):
        raise ValueError(f"{op}: key must have one row or one row per counter ({m}), got {keys.shape[0]}")
    backend = backend_for(device, op, counter.device if device == "cuda" else None)
    if device == "cuda":
        out = backend.philox4x32(counters.contiguous(), keys.expand(m, 2).contiguous())
    else:
        as_u32 = lambda a: np.ascontiguousarray(a.numpy() if arr.is_tensor(a) else a, dtype=np.uint32)  # noqa: E731
        out = backend.philox4x32(as_u32(counters), np.ascontiguousarray(np.broadcast_to(as_u32(keys), (m, 2))))
    return out[0] if single else out


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
    ``stream`` under ``seed`` (Philox4x32-10 counters, Box-Muller; docs/design.md, section
    "Noise streams"). Deterministic: copy ``i`` is bit-identical whatever the batch split,
    thread count or device. The sum is formed in float32 (one fused multiply-add). Output
    float32; for CUDA tensors ``dtype`` may also be ``torch.float16`` or ``torch.bfloat16``
    (rounded once at the end).

    ``out``, if given, must be a contiguous array of exactly that shape and dtype on the same
    device as ``x`` (for example the model's input buffer); it is filled and returned.
    ``check=False`` skips the finiteness check of ``x`` (a synchronisation on CUDA) for callers
    that validated ``x`` already.
    """
    op = "gaussian_noise"
    x = arr.as_array(op, "x", x)
    sigma = arr.check_positive_float(op, "sigma", sigma)
    with np.errstate(over="ignore"):
        sigma32 = np.float32(sigma)
    if not np.isfinite(sigma32) or sigma32 < np.finfo(np.float32).tiny:
        raise ValueError(f"{op}: sigma must be representable in float32 (the kernels' precision), got {sigma}")
    n = arr.check_int(op, "n", n, 1, 2**62)
    seed = arr.check_int(op, "seed", seed, 0, _UINT64_MAX)
    stream = arr.check_int(op, "stream", stream, 0, _UINT32_MAX)
    start = arr.check_int(op, "start", start, 0, _UINT64_MAX)
    if start + n - 1 > _UINT64_MAX:
        raise ValueError(f"{op}: start + n - 1 must be below 2**64, got start={start}, n={n}")
    kind = arr.array_kind(x)
    device = arr.check_same_device(op, {"x": x, "out": out})
    x32 = arr.float32(op, "x", x)
    if check and not arr.all_finite(x32):
        raise ValueError(f"{op}: x contains non-finite values (NaN or inf); expected finite values")
    dim = x32.numel() if arr.is_tensor(x32) else x32.size
    if (dim + 3) // 4 > 2**32:
        raise ValueError(f"{op}: x has {dim} elements; at most 2**34 are supported per copy")
    shape = (n,) + tuple(x32.shape)

    torch = arr.torch_module()
    if device == "cuda":
        want = torch.float32 if dtype is None else dtype
        if want not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"{op}: dtype must be torch.float32, torch.float16 or torch.bfloat16 for CUDA tensors, got {dtype}")
    else:
        if dtype is not None and dtype not in (np.float32, "float32") and not (torch is not None and dtype == torch.float32):
            raise TypeError(f"{op}: dtype must be float32 on the CPU, got {dtype}")
        want = "float32"
    if out is None:
        out = arr.empty(x32, kind, shape, "float32") if want == "float32" else torch.empty(shape, dtype=want, device=x32.device)
    else:
        arr.check_out(op, "out", out, kind, shape, dtype=want)
        if arr.overlaps(out, x32):
            raise ValueError(f"{op}: out overlaps x (copy 0 would overwrite x before the other copies read it)")
    backend_for(device, op, getattr(x32, "device", None)).gaussian_noise(x32, sigma, n, seed, stream, start, out)
    return out
