"""The comparisons of the emulated CUDA path with the CPU backend, bit for bit: the package's ops
on numpy arrays (the CPU kernels, ``_core``) against the same ops on CPU tensors routed through
``CudaBackend`` to an emulated ``_cuda`` (emulated.cuda_path). Shared by the tests and by the
sanitizer runs (sanitized_run.py), which call them in a subprocess."""

from __future__ import annotations

import numpy as np
import torch

import retrievalguard_fast as rgf
from emulated import cuda_path
from retrievalguard_fast.kernels import backend


def same_bits(cuda_result, cpu_result, what: str) -> None:
    a = cuda_result.detach().numpy() if isinstance(cuda_result, torch.Tensor) else np.asarray(cuda_result)
    b = np.asarray(cpu_result)
    assert a.shape == b.shape, f"{what}: shape {a.shape} (emulated CUDA) vs {b.shape} (CPU)"
    assert a.dtype.itemsize == b.dtype.itemsize, f"{what}: dtype {a.dtype} vs {b.dtype}"
    ua, ub = a.view(f"u{a.dtype.itemsize}"), b.view(f"u{b.dtype.itemsize}")
    bad = np.flatnonzero(ua.ravel() != ub.ravel())
    assert bad.size == 0, (f"{what}: {bad.size} of {ua.size} values differ from the CPU backend; first at flat "
                           f"index {bad[0]}: {a.ravel()[bad[0]]!r} vs {b.ravel()[bad[0]]!r}")


def tensors(*arrays):
    return [None if a is None else torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]


# ---------------------------------------------------------------------------- noise

def philox(emu, counters, keys) -> None:
    cpu = rgf.philox4x32(np.asarray(counters, np.uint32), np.asarray(keys, np.uint32))
    with cuda_path(emu):
        out = rgf.philox4x32(torch.as_tensor(np.asarray(counters, np.int64)), torch.as_tensor(np.asarray(keys, np.int64)))
    assert out.dtype == torch.int64
    same_bits(out.numpy().astype(np.uint32), cpu, "philox4x32")


def noise(emu, shape, n, seed, stream, start, sigma=0.75, dtype=torch.float32) -> None:
    x = np.random.default_rng(seed % 1000).standard_normal(shape).astype(np.float32)
    cpu = rgf.gaussian_noise(x, sigma, n, seed=seed, stream=stream, start=start)
    with cuda_path(emu):
        out = rgf.gaussian_noise(torch.from_numpy(x), sigma, n, seed=seed, stream=stream, start=start, dtype=dtype)
    assert out.dtype == dtype and tuple(out.shape) == (n, *shape)
    # float16 / bfloat16: the float32 sum rounded once (torch's conversion rounds to nearest even).
    expected = torch.from_numpy(cpu).to(dtype)
    same_bits(out.view(torch.int16) if dtype != torch.float32 else out,
              (expected.view(torch.int16) if dtype != torch.float32 else expected).numpy(), f"gaussian_noise {dtype}")


# ---------------------------------------------------------------------------- nearest neighbours

def problem(seed, rows, gallery_rows, dim, ties=False, scale=1.0):
    rng = np.random.default_rng(seed)
    q = (scale * rng.standard_normal((rows, dim))).astype(np.float32)
    g = (scale * rng.standard_normal((gallery_rows, dim))).astype(np.float32)
    if ties and gallery_rows >= 4:
        g[1::3] = g[0:gallery_rows - 1:3][: len(g[1::3])]  # exact duplicates: the lower index wins
        if rows >= 2:
            q[1] = g[0]  # a distance of exactly 0
    return q, g


def order_sensitive_rows(rows, dim, seed=0):
    """Rows whose float64 sum of squares rounds to a different float32 norm when added in any
    order other than index order: (1, 2^-12, 2^-27, ..., 2^-27) sums to exactly 1 + 2^-24 (a
    float32 tie, rounded down to 1) in index order, where each 2^-54 is lost against the 1, but
    to 1 + 2^-24 + (dim - 2) 2^-54 (rounded up) when the small squares come first. Scaled by
    powers of two and permuted per row's tail, so the rows differ."""
    rng = np.random.default_rng(seed)
    base = np.full(dim, 2.0**-27)
    base[0], base[1] = 1.0, 2.0**-12
    scale = 2.0 ** rng.integers(-3, 4, rows)
    signs = rng.choice([-1.0, 1.0], (rows, dim))
    return (base[None, :] * scale[:, None] * signs).astype(np.float32)


def nn_search(emu, q, g, exclude=None) -> None:
    cpu = rgf.nn_search(q, g, exclude=exclude)
    ex = torch.from_numpy(exclude) if isinstance(exclude, np.ndarray) else exclude
    with cuda_path(emu):
        out = rgf.nn_search(torch.from_numpy(q), torch.from_numpy(g), exclude=ex)
    for name, a, b in zip(("index1", "dist1", "index2", "dist2"), out, cpu):
        same_bits(a, b, f"nn_search {name} ({q.shape[0]}x{g.shape[0]}x{q.shape[1]})")


def nn_vote(emu, q, g, labels, num_classes, exclude=None, normalize=True) -> None:
    cpu = rgf.nn_vote(q, g, labels, num_classes, exclude=exclude, normalize=normalize)
    ex = torch.from_numpy(exclude) if isinstance(exclude, np.ndarray) else exclude
    with cuda_path(emu):
        out = rgf.nn_vote(torch.from_numpy(q), torch.from_numpy(g), torch.from_numpy(labels), num_classes,
                          exclude=ex, normalize=normalize)
    same_bits(out[0], cpu[0], "nn_vote counts")
    same_bits(out[1], cpu[1], "nn_vote embedding_sum")
    assert int(cpu[0].sum()) == q.shape[0]


def unit_rows(a):
    return (a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-30)).astype(np.float32)


def clustered(seed, rows, clusters, per_cluster, dim, spread=2e-3):
    """Near-duplicate gallery rows (and exact duplicates) around cluster centres, queries close to
    the centres: the low-precision screen ranks them wrongly, so the exact fallback is exercised."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((clusters, dim)))
    g = unit_rows(np.repeat(centres, per_cluster, axis=0) + spread * rng.standard_normal((clusters * per_cluster, dim)))
    g[1::per_cluster] = g[0::per_cluster]
    q = unit_rows(centres[rng.integers(0, clusters, rows)] + spread * rng.standard_normal((rows, dim)))
    return (q * np.float32(0.999)).astype(np.float32), g, rng.integers(0, 5, len(g))


def screened(emu, q, g, labels, num_classes, precision, candidates, exclude=None, normalize=False) -> int:
    """nn_vote_screened on both paths (counts, sums, nearest, undecided rows), and the raw screen
    kernel on the same scores (its per-row outputs, before the exact fallback). Returns the
    number of rows the screen left undecided."""
    cpu = rgf.nn_vote_screened(q, g, labels, num_classes, precision=precision, candidates=candidates,
                               exclude=exclude, normalize=normalize)
    ex = torch.from_numpy(exclude) if isinstance(exclude, np.ndarray) else exclude
    with cuda_path(emu):
        out = rgf.nn_vote_screened(torch.from_numpy(q), torch.from_numpy(g), torch.from_numpy(labels), num_classes,
                                   precision=precision, candidates=candidates, exclude=ex, normalize=normalize)
    for name in ("counts", "embedding_sum", "nearest"):
        same_bits(getattr(out, name), getattr(cpu, name), f"nn_vote_screened {name} ({precision}, {candidates})")
    assert out.undecided_rows == cpu.undecided_rows
    raw_screen(emu, q, g, labels, num_classes, precision, candidates, exclude, normalize)
    return cpu.undecided_rows


def raw_screen(emu, q, g, labels, num_classes, precision, candidates, exclude, normalize) -> None:
    from retrievalguard_fast.kernels.screen import screen_operand, screen_rel_error

    qt, gt, lt = tensors(q, g, labels)
    ext = torch.from_numpy(np.full(len(q), exclude, np.int64)) if isinstance(exclude, int) else tensors(exclude)[0]
    scores = torch.mm(screen_operand(qt, precision), screen_operand(gt, precision).T).contiguous()
    rel = screen_rel_error(precision, q.shape[1])
    results = []
    for be in (backend.CPU, None):
        counts, total = torch.empty(num_classes, dtype=torch.int64), torch.empty(q.shape[1], dtype=torch.float64)
        nearest = torch.empty(len(q), dtype=torch.int64)
        if be is None:
            with cuda_path(emu):
                be = backend._CUDA_BACKEND
                problems = be.new_problems(qt)
                be.nn_screen(qt, gt, lt, num_classes, ext, normalize, scores, candidates, rel, counts, total, nearest,
                             problems)
        else:
            problems = be.new_problems(qt)
            be.nn_screen(qt, gt, lt, num_classes, ext, normalize, scores, candidates, rel, counts, total, nearest,
                         problems)
        results.append((counts, total, nearest))
    for name, a, b in zip(("counts", "embedding_sum", "nearest (-1: undecided)"), results[1], results[0]):
        same_bits(a, b, f"raw screen kernel {name} ({precision}, {candidates} candidates)")


# ---------------------------------------------------------------------------- bad input

def same_error(emu, op, *args, **kwargs) -> str:
    """The op raises the same ValueError on the CPU (numpy args) and on the emulated CUDA path."""
    try:
        getattr(rgf, op)(*args, **kwargs)
    except ValueError as e:
        cpu_msg = str(e)
    else:
        raise AssertionError(f"{op}: the CPU backend accepted bad input")
    targs = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args]
    with cuda_path(emu):
        try:
            getattr(rgf, op)(*targs, **kwargs)
        except ValueError as e:
            cuda_msg = str(e)
        else:
            raise AssertionError(f"{op}: the emulated CUDA path accepted bad input")
    assert cuda_msg == cpu_msg, f"{op}: CUDA says {cuda_msg!r}, the CPU says {cpu_msg!r}"
    return cpu_msg


# ---------------------------------------------------------------------------- one pass over everything

def smoke(emu) -> int:
    """A small pass over every kernel (for the sanitizer and scheduling-order runs). Returns the
    number of comparisons made."""
    count = 0
    philox(emu, np.arange(40).reshape(10, 4), [7, 9])
    count += 1
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        noise(emu, (2, 5), 3, seed=2**40 + 3, stream=5, start=2**32 - 2, dtype=dtype)
        count += 1
    q, g = problem(1, 70, 67, 19, ties=True)
    nn_search(emu, q, g, exclude=np.arange(70) % 67 - (np.arange(70) % 5 == 0))
    labels = np.arange(67) % 4
    nn_vote(emu, q, g, labels, 4, exclude=3)
    count += 2
    q, g, labels = clustered(2, 24, 6, 4, 21)
    screened(emu, q, g, labels, 5, "bf16", 3, exclude=np.arange(24) % 24)
    count += 1
    return count
