"""The data of a run: :func:`load_run_data` turns the data options (``--queries/--gallery`` or
``--dataset``, ``--every``, ``--max-queries``, ``--resize``, ``--crop``, ``--workers``) into a
:class:`RunData` without decoding an image, every mistake one clear line (an
:class:`~..errors.InputError` naming the argument or file and what was expected)."""

from __future__ import annotations

import functools
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


def _same_data(queries: str, q_images, gallery: str, g_images, digest) -> bool:
    """Whether ``--queries`` and ``--gallery`` are the same data, however they are spelled."""
    if q_images is None and g_images is None:  # two .npz files: the same bytes
        if not (os.path.isfile(queries) and os.path.isfile(gallery)):
            return False  # a missing file is named by the loader below
        return os.path.realpath(queries) == os.path.realpath(gallery) or digest(queries) == digest(gallery)
    if q_images is None or g_images is None:
        return False
    return (len(q_images) == len(g_images) and np.array_equal(q_images.labels, g_images.labels)
            and [os.path.realpath(p) for p in q_images.paths] == [os.path.realpath(p) for p in g_images.paths])


def load_run_data(*, queries: Optional[str], gallery: Optional[str], dataset: Optional[str], every: int = 1,
                  max_queries: Optional[int] = None, resize: int = 256, crop: int = 224,
                  workers: Optional[int] = None, leave_one_out: bool = True, verify_data: bool = False) -> RunData:
    """The data options of a run -> :class:`RunData` (see the module docstring).

    When the queries and the gallery are the same data, each query leaves its own gallery row out
    (it would retrieve itself), unless ``leave_one_out=False`` (``--no-leave-one-out``). "The same"
    is decided by identity, never by spelling: image sources listing the same files (resolved
    paths: ``folder:D``, ``folder:D/``, ``./D``, a symlink, or a ``list:`` of those files) with
    the same labels in the same order, or ``.npz`` files with the same bytes; a benchmark layout
    says it itself (SOP, CUB, CARS196). run.json then records ``leave_one_out``.

    Image sources are identified by a digest of their listing (paths, labels, sizes and
    modification times) or, with ``verify_data=True``, of every file's bytes
    (:meth:`~.images.ImageSet.digest`; run.json then records ``image_digest: "bytes"``)."""
    allow_leave_one_out = leave_one_out
    digest = functools.lru_cache(maxsize=None)(file_digest)  # each .npz file read once
    if dataset is not None and (queries is not None or gallery is not None):
        raise InputError("--dataset: give either --dataset NAME:ROOT or --queries and --gallery, not both")
    if dataset is None and (queries is None or gallery is None):
        raise InputError("give --queries and --gallery (.npz, folder:DIR or list:FILE), or --dataset NAME:ROOT")
    preprocess = Preprocess(resize, crop)
    workers = default_workers() if workers is None else workers
    identity: Dict[str, Any] = {}
    if dataset is not None:
        split = benchmark(dataset)
        q_images, g_images, same = split.queries, split.gallery, split.leave_one_out
        identity["dataset"] = dataset.partition(":")[0]
        q_images_digest = q_images.digest(verify_data)
        identity["queries_sha256"] = q_images_digest
        identity["gallery_sha256"] = q_images_digest if g_images is q_images else g_images.digest(verify_data)
    else:
        # Folder sources of one run share one label map: the sorted union of their class names.
        folders = [(spec[len("folder:"):], what) for spec, what in ((queries, "--queries"), (gallery, "--gallery"))
                   if spec.startswith("folder:")]
        classes = sorted(set().union(*(class_folders(root, what) for root, what in folders)))
        q_images = _image_source(queries, "--queries", classes or None)
        g_images = _image_source(gallery, "--gallery", classes or None)
        same = _same_data(queries, q_images, gallery, g_images, digest)
        if same and q_images is not None:
            g_images = q_images
    leave_one_out = same and allow_leave_one_out
    if same:
        identity["leave_one_out"] = leave_one_out
    if q_images is None:
        x, labels, exclude = load_queries(queries)
        if exclude is None and leave_one_out:  # the same .npz: query i is gallery row i
            exclude = np.arange(len(x), dtype=np.int64)
    else:
        x, labels = None, q_images.labels
        exclude = np.arange(len(q_images), dtype=np.int64) if leave_one_out else None
    if g_images is None:
        g_arrays = load_gallery_npz(gallery)
        g_source, g_size = g_arrays, len(g_arrays["labels"])
    else:
        g_source, g_size = g_images, len(g_images)
    if dataset is None:  # the digest of an .npz file, or of an image source's listing
        identity["queries_sha256"] = digest(queries) if q_images is None else q_images.digest(verify_data)
        identity["gallery_sha256"] = (identity["queries_sha256"] if same
                                      else digest(gallery) if g_images is None else g_images.digest(verify_data))
    if exclude is not None and len(exclude) and (exclude.min() < -1 or exclude.max() >= g_size):
        raise InputError(f"--queries {queries}: exclude values must be in [-1, {g_size - 1}] (gallery size {g_size})")
    if q_images is not None or g_images is not None:
        identity["preprocessing"] = preprocess.identity()
        if verify_data:  # absent: the listing digest (folders written before the option resume)
            identity["image_digest"] = "bytes"
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
