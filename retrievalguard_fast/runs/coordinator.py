"""Who runs a run: one process (:class:`SoloCoordinator`) or the ranks of a torchrun group
(:class:`GroupCoordinator`), behind the same methods, so that the run skeleton
(:func:`~.skeleton.run_in_folder`) is written once and never asks which.

What differs is the protocol of a group (docs/design.md, "One run across ranks"): rank 0 holds
the folder's lock, checks or records run.json, merges the records of an interrupted run, embeds
the gallery first and merges the rank files at the end; the other ranks wait for each of those
steps, check that they see rank 0's folder, claim blocks of queries from the group's store and
write only their own rank file.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Callable, Iterator, List, Optional, Tuple, TypeVar

import numpy as np

from ..errors import InputError
from .distributed import Group, GroupStopped, launched
from .folder import RunFolder, differing_parameters
from .progress import Progress

T = TypeVar("T")

# The most queries one claimed block holds: large blocks early keep claims rare, but an image
# block is read into memory whole (in chunks of data.images.QUERY_CHUNK), so it is bounded.
BLOCK_MAX = 256


class SoloCoordinator:
    """A run in one process: it holds the folder and does every step itself."""

    rank: Optional[int] = None
    world = 1
    leader = True

    def device(self, device):
        return device

    def open_folder(self, out: str) -> RunFolder:
        return RunFolder(out)

    def share_gallery(self, folder: RunFolder, build: Callable[[], T]) -> T:
        return build()

    def start(self, folder: RunFolder, params: dict, resume: bool) -> List[dict]:
        """The records already in the folder (run.json checked or recorded)."""
        return folder.start(params, resume)

    def blocks(self, todo: np.ndarray, first_round_rows: int, batch_size: int) -> Iterator[np.ndarray]:
        yield todo

    def query_done(self, progress: Progress, samples: int, done_before: int) -> None:
        progress.query_done()

    def finish(self, folder: RunFolder, records: List[dict], progress: Progress, done_before: int,
               samples: int) -> Tuple[Optional[List[dict]], int]:
        """Every record of the run and the samples this session drew (None on a rank that does
        not report)."""
        return records, samples

    def session_extras(self, started_wall: float) -> dict:
        return {}


class GroupCoordinator:
    """One rank of a torchrun group (:class:`~.distributed.Group`)."""

    def __init__(self, group: Group):
        self.group = group
        self.rank, self.world, self.leader = group.rank, group.world, group.rank == 0

    def device(self, device):
        """``cuda:LOCAL_RANK`` for CUDA (one GPU per rank), as given otherwise."""
        return self.group.rank_device(device)

    def open_folder(self, out: str) -> RunFolder:
        """Rank 0 locks ``out`` and marks it; the other ranks open it unlocked (covered by rank
        0's lock) once rank 0 has, and check they see the same folder."""
        folder = RunFolder(out, rank=self.rank, world=self.world)
        try:
            if self.leader:
                self.group.mark_folder(out)
                self.group.announce("folder")
            else:
                self.group.wait_announced("folder", "rank 0 to lock --out")
                self.group.check_folder(out)
        except BaseException:
            folder.close()
            raise
        return folder

    def share_gallery(self, folder: RunFolder, build: Callable[[], T]) -> T:
        """Rank 0 builds (and caches in the folder) first; the others then build from the cache."""
        if self.leader:
            gallery = build()
            self.group.announce("gallery")
            return gallery
        self.group.wait_announced("gallery", "rank 0 to embed the gallery")
        return build()

    def start(self, folder: RunFolder, params: dict, resume: bool) -> List[dict]:
        """Rank 0 checks or records run.json and publishes its parameters; every other rank
        compares its own with them (model, data, every setting) and stops the whole group on a
        difference. No rank works before all have agreed, so a group of ranks started with other
        options or inputs writes no record."""
        if not self.leader:  # rank 0 has checked run.json and merged every earlier record into results.jsonl
            self.group.wait_announced("started", "rank 0 to check --out")
            check_same_parameters(self.rank, params, json.loads(self.group.published("parameters")))
            records = folder.read_results()
            self.group.count("parameters-checked", 1)
            return records
        # A group torchrun restarted (a rank died) continues what its earlier attempt wrote,
        # without resume; a folder some other launch wrote still needs it.
        restarted = self.group.attempt > 0 and folder.started_by() == self.group.run_id
        records = folder.start(params, resume or restarted)
        folder.mark_started_by(self.group.run_id)
        self.group.publish("parameters", json.dumps(params, sort_keys=True))
        self.group.announce("started")
        self.group.wait_counted("parameters-checked", self.world - 1, "every rank to check its parameters against rank 0's")
        return records

    def blocks(self, todo: np.ndarray, first_round_rows: int, batch_size: int) -> Iterator[np.ndarray]:
        """Blocks claimed from the group's store: at least ~4 model batches (a block's last batch
        is partly empty) and at most BLOCK_MAX queries (one image chunk's worth in memory)."""
        min_block = max(1, -(-4 * batch_size // first_round_rows))
        return self.group.claimed_blocks(todo, min(min_block, BLOCK_MAX), BLOCK_MAX)

    def query_done(self, progress: Progress, samples: int, done_before: int) -> None:
        """Count a query in the group's totals (rank 0 shows them), and stop if another rank failed."""
        queries = self.group.count("queries", 1)
        total_samples = self.group.count("samples", samples)
        if self.leader:
            progress.group_total(done_before + queries, total_samples)
        self.group.check()

    def finish(self, folder: RunFolder, records: List[dict], progress: Progress, done_before: int,
               samples: int) -> Tuple[Optional[List[dict]], int]:
        """This rank is done; rank 0 waits for the others, then merges every rank's records."""
        folder.close_results()
        self.group.finish()
        if not self.leader:
            return None, samples

        def totals():
            progress.group_total(done_before + self.group.count("queries", 0), self.group.count("samples", 0))

        self.group.wait_finished(totals)
        totals()  # the last line: every query done
        return folder.merge_rank_files(), self.group.count("samples", 0)

    def session_extras(self, started_wall: float) -> dict:
        return {"ranks": self.world, "rank_idle_fraction": self.group.idle_fraction(started_wall)}


def check_same_parameters(rank: int, ours: dict, leaders: dict) -> None:
    """Raise an InputError naming each parameter in which this rank's run (``ours``) differs from
    rank 0's, with both values: one run, one set of parameters, whatever node a rank is on."""
    differ = differing_parameters(ours, leaders)
    if differ:
        ours = json.loads(json.dumps(ours))  # the form rank 0 published (lists, not tuples)
        shown = "; ".join(f"{k} {_short(ours.get(k))} here, {_short(leaders.get(k))} on rank 0" for k in differ)
        raise InputError(f"started with other run parameters than rank 0 ({shown}); start every "
                         "rank of a run with the same options and inputs")


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    if isinstance(exc, InputError):
        return exc.for_cli().splitlines()[0]
    return text if isinstance(exc, (ValueError, TypeError)) else f"{type(exc).__name__}: {text}"


@contextlib.contextmanager
def coordinator_for_this_process(group_timeout: float) -> Iterator:
    """The coordinator of this process: a :class:`GroupCoordinator` under torchrun (its rank
    joined to the group), a :class:`SoloCoordinator` otherwise. A failure inside the block is
    published to the other ranks, which then stop instead of waiting for this one."""
    if not launched():
        yield SoloCoordinator()
        return
    group = Group.join(group_timeout)
    try:
        yield GroupCoordinator(group)
    except GroupStopped:
        raise
    except BaseException as exc:
        group.fail(one_line(exc))
        raise


def rank_prefix() -> str:
    """``"rank R: "`` under torchrun, where every rank's errors share one console."""
    return f"rank {os.environ['RANK']}: " if launched() else ""


