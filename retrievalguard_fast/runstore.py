"""A certification run kept in a folder: certify into it, stop at any moment, resume it.

The folder holds

- ``run.json``: the parameters that determine the per-query results (a resume must match them);
- ``results.jsonl``: one JSON record per certified query, appended, flushed and fsync'ed as each
  query finishes, so a kill (even SIGKILL) loses at most the query in flight; a torn last line
  is cut off on the next open;
- ``summary.json`` / ``summary.csv`` / ``certified_recall.png``: the reports (:mod:`~.report`);
- ``results.rank-<r>.jsonl``: in a run across the ranks of a torchrun group
  (:mod:`~.distributed`), rank ``r``'s records, written the same way; merged into results.jsonl
  (sorted by index) when every rank is done, and on the next start after an interruption, so a
  resume with any number of ranks (or none) sees every record once;
- ``.torchrun-run``: the id of the torchrun launch that last certified here, so that the group
  torchrun restarts after a failure continues the run without ``--resume``; ``.torchrun-group``:
  rank 0's token for the current attempt, by which the other ranks check that they see this folder
  (:meth:`~.distributed.Group.check_folder`);
- ``.lock``: held (``flock``) by the run using the folder (by rank 0 for a group), released when
  it ends or dies; a second run into the same folder is refused before it changes anything;
- ``gallery-<key>.npz``: the gallery's embeddings by the clean model, when the run embedded gallery
  images, keyed by everything they depend on (model, data, preprocessing, batch size, device
  type), so a resume reuses them and a change of any of those computes new ones.

:func:`certify_to_folder` is the library entry point; the CLI calls it.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import os
import socket
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .certify import QueryCertificate
from .errors import InputError, out_of_memory_is_input_error
from .progress import Progress
from .report import run_summary, write_reports
from .sequential import SEQUENTIAL
from .stats import BENNETT, MCDIARMID

RUN = "run.json"
RESULTS = "results.jsonl"
RANK_RESULTS = "results.rank-{rank}.jsonl"
LOCK = ".lock"
STARTED_BY = ".torchrun-run"
DEFAULT_RADII = (0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT); everything certified before is saved."""


class RunFolder:
    """Use of one run's folder: its lock, parameters and results.

    ``rank``: None for a run in one process; a torchrun rank otherwise. Rank 0 (and a single
    process) holds the folder's lock and owns run.json and results.jsonl; the other ranks of the
    group are covered by rank 0's lock (they never take it: it would refuse them) and write only
    their own ``results.rank-<r>.jsonl``, after rank 0 has checked the folder."""

    def __init__(self, out: str, rank: Optional[int] = None, world: int = 1):
        self.out, self.rank = out, rank
        self.run_path = os.path.join(out, RUN)
        self.results_path = os.path.join(out, RESULTS)
        self.append_path = self.results_path if rank is None else os.path.join(out, RANK_RESULTS.format(rank=rank))
        self._out_file = None
        self._lock = None
        try:
            os.makedirs(out, exist_ok=True)
            if rank in (None, 0):
                self._lock = open(os.path.join(out, LOCK), "a+")
        except OSError as exc:
            raise InputError(f"--out {out}: cannot use this folder ({exc.strerror})") from None
        if self._lock is None:
            return
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
        group = "" if rank is None else f"rank 0 of a {world}-rank torchrun group, "
        self._lock.write(f"{group}pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._lock.flush()

    def close(self) -> None:
        if self._out_file is not None:
            self._out_file.close()
            self._out_file = None
        if self._lock is not None and not self._lock.closed:
            self._lock.close()  # releases the flock

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ parameters and results

    def start(self, params: dict, resume: bool) -> List[dict]:
        """Check (or record) the run's parameters; the records already certified here (the rank
        files of an interrupted group run merged into results.jsonl first). The lock holder's."""
        has_results = any(os.path.getsize(p) > 0 for p in [self.results_path, *_rank_files(self.out)]
                          if os.path.exists(p))
        if os.path.exists(self.run_path) and has_results:
            previous = self._read_params()
            # Runs recorded before the soft bound became a parameter all used McDiarmid's: such a
            # folder resumes with --soft-bound mcdiarmid and is refused (naming soft_bound) otherwise.
            previous.setdefault("soft_bound", MCDIARMID)
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
        return self.merge_rank_files()

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

    def started_by(self) -> Optional[str]:
        """The torchrun launch (run id) that last started certifying into this folder, if any."""
        try:
            with open(os.path.join(self.out, STARTED_BY)) as f:
                return f.read().strip()
        except OSError:
            return None

    def mark_started_by(self, run_id: str) -> None:
        with open(os.path.join(self.out, STARTED_BY + ".tmp"), "w") as f:
            f.write(run_id + "\n")
        os.replace(os.path.join(self.out, STARTED_BY + ".tmp"), os.path.join(self.out, STARTED_BY))

    def read_results(self) -> List[dict]:
        """The records of results.jsonl, for the ranks that do not hold the lock: rank 0 has
        merged and repaired it before they read it, and nobody writes it while they run."""
        return _read_records(self.results_path, repair=False)

    def merge_rank_files(self) -> List[dict]:
        """Every record in results.jsonl and the rank files, each index once, as results.jsonl;
        the rank files are then removed. The lock holder's, while no rank writes.

        Crash-safe at every step: the merged file replaces results.jsonl atomically (written and
        fsync'ed beside it first), and a rank file is removed only after that, so a kill in
        between leaves records in both places, which the next merge counts once (a query's record
        is the same wherever it was written)."""
        records = _read_records(self.results_path, repair=True)
        rank_files = _rank_files(self.out)
        if not rank_files:
            return records  # a run in one process: results.jsonl as it was appended
        seen = {int(r["index"]) for r in records}
        for path in rank_files:
            for r in _read_records(path, repair=True):
                if int(r["index"]) not in seen:
                    seen.add(int(r["index"]))
                    records.append(r)
        records.sort(key=lambda r: int(r["index"]))
        tmp = self.results_path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.results_path)
        _fsync_dir(self.out)
        for path in rank_files:
            os.remove(path)
        return records

    def cached_gallery(self, key: Dict[str, Any], compute: Callable[[], np.ndarray]) -> Tuple[np.ndarray, bool]:
        """The gallery embeddings stored under ``key`` in this folder, or ``compute()``'s, stored
        (atomically) for the next run; and whether they came from the cache. Files of other keys
        are left alone: another run's cache is never overwritten."""
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        path = os.path.join(self.out, f"gallery-{digest[:16]}.npz")
        if os.path.exists(path):
            try:
                with np.load(path, allow_pickle=False) as data:
                    if str(data["key"]) == json.dumps(key, sort_keys=True):
                        return data["embeddings"], True
            except Exception:  # noqa: BLE001 - a damaged cache is recomputed, never trusted
                pass
        embeddings = np.asarray(compute(), dtype=np.float32)
        with open(path + ".tmp", "wb") as f:
            np.savez(f, key=np.array(json.dumps(key, sort_keys=True)), embeddings=embeddings)
        os.replace(path + ".tmp", path)
        return embeddings, False

    def close_results(self) -> None:
        """Close the file this process appends to (its records are already durable)."""
        if self._out_file is not None:
            self._out_file.close()
            self._out_file = None

    def append(self, cert) -> dict:
        """Write one record durably (flush + fsync) before the next query's: a
        :class:`QueryCertificate` or any JSON-ready dict with an ``index`` (the attack's)."""
        if self._out_file is None:
            self._out_file = open(self.append_path, "a")
        record = cert if isinstance(cert, dict) else cert.to_dict()
        self._out_file.write(json.dumps(record) + "\n")
        self._out_file.flush()
        os.fsync(self._out_file.fileno())
        return record


def _rank_files(out: str) -> List[str]:
    """The per-rank results files of a torchrun group in ``out`` (not merged yet)."""
    return sorted(glob.glob(os.path.join(glob.escape(out), RANK_RESULTS.format(rank="*"))))


def _read_records(path: str, repair: bool) -> List[dict]:
    """Complete records of a results file; a torn last line (from a kill) is ignored, and with
    ``repair`` cut off the file."""
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
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
                raise InputError(f"{path}: line {len(records) + 1} is corrupt and is not the last "
                                 "line; the file was edited or damaged, start a new --out") from None
            break
        pos = good_end = nl + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def _fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (POSIX: the directory entry is data of the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_run(folder: str, what: str) -> tuple:
    """The parameters and complete records of a run folder, read only (no lock is taken: a run
    still writing there only means fewer records; a torn last line is skipped, not cut). Rank files
    of a torchrun group that has not merged them yet are read too."""
    run_path, results_path = os.path.join(folder, RUN), os.path.join(folder, RESULTS)
    rank_files = _rank_files(folder)
    if not os.path.isfile(run_path) or not (os.path.isfile(results_path) or rank_files):
        raise InputError(f"{what} {folder}: expected a results folder of certify (with {RUN} and {RESULTS})")
    try:
        with open(run_path) as f:
            params = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"{what} {folder}: unreadable run ({exc.__class__.__name__}: {exc})") from None
    by_index = {}
    for path in [results_path, *rank_files]:
        for r in _read_records(path, repair=False):
            if not isinstance(r, dict) or "index" not in r:
                raise InputError(f"{what} {folder}: {os.path.basename(path)} is not what certify writes")
            by_index.setdefault(int(r["index"]), r)
    if not isinstance(params, dict):
        raise InputError(f"{what} {folder}: {RUN} is not what certify writes")
    return params, [by_index[i] for i in sorted(by_index)]


def run_parameters(retriever, *, num_queries: int, n0: int, n: int, alpha: float, ks: Sequence[int], mode: str,
                   radii: Sequence[float], first_checkpoint: int, identity: Dict[str, Any],
                   soft_bound: str = BENNETT) -> dict:
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
        "soft_bound": soft_bound,
        "model_stage": retriever.model_stage,
    }
    if mode == SEQUENTIAL:  # the stopping rule depends on the radii and the schedule
        params["radii"] = sorted(set(float(r) for r in radii))
        params["first_checkpoint"] = first_checkpoint
    return params


def query_chunks(queries: Any, positions: np.ndarray) -> Iterator[Tuple[np.ndarray, Any]]:
    """``(positions, images)`` of the queries still to certify: one chunk of an array, or the
    chunks of a source read as it goes (anything with ``iter_chunks(positions)``, such as
    :class:`~.datasets.ImageQueries`)."""
    if hasattr(queries, "iter_chunks"):
        yield from queries.iter_chunks(positions)
        return
    import torch

    if len(positions):
        yield positions, torch.as_tensor(queries[positions] if isinstance(queries, np.ndarray)
                                         else queries[torch.as_tensor(positions)])


def certify_to_folder(out: Union[str, RunFolder], retriever, queries: Any, labels: Any, *, identity: Dict[str, Any],
                      exclude: Optional[np.ndarray] = None, indices: Optional[Sequence[int]] = None, n0: int = 100,
                      n: int = 10_000, alpha: float = 0.001, ks: Sequence[int] = (1,), mode: str = SEQUENTIAL,
                      radii: Sequence[float] = DEFAULT_RADII, first_checkpoint: int = 1000, soft_bound: str = BENNETT,
                      resume: bool = False, quiet: bool = False, group=None) -> Optional[dict]:
    """Certify ``queries`` (M, *input_shape) with ``retriever`` into the folder ``out`` and
    return the run's summary (also written there as summary.json, summary.csv and a plot).

    ``queries`` is an array or tensor, or a source read in chunks as they are certified
    (an object with ``__len__`` and ``iter_chunks(positions)`` yielding ``(positions, images)``,
    e.g. :class:`~.datasets.ImageQueries`), so that only a chunk is in memory.
    ``indices``: each query's index in its data set (default 0..M-1): its noise stream and the
    ``index`` of its record, so a query's result does not depend on which others are selected.
    ``out``: a folder name, or a :class:`RunFolder` the caller already holds (and closes).

    Query ``i`` uses noise stream ``indices[i]``. With ``resume=True`` a folder holding part of the
    same run (same parameters and ``identity``) is continued: its certified queries are kept, the
    others certified, and the result is identical to an uninterrupted run. Raises
    :class:`~.errors.InputError` for a folder in use, of another run, or damaged, and for
    running out of memory; :class:`RunInterrupted` on Ctrl-C (results so far are kept).
    ``mode``: "sequential" (stop each query once every radius in ``radii`` is decided) or
    "fixed-n"; ``radii`` are also the radii of the summary table. ``soft_bound``: "bennett"
    (default) or "mcdiarmid", the bound behind the soft radii (recorded in run.json).

    ``group``: a :class:`~.distributed.Group` when this process is one rank of a torchrun run
    (``out`` then a :class:`RunFolder` of that rank). Every rank calls this with the same
    arguments; rank 0 checks the folder and merges the results of an interrupted run, all ranks
    claim blocks of the remaining queries, rank 0 merges the rank files and writes the reports
    once all are done. Rank 0 returns the summary, the other ranks None. The records are the
    same as one process's, whatever the number of ranks.
    """
    if not hasattr(queries, "iter_chunks") and not hasattr(queries, "shape"):
        queries = np.asarray(queries)
    labels = np.asarray(labels, dtype=np.int64)
    m = int(len(queries))
    indices = np.arange(m, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if indices.shape != (m,) or len(np.unique(indices)) != m:
        raise ValueError(f"certify_to_folder: indices must be {m} distinct integers (one per query), got shape {indices.shape}")
    folder = RunFolder(out) if isinstance(out, str) else out
    leader = group is None or group.rank == 0
    try:
        params = run_parameters(retriever, num_queries=m, n0=n0, n=n, alpha=alpha, ks=ks, mode=mode, radii=radii,
                                first_checkpoint=first_checkpoint, identity=identity, soft_bound=soft_bound)
        if leader:
            # A group torchrun restarted (a rank died) continues what its earlier attempt wrote,
            # without --resume; a folder some other launch wrote still needs --resume.
            restarted = group is not None and group.attempt > 0 and folder.started_by() == group.run_id
            records = folder.start(params, resume or restarted)
            if group is not None:
                folder.mark_started_by(group.run_id)
                group.announce("started")
        else:  # rank 0 has checked run.json and merged every earlier record into results.jsonl
            group.wait_announced("started", "rank 0 to check --out")
            records = folder.read_results()
        done = {int(r["index"]) for r in records}
        todo = np.array([k for k in range(m) if int(indices[k]) not in done], dtype=np.int64)
        progress = Progress(m, len(done), quiet=quiet or not leader)
        if group is None:
            blocks: Iterator[np.ndarray] = iter([todo])
        else:
            # Blocks of at least ~4 model batches (a block's last batch is partly empty) and at
            # most _BLOCK_MAX queries (one image chunk's worth in memory).
            per_query = n0 + (n if mode != SEQUENTIAL else min(n, first_checkpoint))
            min_block = max(1, -(-4 * retriever.batch_size // per_query))
            blocks = group.claimed_blocks(todo, min(min_block, _BLOCK_MAX), _BLOCK_MAX)
        started, started_wall, samples, certified = time.perf_counter(), time.time(), 0, 0
        try:
            with out_of_memory_is_input_error("certifying queries in noisy batches of batch_size rows",
                                              "batch_size (--batch-size)"):
                for block in blocks:
                    for positions, xt in query_chunks(queries, block):
                        for cert in retriever.iter_certify(
                                xt, labels[positions], exclude=None if exclude is None else np.asarray(exclude)[positions],
                                indices=indices[positions], n0=n0, n=n, alpha=alpha, ks=ks,
                                sequential=mode == SEQUENTIAL, radii=radii, first_checkpoint=min(first_checkpoint, n),
                                soft_bound=soft_bound, on_batch=progress.samples):
                            record = folder.append(cert)
                            if group is None:
                                records.append(record)
                            samples += cert.samples
                            certified += 1
                            if group is None:
                                progress.query_done()
                            else:
                                _group_query_done(group, cert.samples, progress, len(done))
        except KeyboardInterrupt:
            progress.close()
            raise RunInterrupted(f"interrupted: {len(done) + certified} of {m} queries are saved in {folder.append_path}; "
                                 "rerun with --resume to continue") from None
        if group is not None:
            folder.close_results()
            group.finish()
            if not leader:
                return None
            def totals():
                progress.group_total(len(done) + group.count("queries", 0), group.count("samples", 0))

            group.wait_finished(totals)
            totals()  # the last line: every query done
            samples = group.count("samples", 0)
            idle = group.idle_fraction(started_wall)
            records = folder.merge_rank_files()
        progress.close()
        seconds = time.perf_counter() - started
        certs = [QueryCertificate.from_dict(r) for r in sorted(records, key=lambda r: r["index"])]
        summary = run_summary(certs, params, sorted(set(float(r) for r in radii)), device=retriever.device,
                              session_queries=len(todo), session_seconds=seconds, session_samples=samples)
        if group is not None:
            summary["this_session"]["ranks"] = group.world
            summary["this_session"]["rank_idle_fraction"] = idle
        write_reports(folder.out, summary)
    finally:
        if folder is not out:
            folder.close()
    return summary


# The most queries one claimed block holds: large blocks early keep claims rare, but an image
# block is read into memory whole (in chunks of datasets.QUERY_CHUNK), so it is bounded.
_BLOCK_MAX = 256


def _group_query_done(group, samples: int, progress: Progress, done_before: int) -> None:
    """Count a query in the group's totals (rank 0 shows them), and stop if another rank failed."""
    queries = group.count("queries", 1)
    total_samples = group.count("samples", samples)
    if group.rank == 0:
        progress.group_total(done_before + queries, total_samples)
    group.check()
