"""Independent float64 numpy references for the kernels (written from the papers, not the C++)."""

from __future__ import annotations

import numpy as np

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
_MASK = np.uint64(0xFFFFFFFF)


def philox4x32_10(counters: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Philox4x32-10 on arrays of counters (m, 4) and keys (m, 2), in uint64 arithmetic."""
    c = np.asarray(counters, dtype=np.uint64).copy()
    k = np.broadcast_to(np.asarray(keys, dtype=np.uint64), (c.shape[0], 2)).copy()
    for _ in range(10):
        p0 = _M0 * c[:, 0]
        p1 = _M1 * c[:, 2]
        hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK
        hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK
        c = np.stack([hi1 ^ c[:, 1] ^ k[:, 0], lo1, hi0 ^ c[:, 3] ^ k[:, 1], lo0], axis=1)
        k = (k + np.array([_W0, _W1], dtype=np.uint64)) & _MASK
    return c.astype(np.uint32)


def noise_bits(seed: int, stream: int, samples: np.ndarray, dim: int) -> np.ndarray:
    """Philox words for elements 0..dim-1 of each sample, shape (len(samples), dim)."""
    samples = np.asarray(samples, dtype=np.uint64)
    blocks = (dim + 3) // 4
    s = np.repeat(samples, blocks)
    b = np.tile(np.arange(blocks, dtype=np.uint64), len(samples))
    counters = np.stack([b, s & _MASK, s >> np.uint64(32), np.full_like(b, stream)], axis=1)
    keys = np.array([[seed & 0xFFFFFFFF, seed >> 32]], dtype=np.uint64)
    words = philox4x32_10(counters, keys).reshape(len(samples), blocks * 4)
    return words[:, :dim]


def normals(seed: int, stream: int, samples: np.ndarray, dim: int) -> np.ndarray:
    """Float64 Box-Muller of the noise words: (a, b) -> sqrt(-2 ln u) (cos, sin)(2 pi b / 2^32),
    u = (a + 1/2) / 2^32, for the pairs (x, y) and (z, w) of each Philox block."""
    blocks = (dim + 3) // 4
    words = noise_bits(seed, stream, samples, blocks * 4).astype(np.float64)
    a, b = words[:, 0::2], words[:, 1::2]
    radius = np.sqrt(-2.0 * np.log((a + 0.5) / 2.0**32))
    angle = 2.0 * np.pi * b / 2.0**32
    z = np.empty_like(words)
    z[:, 0::2] = radius * np.cos(angle)
    z[:, 1::2] = radius * np.sin(angle)
    return z[:, :dim]


def nn_distances(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Squared l2 distances in float64, computed by differences (no expansion)."""
    q = np.asarray(queries, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    return ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)


def nn_search(queries, gallery, exclude=None):
    """Nearest and second nearest (lower index first on ties), float64."""
    d = nn_distances(queries, gallery)
    if exclude is not None:
        ex = np.broadcast_to(np.asarray(exclude), (d.shape[0],))
        for r, e in enumerate(ex):
            if e >= 0:
                d[r, e] = np.inf
    order = np.argsort(d, axis=1, kind="stable")
    rows = np.arange(d.shape[0])
    i1, i2 = order[:, 0], order[:, 1] if d.shape[1] > 1 else np.full(d.shape[0], -1)
    d1 = d[rows, i1]
    d2 = d[rows, i2] if d.shape[1] > 1 else np.full(d.shape[0], np.inf)
    return i1, d1, i2, d2, d


def normalize_rows(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64)
    n = np.linalg.norm(e, axis=1, keepdims=True)
    return np.divide(e, n, out=np.zeros_like(e), where=n > 0)


def nn_vote(embeddings, gallery, labels, num_classes, exclude=None, normalize=True):
    e = normalize_rows(embeddings) if normalize else np.asarray(embeddings, dtype=np.float64)
    i1, _, _, _, d = nn_search(e, gallery, exclude)
    counts = np.bincount(np.asarray(labels)[i1], minlength=num_classes)
    return counts, e.sum(axis=0), i1, d


def independent_l2_pgd(embed, x, gallery_embeddings, gallery_labels, reference, radius, *, steps=20, restarts=2,
                       temperature=0.05, step_size=2.5, clip=(0.0, 1.0), seed=0, targeted=(), exclude=-1):
    """An l2 PGD on a base embedding model, written from Madry et al. and torchattacks' PGDL2
    (not from the package's attack): the cross-entropy of the class scores
    ``-min_{y_j = c} |e - g_j|^2 / T`` against the reference label (untargeted) and, for each
    label in ``targeted``, the score of that label minus the reference's; step
    ``step_size * radius / steps`` along the l2-normalised gradient, projection onto the ball and
    the clip; restart 0 from the query, the others from a uniform point of the ball, targeted
    passes from the query. Returns (broken, point): broken if some candidate's 1-NN label
    (of the normalised embedding) is not the reference."""
    import torch

    g = torch.as_tensor(np.asarray(gallery_embeddings), dtype=torch.float64)
    g = g / g.norm(dim=1, keepdim=True)
    y = torch.as_tensor(np.asarray(gallery_labels), dtype=torch.int64)
    classes = int(y.max()) + 1
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)

    def class_scores(e):
        e = e / e.norm(dim=-1, keepdim=True)
        d = ((e[:, None, :].double() - g[None]) ** 2).sum(-1)
        if exclude >= 0:
            d[:, exclude] = float("inf")
        per_class = torch.stack([d[:, y == c].min(1).values if (y == c).any() else torch.full((len(d),), float("inf"),
                                 dtype=d.dtype) for c in range(classes)], 1)
        return -per_class / temperature, d

    def label_of(point):
        with torch.no_grad():
            _, d = class_scores(embed(point[None]))
            return int(y[int(d[0].argmin())])

    starts = [("untargeted", None, r) for r in range(restarts)] + [("targeted", int(c), 0) for c in targeted]
    for kind, target, r in starts:
        if r == 0:
            delta = torch.zeros_like(x)
        else:
            v = torch.randn(x.shape, generator=gen)
            delta = v / v.norm() * radius * float(torch.rand((), generator=gen)) ** (1.0 / x.numel())
        delta = ((x + delta).clamp(*clip) - x)
        for _ in range(steps):
            delta = delta.detach().requires_grad_(True)
            scores, _ = class_scores(embed((x + delta)[None]))
            if kind == "untargeted":
                loss = torch.nn.functional.cross_entropy(scores, torch.tensor([reference]))
            else:
                loss = scores[0, target] - scores[0, reference]
            (grad,) = torch.autograd.grad(loss, delta)
            delta = delta.detach() + step_size * radius / steps * grad / grad.norm().clamp_min(1e-30)
            norm = delta.norm()
            if norm > radius * (1 - 1e-5):
                delta = delta * (radius * (1 - 1e-5) / norm)
            delta = (x + delta).clamp(*clip) - x
        point = (x + delta).clamp(*clip)
        assert float((point.double() - x.double()).norm()) <= radius
        if label_of(point) != reference:
            return True, point
    return False, x
