"""The data of a run: :func:`load_run_data` turns the data options (``--queries/--gallery`` or
``--dataset``, ``--every``, ``--max-queries``, ``--resize``, ``--crop``, ``--workers``) into a
:class:`RunData` without decoding an image, every mistake one clear line (an
:class:`~..errors.InputError` naming the argument or file and what was expected)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from ..errors import InputError
from .images import ImageQueries, Preprocess, class_folders, folder_source, list_source
from .layouts import benchmark
from .models import file_digest
from .npz import load_gallery_npz, load_queries


def default_workers() -> int:
    """DataLoader workers: every core up to 8 (decoding must keep up with the model stage)."""
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class RunData:
    """The queries and gallery of a run, parsed and checked, nothing decoded yet.

    ``queries``: an array (M, *input_shape) or a :class:`~.images.ImageQueries` read in chunks;
    ``labels``, ``exclude`` (a gallery row per query, -1 for none, or None) and ``indices`` (each
    query's index in its source, its noise stream and record index) are per selected query.
    ``gallery``: the checked .npz arrays, or an :class:`~.images.ImageSet` (embedded by
    :func:`~..runs.build_gallery`). ``identity``: what
    run.json records about the data (digests, preprocessing, selection)."""

    queries: Any
    labels: np.ndarray
    exclude: Optional[np.ndarray]
    indices: np.ndarray
    gallery: Any
    gallery_name: str
    gallery_size: int
    identity: Dict[str, Any]
    preprocess: Any
    workers: int


def _image_source(spec: str, what: str, classes):
    """``folder:DIR`` or ``list:FILE`` -> an ImageSet; anything else is an .npz path (None)."""
    if spec.startswith("folder:"):
        return folder_source(spec[len("folder:"):], what, classes)
    if spec.startswith("list:"):
        return list_source(spec[len("list:"):], what)
    return None


def load_run_data(*, queries: Optional[str], gallery: Optional[str], dataset: Optional[str], every: int = 1,
                  max_queries: Optional[int] = None, resize: int = 256, crop: int = 224,
                  workers: Optional[int] = None) -> RunData:
    """The data options of a run -> :class:`RunData` (see the module docstring)."""
    if dataset is not None and (queries is not None or gallery is not None):
        raise InputError("--dataset: give either --dataset NAME:ROOT or --queries and --gallery, not both")
    if dataset is None and (queries is None or gallery is None):
        raise InputError("give --queries and --gallery (.npz, folder:DIR or list:FILE), or --dataset NAME:ROOT")
    preprocess = Preprocess(resize, crop)
    workers = default_workers() if workers is None else workers
    identity: Dict[str, Any] = {}
    if dataset is not None:
        split = benchmark(dataset)
        q_images, g_images, leave_one_out = split.queries, split.gallery, split.leave_one_out
        identity["dataset"] = dataset.partition(":")[0]
        q_images_digest = q_images.digest()
        identity["queries_sha256"] = q_images_digest
        identity["gallery_sha256"] = q_images_digest if g_images is q_images else g_images.digest()
    else:
        # Folder sources of one run share one label map: the sorted union of their class names.
        folders = [(spec[len("folder:"):], what) for spec, what in ((queries, "--queries"), (gallery, "--gallery"))
                   if spec.startswith("folder:")]
        classes = sorted(set().union(*(class_folders(root, what) for root, what in folders)))
        q_images = _image_source(queries, "--queries", classes or None)
        g_images = q_images if gallery == queries and q_images is not None else _image_source(gallery, "--gallery", classes or None)
        # The same image source on both sides: each query leaves itself out (it would find itself).
        leave_one_out = g_images is q_images and q_images is not None
    if q_images is None:
        x, labels, exclude = load_queries(queries)
    else:
        x, labels = None, q_images.labels
        exclude = np.arange(len(q_images), dtype=np.int64) if leave_one_out else None
    if g_images is None:
        g_arrays = load_gallery_npz(gallery)
        g_source, g_size = g_arrays, len(g_arrays["labels"])
    else:
        g_source, g_size = g_images, len(g_images)
    if dataset is None:  # the digest of an .npz file, or of an image source's listing
        identity["queries_sha256"] = file_digest(queries) if q_images is None else q_images.digest()
        identity["gallery_sha256"] = (identity["queries_sha256"] if leave_one_out
                                      else file_digest(gallery) if g_images is None else g_images.digest())
    if exclude is not None and len(exclude) and (exclude.min() < -1 or exclude.max() >= g_size):
        raise InputError(f"--queries {queries}: exclude values must be in [-1, {g_size - 1}] (gallery size {g_size})")
    if q_images is not None or g_images is not None:
        identity["preprocessing"] = preprocess.identity()
    # --every K (Cohen et al.'s --skip), then the first --max-queries; the gallery stays whole.
    m = len(labels)
    selected = np.arange(0, m, every, dtype=np.int64)[:max_queries]
    if every != 1 or max_queries is not None:
        identity["selection"] = {"every": every, "max_queries": max_queries, "of": m}
    if q_images is None:
        q_source = x[selected] if len(selected) != m else x
    else:
        q_source = ImageQueries(q_images.subset(selected), preprocess, workers=workers)
    return RunData(queries=q_source, labels=labels[selected], exclude=None if exclude is None else exclude[selected],
                   indices=selected, gallery=g_source, gallery_name=dataset or gallery, gallery_size=g_size,
                   identity=identity, preprocess=preprocess, workers=workers)
