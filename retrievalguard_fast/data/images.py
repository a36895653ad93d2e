"""Image data sets as users have them on disk: class folders and CSV lists (and the image sets of
the benchmark layouts, :mod:`~.layouts`), decoded with Pillow and streamed through a torch
DataLoader.

- :class:`ImageSet`: a list of image files with integer labels (and where each entry was listed,
  for error messages); built by the benchmark layouts of :mod:`~.layouts` and the sources
  :func:`folder_source`, :func:`list_source`. Nothing is decoded while parsing; every listed file
  is checked to exist.
- :class:`Preprocess`: decode to RGB in [0, 1], resize the shorter side, centre-crop (the
  evaluation transform of Roth et al.'s framework, ``Resize(256)`` + ``CenterCrop(224)``, written
  with Pillow because torchvision's wheels do not load against the CPU torch build).
- :func:`iter_images`: decoded images in order, in batches, from DataLoader workers; a file that
  cannot be decoded is one :class:`~..errors.InputError` naming it.
- :class:`ImageQueries`: queries read in chunks as they are certified (bounded memory).

Decoding and resizing are deterministic (Pillow, fixed filters), and a DataLoader yields batches in
index order whatever the number of workers, so the same images in the same order give the same
tensors from any source; an image decoded here equals ``np.asarray(img.convert("RGB")) / 255`` in
float32 when no resize or crop applies.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import InputError
from .models import file_digest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class ImageSet:
    """Image files and their labels, in a fixed order.

    ``where[i]`` says where entry ``i`` was listed ("FILE line L", or its folder), so an image
    that fails to decode is reported with the line that named it."""

    paths: List[str]
    labels: np.ndarray  # int64 (len(paths),)
    where: List[str]
    source: str  # how the user named it, e.g. "sop:/data/Stanford_Online_Products (test)"

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, positions: Sequence[int]) -> "ImageSet":
        pos = [int(p) for p in positions]
        return ImageSet([self.paths[p] for p in pos], self.labels[pos], [self.where[p] for p in pos], self.source)

    def digest(self, content: bool = False) -> str:
        """sha256 of the listing: each file's path, label, size and modification time (reading
        every image's bytes to identify a 60,000-image set would cost as much as decoding it).
        An image replaced in place changes its mtime, so a resume or the gallery cache sees it;
        one replaced by a file of the same size with its mtime kept (``cp -p``, ``rsync -a``) does
        not. ``content=True`` (``--verify-data``): each file's path, label and the sha256 of its
        bytes instead, which sees every change and reads every byte."""
        h = hashlib.sha256()
        for path, label in zip(self.paths, self.labels.tolist()):
            if content:
                entry = [os.path.abspath(path), label, file_digest(path)]
            else:
                st = os.stat(path)
                entry = [os.path.abspath(path), label, st.st_size, st.st_mtime_ns]
            h.update(json.dumps(entry).encode() + b"\n")
        return h.hexdigest()


@dataclass
class Split:
    """A data set's evaluation split: queries and gallery; ``leave_one_out`` when they are the same
    images (each query then leaves its own gallery row out)."""

    queries: ImageSet
    gallery: ImageSet
    leave_one_out: bool


# ---------------------------------------------------------------------- listings


def need_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise InputError(f"{what}: {path}: no such file")
    return path


def image_at(root: str, rel: str, where: str) -> str:
    path = os.path.normpath(os.path.join(root, rel))
    if not os.path.isfile(path):
        raise InputError(f"{where}: image {rel!r} not found (looked for {path})")
    return path


def parse_int(text: str, where: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{where}: {what} must be an integer, got {text!r}") from None


def read_lines(path: str) -> List[Tuple[int, List[str]]]:
    """(line number, whitespace-separated fields) of each non-blank line."""
    with open(path, encoding="utf-8") as f:
        return [(k, line.split()) for k, line in enumerate(f, 1) if line.strip()]


def image_set(source: str, entries: List[Tuple[str, int, str]]) -> ImageSet:
    if not entries:
        raise InputError(f"{source}: lists no images")
    paths, labels, where = zip(*entries)
    return ImageSet(list(paths), np.asarray(labels, dtype=np.int64), list(where), source)


def class_folders(root: str, what: str) -> List[str]:
    if not os.path.isdir(root):
        raise InputError(f"{what} folder:{root}: not a folder")
    names = sorted(e.name for e in os.scandir(root) if e.is_dir())
    if not names:
        raise InputError(f"{what} folder:{root}: expected one subfolder per class, found none")
    return names


def folder_source(root: str, what: str, classes: Optional[List[str]] = None) -> ImageSet:
    """``folder:DIR``: one subfolder per class; label = the position of its name in ``classes``
    (default: this folder's sorted subfolder names; the CLI passes the sorted union of every folder
    source of a run, so a class has one label on both sides). Files in sorted name order."""
    names = class_folders(root, what)
    label_of = {name: k for k, name in enumerate(sorted(classes if classes is not None else names))}
    entries = []
    for name in names:
        sub = os.path.join(root, name)
        files = sorted(f for f in os.listdir(sub) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise InputError(f"{what} folder:{root}: class folder {sub} holds no images "
                             f"(expected files ending in {', '.join(IMAGE_EXTENSIONS)})")
        entries += [(os.path.join(sub, f), label_of[name], sub) for f in files]
    return image_set(f"folder:{root}", entries)


def list_source(path: str, what: str) -> ImageSet:
    """``list:FILE``: a CSV with header ``path,label``; paths relative to the file's folder."""
    need_file(path, f"{what} list:{path}")
    base = os.path.dirname(os.path.abspath(path))
    entries = []
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header] != ["path", "label"]:
            raise InputError(f"{path} line 1: expected the CSV header 'path,label', got {','.join(header or [])!r}")
        for row in rows:
            where = f"{path} line {rows.line_num}"
            if not row or not "".join(row).strip():
                continue
            if len(row) != 2:
                raise InputError(f"{where}: expected 2 fields (path,label), got {len(row)}")
            label = parse_int(row[1].strip(), where, "label")
            if label < 0:
                raise InputError(f"{where}: label must be >= 0, got {label}")
            entries.append((image_at(base, row[0].strip(), where), label, where))
    return image_set(f"list:{path}", entries)


# ---------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class Preprocess:
    """Decode to RGB float32 in [0, 1] (CHW), resize the shorter side to ``resize`` and
    centre-crop ``crop`` x ``crop``; 0 turns a step off. Normalisation stays inside the model,
    so noise levels and radii are in [0, 1] pixel units."""

    resize: int = 256
    crop: int = 224

    def identity(self) -> dict:
        return {"decode": "pillow-rgb-01", "resize": self.resize, "crop": self.crop, "filter": "bilinear"}

    def __call__(self, path: str) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("RGB")  # grayscale, palette, RGBA and CMYK alike; also forces the full decode
        if self.resize:
            # torchvision's Resize(int): the shorter side to `resize`, the longer one truncated in
            # proportion; Pillow's bilinear filter antialiases when shrinking, as torchvision's
            # PIL path does.
            w, h = img.size
            if w <= h:
                size = (self.resize, int(self.resize * h / w))
            else:
                size = (int(self.resize * w / h), self.resize)
            if size != img.size:
                img = img.resize(size, Image.BILINEAR)
        if self.crop:
            w, h = img.size
            if w < self.crop or h < self.crop:
                raise ValueError(f"is {w}x{h} pixels{' after resizing' if self.resize else ''}, smaller than "
                                 f"--crop {self.crop}")
            left, top = int(round((w - self.crop) / 2.0)), int(round((h - self.crop) / 2.0))  # torchvision's CenterCrop
            img = img.crop((left, top, left + self.crop, top + self.crop))
        pixels = np.asarray(img, dtype=np.uint8)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)).astype(np.float32) / np.float32(255)


class ImageDataset:
    """A map-style torch Dataset over an :class:`ImageSet`: item ``i`` is ``(image or None,
    error or None)``; a decoding failure is returned, not raised, so that it reaches the main
    process as one line naming the file (an exception raised in a DataLoader worker arrives
    wrapped in a multi-line traceback)."""

    def __init__(self, images: ImageSet, preprocess: Preprocess):
        self.images, self.preprocess = images, preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        path = self.images.paths[i]
        try:
            return self.preprocess(path), None
        except Exception as exc:  # noqa: BLE001 - Pillow raises many kinds for a bad file
            where = self.images.where[i]
            listed = "" if where == os.path.dirname(path) else f" (listed at {where})"
            detail = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
            if isinstance(exc, ValueError) and detail.startswith("is "):
                return None, f"image {path}{listed} {detail}"
            return None, (f"image {path}{listed}: cannot be decoded as an image ({exc.__class__.__name__}: "
                          f"{detail}); expected a readable, complete image file")


def _collate(items):
    """Stack a batch; report its first failed or differently sized image (in order)."""
    import torch

    for k, (image, error) in enumerate(items):
        if error is not None:
            return None, (k, error)
        if image.shape != items[0][0].shape:
            return None, (k, (items[0][0].shape, image.shape))
    return torch.from_numpy(np.stack([image for image, _ in items])), None


def iter_images(images: ImageSet, preprocess: Preprocess, *, batch_size: int, workers: int,
                what: str) -> Iterator["torch.Tensor"]:
    """The decoded images of ``images`` in order, as float32 tensors of ``batch_size`` rows (the
    last one shorter), decoded by ``workers`` DataLoader worker processes (0: in this process).
    All images must come out the same size; the first that does not is named."""
    from torch.utils.data import DataLoader

    loader = DataLoader(ImageDataset(images, preprocess), batch_size=batch_size, shuffle=False,
                        num_workers=workers, collate_fn=_collate)
    shape, start = None, 0
    for batch, problem in loader:
        if problem is not None and isinstance(problem[1], str):
            raise InputError(f"{what}: {problem[1]}")
        if problem is not None:  # sizes differ inside this batch: item 0 or item k is the first odd one
            k, (first, other) = problem
            shape = shape or first
            bad, got = (start, first) if first != shape else (start + k, other)
            raise _size_error(images, bad, got, shape, what, preprocess)
        if shape is None:
            shape = tuple(batch.shape[1:])
        elif tuple(batch.shape[1:]) != shape:
            raise _size_error(images, start, tuple(batch.shape[1:]), shape, what, preprocess)
        start += len(batch)
        yield batch


def _size_error(images, bad: int, got, expected, what: str, preprocess: Preprocess) -> InputError:
    path, where = images.paths[bad], images.where[bad]
    listed = "" if where == os.path.dirname(path) else f" (listed at {where})"
    hint = "; --resize 0 --crop 0 keeps images as they are, so they must share one size" if not preprocess.crop else ""
    return InputError(f"{what}: image {path}{listed} decodes to {tuple(got)} pixels (channels, height, width) but "
                      f"the first image to {tuple(expected)}: all must have one size after --resize/--crop{hint}")


# Queries decoded at a time: enough that the model's batches stay full (a chunk's last batch is
# padded), few enough that memory stays bounded (256 x 3 x 224 x 224 float32 is 154 MB).
QUERY_CHUNK = 256
# Images per DataLoader batch: workers hand over small batches, so a worker's prefetch holds few
# decoded images, and the main process regroups them into model batches or query chunks.
LOAD_BATCH = 32


@dataclass
class ImageQueries:
    """Query images read from disk in chunks as they are certified (see
    :func:`~..runs.certify_to_folder`): only a chunk and the loader's prefetch are in memory."""

    images: ImageSet
    preprocess: Preprocess
    workers: int = 0
    chunk: int = QUERY_CHUNK
    what: str = "--queries"

    def __len__(self) -> int:
        return len(self.images)

    def iter_chunks(self, positions: Sequence[int]) -> Iterator[Tuple[np.ndarray, "torch.Tensor"]]:
        """``(positions, images)`` chunks of at most ``chunk`` queries, in the order given."""
        positions = np.asarray(positions, dtype=np.int64)
        if not len(positions):
            return
        batches = iter_images(self.images.subset(positions), self.preprocess, batch_size=min(LOAD_BATCH, self.chunk),
                              workers=self.workers, what=self.what)
        done = 0
        for block in rebatch(batches, self.chunk):
            yield positions[done : done + len(block)], block
            done += len(block)


def rebatch(batches: Iterable["torch.Tensor"], size: int) -> Iterator["torch.Tensor"]:
    """The rows of ``batches`` regrouped into blocks of exactly ``size`` rows (the last one
    shorter), in order: a model then sees the same blocks whatever the loader's batch size."""
    import torch

    pending: List[torch.Tensor] = []
    have = 0
    for batch in batches:
        pending.append(batch)
        have += len(batch)
        while have >= size:
            block = torch.cat(pending) if len(pending) > 1 else pending[0]
            yield block[:size]
            pending, have = [block[size:]], have - size
    if have:
        yield torch.cat(pending)
