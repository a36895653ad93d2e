"""The one skeleton of a run kept in a folder (certify and attack alike): open or borrow the
folder, check or record run.json, find what is left to do, work through it with progress,
append each record durably as it finishes, turn running out of memory into one line and Ctrl-C
into :class:`RunInterrupted` (everything so far saved), then summarise every record of the run
and write the reports. Who does which step (one process or the ranks of a torchrun group) is the
coordinator's business (:mod:`~.coordinator`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np

from ..errors import RESUME, Term, Worded, out_of_memory_is_input_error
from .coordinator import SoloCoordinator
from .folder import RunFolder
from .progress import Progress


class RunInterrupted(Worded, KeyboardInterrupt):
    """A run stopped by Ctrl-C (SIGINT); every record finished before is saved."""


@dataclass(frozen=True)
class Session:
    """What this session (this invocation) did: queries finished, wall seconds, samples drawn."""

    queries: int
    seconds: float
    samples: int


#: ``work(positions, progress)``: the records of the queries at ``positions`` (of the run's
#: inputs), each with the samples it drew, yielded as they finish.
Work = Callable[[np.ndarray, Progress], Iterator[Tuple[dict, int]]]


@dataclass(frozen=True)
class OutOfMemoryHint:
    """What a run was doing in its batches and what to lower when memory runs out."""

    stage: str
    lower: str
    terms: Dict[str, Term]


def run_in_folder(out: Union[str, RunFolder], params: dict, indices: np.ndarray, work: Work, *,
                  summarize: Callable[[List[dict], Session], dict], write_reports: Callable[[str, dict], None],
                  resume: bool, quiet: bool, memory: OutOfMemoryHint, coordinator=None,
                  first_round_rows: int = 1, batch_size: int = 1) -> Optional[dict]:
    """Run ``work`` over every query of ``indices`` (each query's index in its data set, which
    names its record) not yet recorded in the folder ``out`` (a path, or a :class:`RunFolder` the
    caller holds and closes) and return the summary of every record of the run, also written there
    by ``write_reports``. ``first_round_rows`` and ``batch_size`` size the blocks a group claims.
    Returns None on a torchrun rank that does not report (all but rank 0)."""
    coordinator = SoloCoordinator() if coordinator is None else coordinator
    folder = coordinator.open_folder(out) if isinstance(out, str) else out
    m = len(indices)
    try:
        records = coordinator.start(folder, params, resume)
        done = {int(r["index"]) for r in records}
        todo = np.array([k for k in range(m) if int(indices[k]) not in done], dtype=np.int64)
        progress = Progress(m, len(done), quiet=quiet or not coordinator.leader)
        started, started_wall, samples, finished = time.perf_counter(), time.time(), 0, 0
        try:
            with out_of_memory_is_input_error(memory.stage, memory.lower, **memory.terms):
                for block in coordinator.blocks(todo, first_round_rows, batch_size):
                    for record, drawn in work(block, progress):
                        records.append(folder.append(record))
                        samples += drawn
                        finished += 1
                        coordinator.query_done(progress, drawn, len(done))
        except KeyboardInterrupt:
            progress.close()
            raise RunInterrupted(f"interrupted: {len(done) + finished} of {m} queries are saved in {folder.append_path}; "
                                 "rerun with {resume} to continue", resume=RESUME) from None
        records, samples = coordinator.finish(folder, records, progress, len(done), samples)
        if records is None:
            return None
        progress.close()
        session = Session(queries=len(todo), seconds=time.perf_counter() - started, samples=samples)
        summary = summarize(sorted(records, key=lambda r: int(r["index"])), session)
        summary["this_session"].update(coordinator.session_extras(started_wall))
        write_reports(folder.out, summary)
    finally:
        if folder is not out:
            folder.close()
    return summary


def query_chunks(queries, positions: np.ndarray) -> Iterator[Tuple[np.ndarray, object]]:
    """``(positions, images)`` of the queries at ``positions``: one chunk of an array, or the
    chunks of a source read as it goes (anything with ``iter_chunks(positions)``, such as
    :class:`~..data.ImageQueries`)."""
    if hasattr(queries, "iter_chunks"):
        yield from queries.iter_chunks(positions)
        return
    import torch

    if len(positions):
        yield positions, torch.as_tensor(queries[positions] if isinstance(queries, np.ndarray)
                                         else queries[torch.as_tensor(positions)])


def check_indices(op: str, indices, m: int) -> np.ndarray:
    """Each query's index in its data set (default 0..m-1): m distinct integers."""
    indices = np.arange(m, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64)
    if indices.shape != (m,) or len(np.unique(indices)) != m:
        raise ValueError(f"{op}: indices must be {m} distinct integers (one per query), got shape {indices.shape}")
    return indices
