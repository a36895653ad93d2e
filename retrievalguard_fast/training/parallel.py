"""Data parallelism for training under torchrun (the launcher certify uses), or one process.

A metric loss is not a sum over images (its miner compares every pair of a batch), so the ranks
do not split a batch: at step ``s`` rank ``r`` takes the whole batch ``s * world + r`` of the
epoch's list (the same list on every rank, :func:`~.sampler.epoch_batches`), the gradients are
averaged over the ranks that had a batch (an all-reduce, gloo on the CPU, NCCL on CUDA), and every
rank applies the same update, so the weights stay identical across ranks after every step. An
epoch still visits every image once; a step covers ``world`` batches.
"""

from __future__ import annotations

import hashlib
import os
import sys
from datetime import timedelta
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..runs.distributed import launched

#: Test hook: each rank appends a digest of its weights after every step to ``<value>.rank<r>``.
STEP_DIGESTS = "RGF_TEST_TRAIN_STEP_DIGESTS"


def state_digest(modules) -> str:
    h = hashlib.sha256()
    for m in modules:
        for name, p in m.state_dict().items():
            h.update(name.encode() + p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class DataParallel:
    """This process's place in the training group: rank 0 (the leader) writes the folder."""

    def __init__(self, rank: int = 0, world: int = 1, dist=None):
        self.rank, self.world, self.dist, self.leader = rank, world, dist, rank == 0

    @classmethod
    def for_this_process(cls, device: Optional[torch.device] = None, timeout: float = 1800.0) -> "DataParallel":
        if not launched():
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
        return cls(dist.get_rank(), dist.get_world_size(), dist)

    def barrier(self) -> None:
        if self.dist is not None:
            self.dist.barrier()

    def steps(self, batches: Sequence[np.ndarray], data, *, quiet: bool, desc: str
              ) -> Iterator[Tuple[Optional[np.ndarray], Optional[torch.Tensor]]]:
        """``(indices, images)`` of this rank's batch at each step of the epoch; ``(None, None)`` at
        a last step without one (the rank still joins the all-reduce)."""
        count = -(-len(batches) // self.world)
        mine: List[np.ndarray] = [batches[s * self.world + self.rank] for s in range(count)
                                  if s * self.world + self.rank < len(batches)]
        images = data.batches(mine)
        bar = None
        if self.leader and not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=count, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr, leave=False)
        for s in range(count):
            if s < len(mine):
                yield mine[s], next(images)
            else:
                yield None, None
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()

    def average_gradients(self, modules, had_batch: bool) -> None:
        """Every rank's gradients -> their mean over the ranks that had a batch."""
        if self.dist is None:
            return
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads] + [torch.ones(1, device=grads[0].device) * float(had_batch)])
        self.dist.all_reduce(flat)
        count = max(float(flat[-1]), 1.0)
        offset = 0
        for p, g in zip(params, grads):
            p.grad = (flat[offset:offset + g.numel()] / count).reshape(g.shape).clone()
            offset += g.numel()

    def leader_decides(self, check) -> None:
        """Run ``check()`` on rank 0 (the folder's checks) and raise its InputError on every rank,
        so no rank waits for a leader that has stopped."""
        from ..errors import InputError

        message = None
        if self.leader:
            try:
                check()
            except InputError as exc:
                if self.dist is None:
                    raise
                message = exc
        if self.dist is not None:
            shared = [message.for_cli() if message is not None else None]
            self.dist.broadcast_object_list(shared, src=0)
            if message is not None:
                raise message
            if shared[0] is not None:
                raise InputError(f"rank 0 stopped the run: {shared[0]}")

    def check_same_parameters(self, params: dict) -> None:
        """One run, one record: every rank's parameters (options, data and backbone identity) must
        be rank 0's, which train.json records. A rank that differs stops every rank, before any
        step, with one line naming each parameter (its own with both values)."""
        if self.dist is None:
            return
        from ..errors import InputError
        from ..runs.coordinator import check_same_parameters
        from ..runs.folder import differing_parameters

        gathered: List[Optional[dict]] = [None] * self.world
        self.dist.all_gather_object(gathered, params)
        check_same_parameters(self.rank, gathered[self.rank], gathered[0])  # this rank's: with both values
        for rank in range(1, self.world):
            differ = differing_parameters(gathered[rank], gathered[0])
            if differ:
                raise InputError(f"rank {rank} was started with other run parameters than rank 0 ({', '.join(differ)} "
                                 "differ); start every rank of a run with the same options and inputs")

    def after_step(self, modules) -> None:
        """The test hook :data:`STEP_DIGESTS`: this rank's weights after the step."""
        path = os.environ.get(STEP_DIGESTS)
        if path:
            with open(f"{path}.rank{self.rank}", "a") as f:
                f.write(state_digest(modules) + "\n")

    def sum(self, values: np.ndarray) -> np.ndarray:
        if self.dist is None:
            return values
        t = torch.as_tensor(values, dtype=torch.float64)
        self.dist.all_reduce(t)
        return t.numpy()
