"""Inputs of the CLI: devices, models, and the queries and gallery of a run (.npz arrays, image
folders and lists, the benchmark data sets of :mod:`~.datasets`), checked with one clear line per
mistake (an :class:`~.errors.InputError` naming the argument or file and what was expected).

:func:`load_run_data` turns the data options (``--queries/--gallery`` or ``--dataset``,
``--every``, ``--max-queries``, ``--resize``, ``--crop``, ``--workers``) into a :class:`RunData`
without decoding an image; :meth:`RunData.build_gallery` embeds the gallery (cached in the run's
folder).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional

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


# ---------------------------------------------------------------------- the data of a run


def default_workers() -> int:
    """DataLoader workers: every core up to 8 (decoding must keep up with the model stage)."""
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class RunData:
    """The queries and gallery of a run, parsed and checked, nothing decoded yet.

    ``queries``: an array (M, *input_shape) or a :class:`~.datasets.ImageQueries` read in chunks;
    ``labels``, ``exclude`` (a gallery row per query, -1 for none, or None) and ``indices`` (each
    query's index in its source, its noise stream and record index) are per selected query.
    ``gallery``: the checked .npz arrays, or an :class:`~.datasets.ImageSet`. ``identity``: what
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

    def build_gallery(self, model, model_id: str, device, batch_size: int, folder=None, quiet: bool = False):
        """The :class:`~.gallery.Gallery`: .npz embeddings as given; images (arrays or files)
        embedded by the clean model in batches of ``batch_size``, once: with ``folder`` (a
        :class:`~.runstore.RunFolder`) the embeddings are cached there, keyed by model, data,
        preprocessing, batch size and device type."""
        from .gallery import Gallery, embed_batches

        if isinstance(self.gallery, dict) and "embeddings" in self.gallery:
            gallery = Gallery(self.gallery["embeddings"], self.gallery["labels"], device=device)
        else:
            labels = self.gallery["labels"] if isinstance(self.gallery, dict) else self.gallery.labels

            def compute():
                if isinstance(self.gallery, dict):
                    x = self.gallery["x"]
                    batches = (torch_from(x[a : a + batch_size]) for a in range(0, len(x), batch_size))
                else:
                    from .datasets import LOAD_BATCH, iter_images, rebatch

                    batches = rebatch(iter_images(self.gallery, self.preprocess, batch_size=min(LOAD_BATCH, batch_size),
                                                  workers=self.workers, what="--gallery"), batch_size)
                if not quiet:
                    batches = _with_bar(batches, self.gallery_size, f"embedded the gallery ({self.gallery_size:,} images)")
                try:
                    with out_of_memory_is_input_error("embedding the gallery images", "--batch-size"):
                        return embed_batches(model, batches, device).numpy()
                except (RuntimeError, ValueError) as exc:
                    raise InputError(f"--gallery {self.gallery_name}: embedding the gallery images with the model "
                                     f"failed: {str(exc).splitlines()[0]}") from None

            if folder is None:
                emb = compute()
            else:
                key = {"model": model_id, "gallery_sha256": self.identity["gallery_sha256"],
                       "preprocessing": self.identity.get("preprocessing"), "batch_size": batch_size,
                       "device_type": device.type}
                emb, cached = folder.cached_gallery(key, compute)
                if cached and not quiet:
                    print(f"gallery embeddings of {len(emb):,} images reused from {folder.out}", file=sys.stderr)
            gallery = Gallery(emb, labels, device=device)
        if not np.intersect1d(gallery.labels_np, self.labels).size:
            raise InputError(f"--gallery {self.gallery_name}: its labels share no class with the queries' labels; "
                             "certified Recall@1 would be 0 for every query")
        return gallery


def torch_from(a: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def _with_bar(batches, total: int, what: str):
    """``batches`` unchanged, with a progress bar on a terminal; otherwise (logs) one line at the
    end, so that an error while embedding stays the only line."""
    import time

    if not sys.stderr.isatty():
        started = time.perf_counter()
        yield from batches
        seconds = time.perf_counter() - started
        print(f"{what}: {seconds:.1f} s, {total / max(seconds, 1e-9):,.0f} images/s", file=sys.stderr, flush=True)
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="image", desc="gallery", dynamic_ncols=True, file=sys.stderr) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))


def _image_source(spec: str, what: str, classes):
    """``folder:DIR`` or ``list:FILE`` -> an ImageSet; anything else is an .npz path (None)."""
    from .datasets import folder_source, list_source

    if spec.startswith("folder:"):
        return folder_source(spec[len("folder:"):], what, classes)
    if spec.startswith("list:"):
        return list_source(spec[len("list:"):], what)
    return None


def load_run_data(*, queries: Optional[str], gallery: Optional[str], dataset: Optional[str], every: int = 1,
                  max_queries: Optional[int] = None, resize: int = 256, crop: int = 224,
                  workers: Optional[int] = None) -> RunData:
    """The data options of a run -> :class:`RunData` (see the module docstring)."""
    from .datasets import ImageQueries, Preprocess, benchmark, class_folders

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
