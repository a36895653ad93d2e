"""The report layer: metrics of a run's certificates and the files and tables drawn from them.

- :mod:`.metrics`: :func:`summarize` (certified Recall@1 / Recall@K, clean Recall@1, abstentions,
  average radii, the curve), :func:`run_summary`, :func:`certified_accuracy`;
- :mod:`.writer`: the one writer of summary.json / summary.csv / PNG (atomic, durable);
- :mod:`.certified`: a certification run's csv rows, plot and terminal table;
- :mod:`.environment`: the device in words and the versions behind the numbers.
"""

from .certified import print_table, write_reports
from .environment import device_text, versions
from .metrics import CURVE_POINTS, accuracy_curve, certified_accuracy, run_summary, summarize
from .writer import write_summary_files

__all__ = ["summarize", "run_summary", "certified_accuracy", "accuracy_curve", "CURVE_POINTS", "write_reports",
           "print_table", "write_summary_files", "device_text", "versions"]
