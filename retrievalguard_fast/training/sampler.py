"""Per-class batches that visit every training image exactly once per epoch.

Metric losses need several images of a class in a batch (RetrievalGuard: 2 per class, batches of
112). pytorch-metric-learning's MPerClassSampler draws with replacement and leaves the length of
an epoch undefined; this sampler is a permutation instead: each class's images, shuffled, are cut
into groups of ``per_class`` (a class's last, short group joins the group before it, so no group
is smaller than ``per_class``), the groups are shuffled and packed in order into batches of at
most ``batch_size`` images. Every image is in exactly one batch; the batches depend only on the
labels, the settings, the seed and the epoch (a resumed run draws the same ones).
"""

from __future__ import annotations

from typing import List

import numpy as np

from ..errors import InputError, Term

PER_CLASS = Term("per_class", "--per-class")
BATCH = Term("batch_size", "--batch-size")


def check_per_class(labels: np.ndarray, per_class: int, batch_size: int, what: str) -> None:
    """Raise one line for data or settings the sampler cannot serve."""
    if batch_size < 2 * per_class:
        raise InputError(f"{{batch_size}} {batch_size}: must hold at least two classes of {{per_class}} "
                         f"{per_class} images (>= {2 * per_class})", batch_size=BATCH, per_class=PER_CLASS)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise InputError(f"{what}: has {len(classes)} class; metric learning needs at least 2")
    small = classes[counts < per_class]
    if len(small):
        shown = ", ".join(f"{int(c)} ({int(counts[classes == c][0])} image{'s' if counts[classes == c][0] > 1 else ''})"
                          for c in small[:5])
        raise InputError(f"{what}: class{'es' if len(small) > 1 else ''} {shown}{' ...' if len(small) > 5 else ''} "
                         f"{'have' if len(small) > 1 else 'has'} fewer images than {{per_class}} {per_class}; "
                         "lower {per_class} or give every class that many images", per_class=PER_CLASS)
    if 2 * per_class - 1 > batch_size:
        raise InputError(f"{{batch_size}} {batch_size}: too small for groups of up to {2 * per_class - 1} images",
                         batch_size=BATCH)


def epoch_batches(labels: np.ndarray, per_class: int, batch_size: int, seed: int, epoch: int) -> List[np.ndarray]:
    """The batches (arrays of image indices) of ``epoch``: every index once (see the module)."""
    rng = np.random.default_rng([seed, epoch, 0x7261696E])  # "rain": a stream of its own, not the noise's
    groups: List[np.ndarray] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        cuts = list(range(per_class, len(members) - per_class + 1, per_class))
        groups += np.split(members, cuts)
    order = rng.permutation(len(groups))
    batches, current, size = [], [], 0
    for g in order:
        if size + len(groups[g]) > batch_size and current:
            batches.append(np.concatenate(current))
            current, size = [], 0
        current.append(groups[g])
        size += len(groups[g])
    if current:
        batches.append(np.concatenate(current))
    return batches
