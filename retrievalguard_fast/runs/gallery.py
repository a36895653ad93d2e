"""The gallery of a run: :func:`build_gallery` embeds it (once: the embeddings are cached in the
run's folder by :func:`cached_gallery`, keyed by everything they depend on: model, data,
preprocessing, batch size and device type, so a resume reuses them and a change of any of those
computes new ones)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from ..durable import atomic_write
from ..errors import BATCH_SIZE, InputError, out_of_memory_is_input_error
from ..smoothing.gallery import Gallery, embed_batches
from .folder import RunFolder
from .progress import image_batches


def cached_gallery(folder: RunFolder, key: Dict[str, Any], compute: Callable[[], np.ndarray]) -> Tuple[np.ndarray, bool]:
    """The gallery embeddings stored under ``key`` in ``folder``, or ``compute()``'s, stored
    (atomically) for the next run; and whether they came from the cache. Files of other keys are
    left alone: another run's cache is never overwritten."""
    text = json.dumps(key, sort_keys=True)
    path = os.path.join(folder.out, f"gallery-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz")
    if os.path.exists(path):
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) == text:
                    return data["embeddings"], True
        except Exception:  # noqa: BLE001 - a damaged cache is recomputed, never trusted
            pass
    embeddings = np.asarray(compute(), dtype=np.float32)
    atomic_write(path, lambda f: np.savez(f, key=np.array(text), embeddings=embeddings), binary=True)
    return embeddings, False


def build_gallery(data, model, model_id: str, device, batch_size: int, folder: Optional[RunFolder] = None,
                  quiet: bool = False) -> Gallery:
    """The :class:`~..smoothing.Gallery` of a :class:`~..data.RunData`: .npz embeddings as
    given; images (arrays or files) embedded by the clean model in batches of ``batch_size``, once:
    with ``folder`` the embeddings are cached there (:func:`cached_gallery`)."""
    from ..data.images import LOAD_BATCH, iter_images, rebatch

    if isinstance(data.gallery, dict) and "embeddings" in data.gallery:
        gallery = Gallery(data.gallery["embeddings"], data.gallery["labels"], device=device)
    else:
        labels = data.gallery["labels"] if isinstance(data.gallery, dict) else data.gallery.labels

        def compute():
            import torch

            if isinstance(data.gallery, dict):
                x = data.gallery["x"]
                batches = (torch.from_numpy(np.ascontiguousarray(x[a : a + batch_size])) for a in range(0, len(x), batch_size))
            else:
                batches = rebatch(iter_images(data.gallery, data.preprocess, batch_size=min(LOAD_BATCH, batch_size),
                                              workers=data.workers, what="--gallery"), batch_size)
            if not quiet:
                batches = image_batches(batches, data.gallery_size, f"embedded the gallery ({data.gallery_size:,} images)")
            try:
                with out_of_memory_is_input_error("embedding the gallery images", "{batch_size}", batch_size=BATCH_SIZE):
                    return embed_batches(model, batches, device).numpy()
            except InputError:
                raise  # a bad image, or out of memory: already one line
            except (RuntimeError, ValueError) as exc:
                raise InputError(f"--gallery {data.gallery_name}: embedding the gallery images with the model "
                                 f"failed: {str(exc).splitlines()[0]}") from None

        if folder is None:
            emb = compute()
        else:
            key = {"model": model_id, "gallery_sha256": data.identity["gallery_sha256"],
                   "preprocessing": data.identity.get("preprocessing"), "batch_size": batch_size,
                   "device_type": device.type}
            emb, cached = cached_gallery(folder, key, compute)
            if cached and not quiet:
                print(f"gallery embeddings of {len(emb):,} images reused from {folder.out}", file=sys.stderr)
        gallery = Gallery(emb, labels, device=device)
    if not np.intersect1d(gallery.labels_np, data.labels).size:
        raise InputError(f"--gallery {data.gallery_name}: its labels share no class with the queries' labels; "
                         "certified Recall@1 would be 0 for every query")
    return gallery
