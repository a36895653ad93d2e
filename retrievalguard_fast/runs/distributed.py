"""One certification run across the ranks of a ``torchrun`` group (docs/design.md, "One run
across ranks").

torchrun starts the processes, rendezvouses them (c10d, across nodes too) and restarts the group
after a failure; this module adds only what a certification run needs on top, all through the
c10d key-value store torch.distributed already runs (no tensors travel between ranks):

- :func:`block_schedule` cuts the queries still to certify into blocks, the same list on every
  rank; ranks *claim* blocks in turn with the store's atomic counter (:meth:`Group.claim`), so a
  rank that drew easy queries takes the next block instead of waiting (sequential queries differ
  in cost by orders of magnitude; a static split would leave ranks idle);
- waits that cannot hang: every wait polls the store for a failure another rank published
  (:meth:`Group.fail`) and gives up after ``timeout`` seconds;
- counters of queries and samples done across ranks, for rank 0's progress line.

Results never depend on the rank: a query's noise is keyed by (seed, query index, sample index).
Without torchrun's environment (:func:`launched`) nothing here is used.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np

from ..durable import atomic_write
from ..errors import OUT, InputError

# What torchrun (and any torch.distributed launcher using env://) sets for each worker.
LAUNCH_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
POLL_SECONDS = 0.05
FOLDER_TOKEN = ".torchrun-group"  # in --out: rank 0's token for the current attempt (check_folder)


def launched() -> bool:
    """Whether this process is a rank of a torchrun group."""
    return all(k in os.environ for k in LAUNCH_ENV)


class GroupStopped(Exception):
    """Another rank of the group failed (its message is in this one), or the group timed out."""


def block_schedule(count: int, world: int, min_block: int, max_block: int) -> List[Tuple[int, int]]:
    """``[start, stop)`` ranges covering ``range(count)``: guided self-scheduling, each block a
    ``1 / (4 world)`` share of what is left, within ``[min_block, max_block]``. Large blocks first
    keep claims rare; small ones last keep the ranks' finishing times within about one small block
    of each other, so none idles long while another works. Deterministic in its arguments: every
    rank computes the same list and a claim is just a block number."""
    blocks, start = [], 0
    while start < count:
        size = min(max_block, max(min_block, -(-(count - start) // (4 * world))))
        blocks.append((start, min(count, start + size)))
        start += size
    return blocks


class Group:
    """This process's place in the torchrun group and the group's shared store."""

    def __init__(self, store, rank: int, world: int, local_rank: int, timeout: float, run_id: str = "none",
                 attempt: int = 0):
        self.store, self.rank, self.world, self.local_rank, self.timeout = store, rank, world, local_rank, timeout
        # torchrun's id of this launch (--rdzv-id; a fresh one with --standalone) and how many
        # times it has restarted the group: a restarted group continues its own run.
        self.run_id, self.attempt = run_id, attempt

    @classmethod
    def join(cls, timeout: float) -> "Group":
        """Join the group torchrun started: connect to its c10d store (``env://``: the store the
        launcher's agent serves at MASTER_ADDR:MASTER_PORT), namespaced by the run and the restart
        so counters of an attempt that failed are never read by the next one.

        No process group (gloo, NCCL) is created: ranks exchange no tensors, only a few counters,
        and a process group's start-up connects every pair of ranks, one more step that can fail
        (after a restart, gloo's full mesh was seen to dial the dead attempt's addresses)."""
        import torch.distributed as dist

        store, rank, world = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout)))
        run = os.environ.get("TORCHELASTIC_RUN_ID", "none")
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        store = dist.PrefixStore(f"retrievalguard/{run}/{attempt}/", store)
        return cls(store, rank, world, int(os.environ["LOCAL_RANK"]), timeout, run, attempt)

    def rank_device(self, device):
        """The device this rank drives: ``cuda:LOCAL_RANK`` for CUDA (one GPU per rank), as given
        otherwise."""
        import torch

        if device.type != "cuda":
            return device
        device = torch.device("cuda", self.local_rank)
        torch.cuda.set_device(device)
        return device

    # ------------------------------------------------------------------ failure

    def fail(self, message: str) -> None:
        """Tell the other ranks this one failed (first failure wins); best effort: the store may
        already be gone when the launcher is tearing the group down."""
        try:
            self.store.compare_set("failed", "", f"rank {self.rank} failed: {message}")
        except Exception:  # noqa: BLE001 - reporting a failure must not raise another
            pass

    def check(self) -> None:
        """Raise :class:`GroupStopped` if another rank has failed."""
        if self.store.check(["failed"]):
            raise GroupStopped(f"rank {self.rank} stopped: {self.store.get('failed').decode()}")

    # ------------------------------------------------------------------ waiting

    def _wait(self, what: str, ready: Callable[[], bool], on_wait: Optional[Callable[[], None]] = None) -> None:
        deadline = time.monotonic() + self.timeout
        while not ready():
            self.check()
            if on_wait is not None:
                on_wait()
            if time.monotonic() > deadline:
                raise GroupStopped(f"rank {self.rank}: gave up after {self.timeout:g} s waiting for {what} "
                                   "(raise --group-timeout if that step is slow)")
            time.sleep(POLL_SECONDS)

    def mark_folder(self, out: str) -> None:
        """Rank 0, holding ``out``'s lock: a token for this attempt, written into ``out`` and the
        store, by which the other ranks check (:meth:`check_folder`) that they see that folder."""
        token = f"{self.run_id}/{self.attempt}/{os.getpid()}/{time.time_ns()}"
        atomic_write(os.path.join(out, FOLDER_TOKEN), lambda f: f.write(token))
        self.store.set("folder-token", token)

    def check_folder(self, out: str) -> None:
        """Another rank: raise unless ``out`` holds rank 0's token. A node that sees another folder
        under the same name (``--out`` not on a shared file system) would otherwise certify all of
        the run's queries again and write results that no merge reads."""
        try:
            with open(os.path.join(out, FOLDER_TOKEN)) as f:
                seen = f.read()
        except OSError:
            seen = None
        if seen != self.store.get("folder-token").decode():
            raise InputError(f"{{out}} {out}: this rank does not see the folder rank 0 locked (on several machines "
                             "{out} must be on a file system they share)", out=OUT)

    def announce(self, name: str) -> None:
        """Rank 0: ``name`` is done (e.g. the folder is locked and checked)."""
        self.store.set(f"announce/{name}", "1")

    def wait_announced(self, name: str, what: str) -> None:
        self._wait(what, lambda: self.store.check([f"announce/{name}"]))

    def publish(self, name: str, text: str) -> None:
        """Rank 0: a value every rank can read (:meth:`published`) once it is announced."""
        self.store.set(f"value/{name}", text)

    def published(self, name: str) -> str:
        return self.store.get(f"value/{name}").decode()

    def wait_counted(self, name: str, target: int, what: str) -> None:
        """Wait until the group's counter ``name`` reaches ``target``."""
        self._wait(what, lambda: self.count(name, 0) >= target)

    def finish(self) -> None:
        """This rank has certified its last block (and when, for :meth:`idle_fraction`)."""
        self.store.set(f"finished-at/{self.rank}", repr(time.time()))
        self.store.add("finished", 1)

    def idle_fraction(self, started: float) -> float:
        """Rank 0, once all finished: the largest share of the run's certifying time (from
        ``started``, a ``time.time()``, to the last rank's finish) that a rank spent done while
        another still worked; the measure of the balancing. Reads wall clocks of every rank: across
        machines it is as good as their clock synchronisation."""
        ends = [float(self.store.get(f"finished-at/{r}").decode()) for r in range(self.world)]
        span = max(ends) - started
        return max(max(ends) - e for e in ends) / span if span > 0 else 0.0

    def wait_finished(self, on_wait: Optional[Callable[[], None]] = None) -> None:
        self._wait("the other ranks to finish their queries", lambda: self.store.add("finished", 0) >= self.world,
                   on_wait)

    # ------------------------------------------------------------------ work

    def claimed_blocks(self, todo: np.ndarray, min_block: int, max_block: int) -> Iterator[np.ndarray]:
        """The blocks of ``todo`` this rank claims, one at a time, until none is left."""
        blocks = block_schedule(len(todo), self.world, min_block, max_block)
        while True:
            self.check()
            claim = self.store.add("next-block", 1) - 1  # atomic: each block goes to exactly one rank
            if claim >= len(blocks):
                return
            start, stop = blocks[claim]
            yield todo[start:stop]

    def count(self, name: str, amount: int) -> int:
        """Add ``amount`` to the group's counter ``name``; its new value."""
        return int(self.store.add(f"count/{name}", amount))
