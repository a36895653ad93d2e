"""The deep-metric-learning benchmarks in their published layouts: one parser per layout, each
turning a data set's root folder into its evaluation :class:`~.images.Split`, in the registry
:data:`LAYOUTS` from which ``--dataset`` and its help are built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import numpy as np

from ..errors import InputError
from .images import ImageSet, Split, image_at, image_set, need_file, parse_int, read_lines


def _sop_images(root: str, name: str, part: str):
    """One of SOP's split files (``Ebay_test.txt``, ``Ebay_train.txt``: header ``image_id class_id
    super_class_id path``), images under ROOT; labels are class ids."""
    split = need_file(os.path.join(root, name), f"--dataset sop:{root}")
    lines = read_lines(split)
    header = ["image_id", "class_id", "super_class_id", "path"]
    if not lines or lines[0][1] != header:
        raise InputError(f"{split} line 1: expected the header {' '.join(header)!r}, got "
                         f"{' '.join(lines[0][1]) if lines else 'an empty file'!r}")
    entries = []
    for k, fields in lines[1:]:
        where = f"{split} line {k}"
        if len(fields) != 4:
            raise InputError(f"{where}: expected 4 fields (image_id class_id super_class_id path), got {len(fields)}")
        entries.append((image_at(root, fields[3], where), parse_int(fields[1], where, "class_id"), where))
    return image_set(f"sop:{root}{part}", entries)


def sop(root: str) -> Split:
    """Stanford Online Products: ``Ebay_test.txt``; queries = gallery, leave-one-out."""
    images = _sop_images(root, "Ebay_test.txt", "")
    return Split(images, images, leave_one_out=True)


def sop_train(root: str) -> ImageSet:
    """SOP's training split: ``Ebay_train.txt`` (classes 1-11318)."""
    return _sop_images(root, "Ebay_train.txt", " (train)")


def _cub_images(root: str, train: bool) -> ImageSet:
    """CUB-200-2011: ``images.txt`` (``image_id path``) and ``image_class_labels.txt``
    (``image_id class_id``), images under ROOT/images; the DML protocol trains on classes 1-100
    and tests on 101-200."""
    names = need_file(os.path.join(root, "images.txt"), f"--dataset cub:{root}")
    labels_file = need_file(os.path.join(root, "image_class_labels.txt"), f"--dataset cub:{root}")
    label_of: Dict[str, Tuple[int, str]] = {}
    for k, fields in read_lines(labels_file):
        where = f"{labels_file} line {k}"
        if len(fields) != 2:
            raise InputError(f"{where}: expected 2 fields (image_id class_id), got {len(fields)}")
        label_of[fields[0]] = (parse_int(fields[1], where, "class_id"), where)
    entries = []
    for k, fields in read_lines(names):
        where = f"{names} line {k}"
        if len(fields) != 2:
            raise InputError(f"{where}: expected 2 fields (image_id path), got {len(fields)}")
        if fields[0] not in label_of:
            raise InputError(f"{where}: image_id {fields[0]} has no line in {labels_file}")
        label = label_of[fields[0]][0]
        if (label <= 100) == train:
            entries.append((image_at(os.path.join(root, "images"), fields[1], where), label, where))
    return image_set(f"cub:{root} (classes {'1-100' if train else '101-200'})", entries)


def cub(root: str) -> Split:
    """CUB-200-2011's test split: classes 101-200, queries = gallery, leave-one-out."""
    images = _cub_images(root, train=False)
    return Split(images, images, leave_one_out=True)


def cub_train(root: str) -> ImageSet:
    return _cub_images(root, train=True)


def _cars_images(root: str, train: bool) -> ImageSet:
    """CARS196: ``cars_annos.mat`` (read with scipy), images at ROOT/relative_im_path; the DML
    protocol trains on classes 1-98 and tests on 99-196 (not the file's own ``test`` flag)."""
    from scipy.io import loadmat

    mat = need_file(os.path.join(root, "cars_annos.mat"), f"--dataset cars:{root}")
    try:
        annotations = loadmat(mat, squeeze_me=True)["annotations"]
        rel_paths = np.atleast_1d(annotations["relative_im_path"])
        classes = np.atleast_1d(annotations["class"])
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets one line
        raise InputError(f"{mat}: expected a MATLAB file with a struct array 'annotations' with fields "
                         f"relative_im_path and class ({exc.__class__.__name__}: {exc})") from None
    entries = []
    for k, (rel, cls) in enumerate(zip(rel_paths, classes), 1):
        where = f"{mat} annotation {k}"
        label = parse_int(str(cls), where, "class")
        if (label <= 98) == train:
            entries.append((image_at(root, str(rel), where), label, where))
    return image_set(f"cars:{root} (classes {'1-98' if train else '99-196'})", entries)


def cars(root: str) -> Split:
    """CARS196's test split: classes 99-196, queries = gallery, leave-one-out."""
    images = _cars_images(root, train=False)
    return Split(images, images, leave_one_out=True)


def cars_train(root: str) -> ImageSet:
    return _cars_images(root, train=True)


def _inshop_sets(root: str) -> Dict[str, list]:
    """In-Shop Clothes Retrieval: ``list_eval_partition.txt`` (a count line, the header
    ``image_name item_id evaluation_status``, then one line per image) -> the entries of each
    status (query, gallery, train); labels are the numbers of the item ids (``id_00000002`` -> 2)."""
    split = need_file(os.path.join(root, "list_eval_partition.txt"), f"--dataset inshop:{root}")
    lines = read_lines(split)
    header = ["image_name", "item_id", "evaluation_status"]
    if len(lines) < 2 or lines[1][1] != header:
        got = " ".join(lines[1][1]) if len(lines) >= 2 else "nothing"
        raise InputError(f"{split} line 2: expected the header {' '.join(header)!r} (after a count line), got {got!r}")
    sets: Dict[str, list] = {"query": [], "gallery": [], "train": []}
    for k, fields in lines[2:]:
        where = f"{split} line {k}"
        if len(fields) != 3:
            raise InputError(f"{where}: expected 3 fields (image_name item_id evaluation_status), got {len(fields)}")
        if fields[2] in sets:
            item = fields[1][3:] if fields[1].startswith("id_") else fields[1]
            sets[fields[2]].append((image_at(root, fields[0], where), parse_int(item, where, "item_id's number"), where))
    return sets


def inshop(root: str) -> Split:
    """In-Shop's own query and gallery sets."""
    sets = _inshop_sets(root)
    return Split(image_set(f"inshop:{root} (query)", sets["query"]),
                 image_set(f"inshop:{root} (gallery)", sets["gallery"]), leave_one_out=False)


def inshop_train(root: str) -> ImageSet:
    return image_set(f"inshop:{root} (train)", _inshop_sets(root)["train"])


@dataclass(frozen=True)
class Layout:
    """One benchmark layout: its ``--dataset`` name, what it is, and its parsers: the evaluation
    split (certify, attack) and the training split (train)."""

    name: str
    title: str
    parse: Callable[[str], Split]
    train: Callable[[str], ImageSet]


#: The benchmark layouts ``--dataset NAME:ROOT`` reads, in help order.
LAYOUTS: Dict[str, Layout] = {layout.name: layout for layout in (
    Layout("sop", "Stanford Online Products", sop, sop_train),
    Layout("cub", "CUB-200-2011", cub, cub_train),
    Layout("cars", "CARS196", cars, cars_train),
    Layout("inshop", "In-Shop", inshop, inshop_train),
)}
BENCHMARKS = tuple(LAYOUTS)


def layouts_help() -> str:
    """``sop:ROOT (Stanford Online Products), ...``: the registry in words, for the CLI's help."""
    return ", ".join(f"{name}:ROOT ({layout.title})" for name, layout in LAYOUTS.items())


def _layout(spec: str) -> Tuple[Layout, str]:
    name, _, root = spec.partition(":")
    if name not in LAYOUTS or not root:
        raise InputError(f"--dataset {spec}: expected NAME:ROOT with NAME one of {', '.join(BENCHMARKS)}")
    if not os.path.isdir(root):
        raise InputError(f"--dataset {spec}: {root} is not a folder")
    return LAYOUTS[name], root


def benchmark(spec: str) -> Split:
    """``NAME:ROOT`` (a name of :data:`LAYOUTS`) -> its evaluation split."""
    layout, root = _layout(spec)
    return layout.parse(root)


def benchmark_train(spec: str) -> ImageSet:
    """``NAME:ROOT`` -> its training split (SOP Ebay_train.txt, CUB classes 1-100, CARS196 1-98,
    In-Shop train)."""
    layout, root = _layout(spec)
    return layout.train(root)
