"""The data layer: what a run reads, checked, nothing decoded before it is needed.

- :mod:`.run_data`: :func:`load_run_data` -> :class:`RunData` (queries, gallery, selection, identity);
- :mod:`.npz`: ``.npz`` queries and galleries; :mod:`.images`: image folders and lists, decoding
  with Pillow, streaming through a DataLoader (:class:`ImageQueries`);
- :mod:`.layouts`: the benchmarks' published layouts (:data:`LAYOUTS`: SOP, CUB, CARS196, In-Shop);
- :mod:`.models`: devices and models (TorchScript files, factories);
- :mod:`.train_data`: what ``train`` reads (the same sources; a benchmark's training split).
"""

from .images import ImageQueries, ImageSet, Preprocess, folder_source, list_source
from .layouts import BENCHMARKS, LAYOUTS, benchmark, benchmark_train, layouts_help
from .models import file_digest, load_model, resolve_device
from .npz import load_gallery_npz, load_queries
from .run_data import RunData, load_run_data
from .train_data import TrainData, load_train_data, load_validation_data

__all__ = ["RunData", "load_run_data", "ImageQueries", "ImageSet", "Preprocess", "folder_source", "list_source",
           "LAYOUTS", "BENCHMARKS", "benchmark", "benchmark_train", "layouts_help", "load_model", "resolve_device", "file_digest",
           "load_queries", "load_gallery_npz", "TrainData", "load_train_data", "load_validation_data"]
