"""A certification run kept in a folder: certify into it, stop at any moment, resume it.

The folder holds

- ``run.json``: the parameters that determine the per-query results (a resume must match them);
- ``results.jsonl``: one JSON record per certified query, appended, flushed and fsync'ed as each
  query finishes, so a kill (even SIGKILL) loses at most the query in flight; a torn last line
  is cut off on the next open;
- ``summary.json`` / ``summary.csv`` / ``certified_recall.png``: the reports (:mod:`~.report`);
- ``.lock``: held (``flock``) by the run using the folder, released when it ends or dies; a
  second run into the same folder is refused before it changes anything.

:func:`certify_to_folder` is the library entry point; the CLI calls it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .certify import QueryCertificate
from .errors import InputError, out_of_memory_is_input_error
from .progress import Progress
from .report import run_summary, write_reports
from .sequential import SEQUENTIAL

RUN = "run.json"
RESULTS = "results.jsonl"
LOCK = ".lock"
DEFAULT_RADII = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT); everything certified before is saved."""


class RunFolder:
    """Exclusive use of one run's folder: its lock, parameters and results."""

    def __init__(self, out: str):
        self.out = out
        self.run_path = os.path.join(out, RUN)
        self.results_path = os.path.join(out, RESULTS)
        try:
            os.makedirs(out, exist_ok=True)
            self._lock = open(os.path.join(out, LOCK), "a+")
        except OSError as exc:
            raise InputError(f"--out {out}: cannot use this folder ({exc.strerror})") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "another process"
            self._lock.close()
            raise InputError(f"--out {out} is in use by another run ({holder}); wait for it to end, "
                             "or choose another --out") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._lock.flush()
        self._out_file = None

    def close(self) -> None:
        if self._out_file is not None:
            self._out_file.close()
            self._out_file = None
        if not self._lock.closed:
            self._lock.close()  # releases the flock

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ parameters and results

    def start(self, params: dict, resume: bool) -> List[dict]:
        """Check (or record) the run's parameters; the records already certified here."""
        has_results = os.path.exists(self.results_path) and os.path.getsize(self.results_path) > 0
        if os.path.exists(self.run_path) and has_results:
            previous = self._read_params()
            if previous != params:
                changed = sorted(k for k in set(previous) | set(params) if previous.get(k) != params.get(k))
                raise InputError(f"--out {self.out} holds results of a run with other parameters ({', '.join(changed)} "
                                 "differ); choose a new --out or delete that folder")
            if not resume:
                raise InputError(f"--out {self.out} already holds results of this run; pass --resume to continue it "
                                 "or choose a new --out")
        elif has_results:
            raise InputError(f"--out {self.out} holds a results.jsonl without run.json; choose a new --out")
        else:  # nothing certified there yet (a fresh folder, or a run that stopped before its first query)
            with open(self.run_path + ".tmp", "w") as f:
                json.dump(params, f, indent=2)
            os.replace(self.run_path + ".tmp", self.run_path)
        return self._read_results()

    def _read_params(self) -> dict:
        try:
            with open(self.run_path) as f:
                params = json.load(f)
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.run_path} is damaged ({exc}); it records the parameters of the results in "
                             f"{self.results_path}, which cannot be resumed without it: choose a new --out, or "
                             "delete the folder to start over") from None
        if not isinstance(params, dict):
            raise InputError(f"{self.run_path} is damaged (not a JSON object); choose a new --out, or delete the "
                             "folder to start over")
        return params

    def _read_results(self) -> List[dict]:
        """Complete records of results.jsonl; a torn last line (from a kill) is cut off the file."""
        if not os.path.exists(self.results_path):
            return []
        with open(self.results_path, "rb") as f:
            data = f.read()
        records, good_end, pos = [], 0, 0
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                break  # a last line without its newline was being written when the run stopped
            try:
                records.append(json.loads(data[pos:nl]))
            except ValueError:
                if data[nl + 1 :].strip():
                    raise InputError(f"{self.results_path}: line {len(records) + 1} is corrupt and is not the last "
                                     "line; the file was edited or damaged, start a new --out") from None
                break
            pos = good_end = nl + 1
        if good_end < len(data):
            with open(self.results_path, "r+b") as f:
                f.truncate(good_end)
        return records

    def append(self, cert) -> dict:
        """Write one record durably (flush + fsync) before the next query's: a
        :class:`QueryCertificate` or any JSON-ready dict with an ``index`` (the attack's)."""
        if self._out_file is None:
            self._out_file = open(self.results_path, "a")
        record = cert if isinstance(cert, dict) else cert.to_dict()
        self._out_file.write(json.dumps(record) + "\n")
        self._out_file.flush()
        os.fsync(self._out_file.fileno())
        return record


def read_run(folder: str, what: str) -> tuple:
    """The parameters and complete records of a run folder, read only (no lock is taken: a
    run still writing there only means fewer records; a torn last line is skipped, not cut)."""
    run_path, results_path = os.path.join(folder, RUN), os.path.join(folder, RESULTS)
    if not os.path.isfile(run_path) or not os.path.isfile(results_path):
        raise InputError(f"{what} {folder}: expected a results folder of certify (with {RUN} and {RESULTS})")
    try:
        with open(run_path) as f:
            params = json.load(f)
        records = []
        with open(results_path) as f:
            lines = f.read().split("\n")
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                if i < len(lines) - 1:
                    raise
    except (OSError, ValueError) as exc:
        raise InputError(f"{what} {folder}: unreadable run ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(params, dict) or not all(isinstance(r, dict) and "index" in r for r in records):
        raise InputError(f"{what} {folder}: {RUN} or {RESULTS} is not what certify writes")
    return params, records


def run_parameters(retriever, *, num_queries: int, n0: int, n: int, alpha: float, ks: Sequence[int], mode: str,
                   radii: Sequence[float], first_checkpoint: int, identity: Dict[str, Any]) -> dict:
    """Everything the per-query results depend on (run.json). ``identity`` names the model and
    data (a file digest, a factory name, a data set), so a resume with other inputs is refused."""
    params = {
        **identity,
        # The float32 sigma the noise and the certificates use, written as its shortest decimal
        # (0.1, not 0.10000000149011612).
        "sigma": float(str(np.float32(retriever.sigma))), "n0": n0, "n": n, "alpha": alpha, "seed": retriever.seed,
        "recall_k": sorted(set(int(k) for k in ks)), "device_type": retriever.device.type, "num_queries": int(num_queries),
        # The model always runs on batches of exactly this many rows, so results do not depend on
        # how an interrupted run was resumed; a different batch size may change the last bits.
        "batch_size": retriever.batch_size,
        "mode": mode,
        "model_stage": retriever.model_stage,
    }
    if mode == SEQUENTIAL:  # the stopping rule depends on the radii and the schedule
        params["radii"] = sorted(set(float(r) for r in radii))
        params["first_checkpoint"] = first_checkpoint
    return params


def certify_to_folder(out: str, retriever, queries: Any, labels: Any, *, identity: Dict[str, Any],
                      exclude: Optional[np.ndarray] = None, n0: int = 100, n: int = 10_000, alpha: float = 0.001,
                      ks: Sequence[int] = (1,), mode: str = SEQUENTIAL, radii: Sequence[float] = DEFAULT_RADII,
                      first_checkpoint: int = 1000, resume: bool = False, quiet: bool = False) -> dict:
    """Certify ``queries`` (M, *input_shape) with ``retriever`` into the folder ``out`` and
    return the run's summary (also written there as summary.json, summary.csv and a plot).

    Query ``i`` uses noise stream ``i``. With ``resume=True`` a folder holding part of the same
    run (same parameters and ``identity``) is continued: its certified queries are kept, the
    others certified, and the result is identical to an uninterrupted run. Raises
    :class:`~.errors.InputError` for a folder in use, of another run, or damaged, and for
    running out of memory; :class:`RunInterrupted` on Ctrl-C (results so far are kept).
    ``mode``: "sequential" (stop each query once every radius in ``radii`` is decided) or
    "fixed-n"; ``radii`` are also the radii of the summary table.
    """
    x = queries if hasattr(queries, "shape") else np.asarray(queries)
    labels = np.asarray(labels, dtype=np.int64)
    m = int(len(x))
    with RunFolder(out) as folder:
        params = run_parameters(retriever, num_queries=m, n0=n0, n=n, alpha=alpha, ks=ks, mode=mode, radii=radii,
                                first_checkpoint=first_checkpoint, identity=identity)
        records = folder.start(params, resume)
        done = {int(r["index"]) for r in records}
        todo = np.array([i for i in range(m) if i not in done], dtype=np.int64)
        progress = Progress(m, len(done), quiet=quiet)
        started, samples = time.perf_counter(), 0
        try:
            if len(todo):
                import torch

                xt = torch.as_tensor(x[todo] if isinstance(x, np.ndarray) else x[torch.as_tensor(todo)])
                with out_of_memory_is_input_error("certifying queries in noisy batches of batch_size rows",
                                                  "batch_size (--batch-size)"):
                    for cert in retriever.iter_certify(
                            xt, labels[todo], exclude=None if exclude is None else np.asarray(exclude)[todo],
                            indices=todo, n0=n0, n=n, alpha=alpha, ks=ks, sequential=mode == SEQUENTIAL,
                            radii=radii, first_checkpoint=min(first_checkpoint, n), on_batch=progress.samples):
                        records.append(folder.append(cert))
                        samples += cert.samples
                        progress.query_done()
        except KeyboardInterrupt:
            progress.close()
            raise RunInterrupted(f"interrupted: {len(records)} of {m} queries are saved in {folder.results_path}; "
                                 "rerun with --resume to continue") from None
        progress.close()
        seconds = time.perf_counter() - started
        certs = [QueryCertificate.from_dict(r) for r in sorted(records, key=lambda r: r["index"])]
        summary = run_summary(certs, params, sorted(set(float(r) for r in radii)), device=retriever.device,
                              session_queries=len(todo), session_seconds=seconds, session_samples=samples)
        write_reports(out, summary)
    return summary
