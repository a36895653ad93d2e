"""``.npz`` queries and galleries, checked: one clear line per mistake, naming the argument, the
file and what was expected."""

from __future__ import annotations

import os
from typing import Dict

import numpy as np

from ..errors import InputError


def load_npz(path: str, what: str) -> Dict[str, np.ndarray]:
    if not os.path.exists(path):
        raise InputError(f"{what} {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
        raise InputError(f"{what} {path}: not a readable .npz file ({exc.__class__.__name__}: {exc})") from None


def need(arrays: Dict[str, np.ndarray], name: str, what: str, path: str) -> np.ndarray:
    if name not in arrays:
        raise InputError(f"{what} {path}: missing array {name!r} (has: {', '.join(sorted(arrays)) or 'none'})")
    return arrays[name]


def check_labels(labels: np.ndarray, count: int, what: str) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != count:
        raise InputError(f"{what}: labels must have shape ({count},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"{what}: labels must be integers, got dtype {labels.dtype}")
    if count and labels.min() < 0:
        raise InputError(f"{what}: labels must be >= 0, got {labels.min()}")
    return labels.astype(np.int64)


def check_float(x: np.ndarray, what: str) -> np.ndarray:
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError(f"{what}: expected floating-point values, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise InputError(f"{what}: contains non-finite values (NaN or inf)")
    return x.astype(np.float32)


def load_queries(path: str):
    arrays = load_npz(path, "--queries")
    x = check_float(need(arrays, "x", "--queries", path), f"--queries {path}: x")
    if x.ndim < 2 or len(x) == 0:
        raise InputError(f"--queries {path}: x must have shape (M, *input_shape) with M >= 1, got {x.shape}")
    labels = check_labels(need(arrays, "labels", "--queries", path), len(x), f"--queries {path}")
    exclude = arrays.get("exclude")
    if exclude is not None:
        if exclude.shape != (len(x),) or not np.issubdtype(exclude.dtype, np.integer):
            raise InputError(f"--queries {path}: exclude must be {len(x)} integers (-1 for none), got {exclude.shape} {exclude.dtype}")
        exclude = exclude.astype(np.int64)
    return x, labels, exclude


def load_gallery_npz(path: str) -> Dict[str, np.ndarray]:
    """A gallery .npz, checked: ``labels`` and either ``embeddings`` or images ``x``."""
    arrays = load_npz(path, "--gallery")
    labels_raw = need(arrays, "labels", "--gallery", path)
    if "embeddings" in arrays:
        emb = check_float(arrays["embeddings"], f"--gallery {path}: embeddings")
        if emb.ndim != 2 or len(emb) == 0:
            raise InputError(f"--gallery {path}: embeddings must have shape (N, k) with N >= 1, got {emb.shape}")
        if (np.linalg.norm(emb, axis=1) == 0).any():
            raise InputError(f"--gallery {path}: embeddings has a zero row, which cannot be normalised")
        return {"embeddings": emb, "labels": check_labels(labels_raw, len(emb), f"--gallery {path}")}
    if "x" in arrays:
        x = check_float(arrays["x"], f"--gallery {path}: x")
        if x.ndim < 2 or len(x) == 0:
            raise InputError(f"--gallery {path}: x must have shape (N, *input_shape) with N >= 1, got {x.shape}")
        return {"x": x, "labels": check_labels(labels_raw, len(x), f"--gallery {path}")}
    raise InputError(f"--gallery {path}: needs an array 'embeddings' (N, k) or 'x' (N, *input_shape), besides 'labels'")
