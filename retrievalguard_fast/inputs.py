"""Inputs of the CLI: devices, models and .npz arrays, checked with one clear line per mistake
(an :class:`~.errors.InputError` naming the argument or file and what was expected)."""

from __future__ import annotations

import hashlib
import importlib
import os
from typing import Dict

import numpy as np

from .errors import InputError, out_of_memory_is_input_error


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    return torch.device(name)


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


def load_model(spec: str):
    import torch

    if os.path.exists(spec):
        try:
            model = torch.jit.load(spec, map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"--model {spec}: not a loadable TorchScript file ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
        return model, file_digest(spec)
    if ":" not in spec:
        raise InputError(f"--model {spec}: no such file; expected a TorchScript file or 'package.module:factory'")
    module_name, factory_name = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, factory_name)
        model = factory()
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"--model {spec}: could not build the model ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"--model {spec}: the factory returned {type(model).__name__}, expected a torch.nn.Module")
    return model, "factory:" + spec


def load_gallery(path: str, model, device, batch_size: int, query_labels: np.ndarray):
    from .gallery import Gallery

    arrays = load_npz(path, "--gallery")
    labels_raw = need(arrays, "labels", "--gallery", path)
    if "embeddings" in arrays:
        emb = check_float(arrays["embeddings"], f"--gallery {path}: embeddings")
        if emb.ndim != 2 or len(emb) == 0:
            raise InputError(f"--gallery {path}: embeddings must have shape (N, k) with N >= 1, got {emb.shape}")
        labels = check_labels(labels_raw, len(emb), f"--gallery {path}")
        if (np.linalg.norm(emb, axis=1) == 0).any():
            raise InputError(f"--gallery {path}: embeddings has a zero row, which cannot be normalised")
        gallery = Gallery(emb, labels, device=device)
    elif "x" in arrays:
        x = check_float(arrays["x"], f"--gallery {path}: x")
        if x.ndim < 2 or len(x) == 0:
            raise InputError(f"--gallery {path}: x must have shape (N, *input_shape) with N >= 1, got {x.shape}")
        labels = check_labels(labels_raw, len(x), f"--gallery {path}")
        try:
            with out_of_memory_is_input_error("embedding the gallery images", "--batch-size"):
                gallery = Gallery.from_model(model, x, labels, batch_size=batch_size, device=device)
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"--gallery {path}: embedding the gallery images with the model failed: {str(exc).splitlines()[0]}") from None
    else:
        raise InputError(f"--gallery {path}: needs an array 'embeddings' (N, k) or 'x' (N, *input_shape), besides 'labels'")
    if not np.intersect1d(gallery.labels_np, query_labels).size:
        raise InputError(f"--gallery {path}: its labels share no class with the queries' labels; "
                       "certified Recall@1 would be 0 for every query")
    return gallery
