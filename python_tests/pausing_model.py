"""A model for the CLI's interruption tests (``--model pausing_model:make``, with this folder on
PYTHONPATH): the shipped digits MLP, unchanged, unless told otherwise by the environment:

- ``RGF_TEST_PAUSE_AT=<path>:<lines>``: once the file ``path`` has at least that many lines, the
  forward pass creates ``<path>.paused`` and waits there until the process is signalled, so a
  test can interrupt the run at a known point instead of racing it.
- Under torchrun (``RANK`` set), ``path`` may be a glob (``out/results.rank-*.jsonl``): the lines
  of every match count together, and each rank pauses once, creating ``<folder of path>/paused.<RANK>``
  holding its pid (so the test can kill one chosen rank); a rank whose marker already exists
  (a restarted one) does not pause again.
- ``RGF_TEST_RAISE_RANK=<r>``: the forward pass of rank ``r`` raises a RuntimeError.
"""

import glob
import os
import time

import torch

from retrievalguard_fast.demo.digits import load_default_model


class PausingModel(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, pause_at: str, raise_rank: str):
        super().__init__()
        self.inner = inner
        self.results, self.lines = (pause_at.rsplit(":", 1) + ["0"])[:2] if pause_at else (None, "0")
        self.lines = int(self.lines)
        self.rank = os.environ.get("RANK")
        self.raises = raise_rank != "" and raise_rank == self.rank
        if self.results is None:
            self.marker = None
        elif self.rank is None:
            self.marker = self.results + ".paused"
        else:
            self.marker = os.path.join(os.path.dirname(self.results), f"paused.{self.rank}")

    def _should_pause(self) -> bool:
        if self.results is None or (self.rank is not None and os.path.exists(self.marker)):
            return False
        lines = 0
        for path in glob.glob(self.results):
            with open(path, "rb") as f:
                lines += f.read().count(b"\n")
        return lines >= self.lines

    def forward(self, x):
        if self.raises:
            raise RuntimeError(f"test failure in the model on rank {self.rank}")
        if self._should_pause():
            with open(self.marker + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(self.marker + ".tmp", self.marker)  # complete when seen
            while True:  # until SIGINT (KeyboardInterrupt here), SIGTERM or SIGKILL
                time.sleep(0.05)
        return self.inner(x)


def make() -> torch.nn.Module:
    return PausingModel(load_default_model(0.25), os.environ.get("RGF_TEST_PAUSE_AT", ""),
                        os.environ.get("RGF_TEST_RAISE_RANK", ""))
