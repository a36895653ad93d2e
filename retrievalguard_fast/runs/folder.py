"""A certification run kept in a folder: certify into it, stop at any moment, resume it.

The folder holds

- ``run.json``: the parameters that determine the per-query results (a resume must match them);
- ``results.jsonl``: one JSON record per certified query, appended, flushed and fsync'ed as each
  query finishes, so a kill (even SIGKILL) loses at most the query in flight; a torn last line
  is cut off on the next open;
- ``summary.json`` / ``summary.csv`` / ``certified_recall.png``: the reports (:mod:`~..report`);
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
- ``gallery-<key>.npz``: the gallery's embeddings by the clean model (:mod:`~.gallery`).

This module is storage only: the lock, the parameters, the records (durable appends, repair of a
torn line, the merge of rank files). What runs in the folder is :mod:`~.skeleton`'s.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import socket
import time
from typing import List, Optional

from ..durable import DurableAppender, atomic_write
from ..errors import CERTIFIED, OUT, RESUME, InputError, Term
from ..smoothing.stats import MCDIARMID

RUN = "run.json"
RESULTS = "results.jsonl"
RANK_RESULTS = "results.rank-{rank}.jsonl"
LOCK = ".lock"
STARTED_BY = ".torchrun-run"
#: run.json's key for the version of the records' format; a run.json without it is of format 1.
FORMAT_KEY = "record_format"


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
        self._appender = DurableAppender(self.append_path)
        self._lock = None
        try:
            os.makedirs(out, exist_ok=True)
            if rank in (None, 0):
                self._lock = open(os.path.join(out, LOCK), "a+")
        except OSError as exc:
            raise InputError(f"{{out}} {out}: cannot use this folder ({exc.strerror})", out=OUT) from None
        if self._lock is None:
            return
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "another process"
            self._lock.close()
            raise InputError(f"{{out}} {out} is in use by another run ({holder}); wait for it to end, "
                             "or choose another {out}", out=OUT) from None
        self._lock.seek(0)
        self._lock.truncate()
        group = "" if rank is None else f"rank 0 of a {world}-rank torchrun group, "
        self._lock.write(f"{group}pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._lock.flush()

    def close(self) -> None:
        self._appender.close()
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
            # folder resumes with soft_bound mcdiarmid and is refused (naming soft_bound) otherwise.
            previous.setdefault("soft_bound", MCDIARMID)
            theirs, ours = previous.get(FORMAT_KEY, 1), params.get(FORMAT_KEY, 1)
            if theirs != ours:
                raise InputError(f"{{out}} {self.out} holds records of format {theirs}, this version writes format "
                                 f"{ours}; choose a new {{out}} (or use the version that wrote them)", out=OUT)
            previous.setdefault(FORMAT_KEY, 1)
            refuse_other_parameters(self.out, "results of a run", previous, params)
            if not resume:
                raise InputError(f"{{out}} {self.out} already holds results of this run; pass {{resume}} to continue "
                                 "it or choose a new {out}", out=OUT, resume=RESUME)
        elif has_results:
            raise InputError(f"{{out}} {self.out} holds a results.jsonl without run.json; choose a new {{out}}",
                             out=OUT)
        else:  # nothing certified there yet (a fresh folder, or a run that stopped before its first query)
            atomic_write(self.run_path, lambda f: json.dump(params, f, indent=2))
        return self.merge_rank_files()

    def _read_params(self) -> dict:
        try:
            with open(self.run_path) as f:
                params = json.load(f)
        except (OSError, ValueError) as exc:
            raise InputError(f"{self.run_path} is damaged ({exc}); it records the parameters of the results in "
                             f"{self.results_path}, which cannot be resumed without it: choose a new {{out}}, or "
                             "delete the folder to start over", out=OUT) from None
        if not isinstance(params, dict):
            raise InputError(f"{self.run_path} is damaged (not a JSON object); choose a new {{out}}, or delete the "
                             "folder to start over", out=OUT)
        return params

    def started_by(self) -> Optional[str]:
        """The torchrun launch (run id) that last started certifying into this folder, if any."""
        try:
            with open(os.path.join(self.out, STARTED_BY)) as f:
                return f.read().strip()
        except OSError:
            return None

    def mark_started_by(self, run_id: str) -> None:
        atomic_write(os.path.join(self.out, STARTED_BY), lambda f: f.write(run_id + "\n"))

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
        atomic_write(self.results_path, lambda f: f.writelines(json.dumps(r) + "\n" for r in records))
        for path in rank_files:
            os.remove(path)
        return records

    def close_results(self) -> None:
        """Close the file this process appends to (its records are already durable); the lock is kept."""
        self._appender.close()

    def append(self, cert) -> dict:
        """Write one record durably (flush + fsync) before the next query's: a
        :class:`QueryCertificate` or any JSON-ready dict with an ``index`` (the attack's)."""
        record = cert if isinstance(cert, dict) else cert.to_dict()
        self._appender.write_line(json.dumps(record))
        return record


def differing_parameters(a: dict, b: dict) -> List[str]:
    """The keys, sorted, whose values differ between two parameter records, compared in their JSON
    form (a tuple equals the list it is written as)."""
    a, b = json.loads(json.dumps(a)), json.loads(json.dumps(b))
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def refuse_other_parameters(out: str, holds: str, recorded: dict, params: dict) -> None:
    """Raise the InputError naming ``--out`` and each differing key when the parameters a folder
    recorded are not this run's: ``holds`` says what the folder holds ("results of a run")."""
    differ = differing_parameters(recorded, params)
    if differ:
        raise InputError(f"{{out}} {out} holds {holds} with other parameters ({', '.join(differ)} differ); choose a "
                         "new {out} or delete that folder", out=OUT)


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
                                 "line; the file was edited or damaged, choose a new {out}", out=OUT) from None
            break
        pos = good_end = nl + 1
    if repair and good_end < len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return records


def read_run(folder: str, what: Term = CERTIFIED) -> tuple:
    """The parameters and complete records of a run folder, read only (no lock is taken: a run
    still writing there only means fewer records; a torn last line is skipped, not cut). Rank files
    of a torchrun group that has not merged them yet are read too. ``what``: the setting that named
    the folder, for the errors."""
    run_path, results_path = os.path.join(folder, RUN), os.path.join(folder, RESULTS)
    rank_files = _rank_files(folder)
    if not os.path.isfile(run_path) or not (os.path.isfile(results_path) or rank_files):
        raise InputError(f"{{what}} {folder}: expected a results folder of certify (with {RUN} and {RESULTS})", what=what)
    try:
        with open(run_path) as f:
            params = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"{{what}} {folder}: unreadable run ({exc.__class__.__name__}: {exc})", what=what) from None
    by_index = {}
    for path in [results_path, *rank_files]:
        for r in _read_records(path, repair=False):
            if not isinstance(r, dict) or "index" not in r:
                raise InputError(f"{{what}} {folder}: {os.path.basename(path)} is not what certify writes", what=what)
            by_index.setdefault(int(r["index"]), r)
    if not isinstance(params, dict):
        raise InputError(f"{{what}} {folder}: {RUN} is not what certify writes", what=what)
    return params, [by_index[i] for i in sorted(by_index)]
