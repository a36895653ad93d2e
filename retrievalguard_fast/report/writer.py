"""The one writer of a run's reports: ``summary.json``, ``summary.csv`` and a PNG plot, each
replaced atomically and durably (:func:`~..durable.atomic_write`), all drawn from one summary."""

from __future__ import annotations

import csv
import json
import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..durable import atomic_write

#: The header of every summary.csv: one value per row.
CSV_HEADER = ("model", "metric", "radius", "value")


def _json_default(v: Any):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    return str(v)


def write_summary_files(out: str, summary: dict, csv_rows: Iterable[Sequence[Any]], plot: Callable[[dict, str], None],
                        png: str) -> None:
    """``out/summary.json`` (the summary), ``out/summary.csv`` (:data:`CSV_HEADER`, then
    ``csv_rows``) and ``out/<png>`` (``plot(summary, path)``)."""
    atomic_write(os.path.join(out, "summary.json"), lambda f: json.dump(summary, f, indent=2, default=_json_default))

    def write_csv(f):
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        w.writerows(csv_rows)

    atomic_write(os.path.join(out, "summary.csv"), write_csv)
    atomic_write(os.path.join(out, png), lambda f: plot(summary, f), binary=True)


def figure():
    """A matplotlib figure and axes for a report plot (the Agg backend: no screen needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5), dpi=120)


def save(fig, target) -> None:
    """Save and close a report figure; ``target`` is a path or a binary file (PNG)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(target, format="png")
    plt.close(fig)
