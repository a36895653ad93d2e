"""The data of a training run: :func:`load_train_data` reads ``train --data`` (or ``--dataset``,
its training split) from the same sources certify reads, so a model is trained on what certify
would see: ``.npz`` with ``x`` and ``labels``, ``folder:DIR``, ``list:FILE``, a benchmark's
published layout; images decoded by the same :class:`~.images.Preprocess`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np

from ..errors import InputError
from .images import ImageDataset, ImageSet, Preprocess, _collate, folder_source, list_source
from .layouts import benchmark, benchmark_train
from .models import file_digest
from .npz import check_float, check_labels, load_npz, need


@dataclass
class TrainData:
    """Training (or validation) images: ``x`` an array (N, *input_shape) in memory, or ``images``
    an :class:`~.images.ImageSet` decoded as batches are drawn; ``labels`` (N,) int64;
    ``identity``: what train.json records about the data."""

    labels: np.ndarray
    identity: Dict[str, Any]
    preprocess: Preprocess
    workers: int
    x: Optional[np.ndarray] = None
    images: Optional[ImageSet] = None
    what: str = "--data"

    def __len__(self) -> int:
        return len(self.labels)

    def batches(self, batches: Sequence[Sequence[int]]) -> Iterator["torch.Tensor"]:
        """The images of each batch of indices, in the order given (images decoded by
        ``workers`` DataLoader processes; a DataLoader keeps the order of its batch sampler)."""
        import torch

        if self.x is not None:
            for batch in batches:
                yield torch.from_numpy(self.x[np.asarray(batch, dtype=np.int64)])
            return
        from torch.utils.data import DataLoader

        loader = DataLoader(ImageDataset(self.images, self.preprocess), batch_sampler=[list(b) for b in batches],
                            num_workers=self.workers, collate_fn=_collate)
        for images, problem in loader:
            if problem is not None:
                detail = problem[1] if isinstance(problem[1], str) else (
                    f"images of one batch decode to different sizes {problem[1][0]} and {problem[1][1]}: all must "
                    "have one size after --resize/--crop")
                raise InputError(f"{self.what}: {detail}")
            yield images


def _npz(path: str, what: str) -> TrainData:
    arrays = load_npz(path, what)
    x = check_float(need(arrays, "x", what, path), f"{what} {path}: x")
    if x.ndim < 2 or len(x) == 0:
        raise InputError(f"{what} {path}: x must have shape (N, *input_shape) with N >= 1, got {x.shape}")
    if "labels" not in arrays:
        raise InputError(f"{what} {path}: missing array 'labels' (N,) of class labels; training needs them "
                         f"(has: {', '.join(sorted(arrays))})")
    labels = check_labels(arrays["labels"], len(x), f"{what} {path}")
    return TrainData(labels=labels, identity={"sha256": file_digest(path)}, preprocess=Preprocess(0, 0), workers=0,
                     x=np.ascontiguousarray(x), what=what)


def load_train_data(*, data: Optional[str], dataset: Optional[str], resize: int = 256, crop: int = 224,
                    workers: int = 0, what: str = "--data") -> TrainData:
    """``--data SOURCE`` (``.npz``, ``folder:DIR``, ``list:FILE``) or ``--dataset NAME:ROOT`` (its
    training split) -> :class:`TrainData`, checked, nothing decoded."""
    if (data is None) == (dataset is None):
        raise InputError(f"give either {what} SOURCE (.npz with x and labels, folder:DIR or list:FILE) or "
                         "--dataset NAME:ROOT (its training split), not both and not neither")
    preprocess = Preprocess(resize, crop)
    if dataset is not None:
        images = benchmark_train(dataset)
        identity = {"dataset": dataset.partition(":")[0], "split": "train"}
        what = f"--dataset {dataset} (training split)"
    elif data.startswith("folder:"):
        images = folder_source(data[len("folder:"):], what)
        identity = {}
    elif data.startswith("list:"):
        images = list_source(data[len("list:"):], what)
        identity = {}
    else:
        return _npz(data, what)
    identity.update(sha256=images.digest(), preprocessing=preprocess.identity())
    return TrainData(labels=images.labels, identity=identity, preprocess=preprocess, workers=workers, images=images,
                     what=what)


def load_validation_data(*, val: Optional[str], dataset: Optional[str], resize: int, crop: int,
                         workers: int) -> Optional[TrainData]:
    """The images whose clean Recall@1 (leave-one-out) is reported after each epoch: ``--val``
    (any source), or a benchmark's evaluation queries with ``--dataset``; None for neither."""
    if val is not None:
        return load_train_data(data=val, dataset=None, resize=resize, crop=crop, workers=workers, what="--val")
    if dataset is None:
        return None
    split = benchmark(dataset)
    if not split.leave_one_out:  # In-Shop: its own query and gallery sets; the gallery serves alone
        split.queries = split.gallery
    preprocess = Preprocess(resize, crop)
    return TrainData(labels=split.queries.labels, preprocess=preprocess, workers=workers, images=split.queries,
                     identity={"dataset": dataset.partition(":")[0], "split": "test",
                               "sha256": split.queries.digest(), "preprocessing": preprocess.identity()},
                     what="--dataset")
