"""A model for the CLI's interruption tests (``--model pausing_model:make``, with this folder on
PYTHONPATH): the shipped digits MLP, unchanged, unless ``RGF_TEST_PAUSE_AT`` is set to
``<path of results.jsonl>:<lines>``. Then, once that file has at least that many lines, the
forward pass creates ``<path>.paused`` and waits there until the process is signalled, so a
test can interrupt the run at a known point instead of racing it."""

import os
import time

import torch

from retrievalguard_fast.digits import load_default_model


class PausingModel(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module, pause_at: str):
        super().__init__()
        self.inner = inner
        self.results, self.lines = (pause_at.rsplit(":", 1) + ["0"])[:2] if pause_at else (None, "0")
        self.lines = int(self.lines)

    def _should_pause(self) -> bool:
        if self.results is None or not os.path.exists(self.results):
            return False
        with open(self.results, "rb") as f:
            return f.read().count(b"\n") >= self.lines

    def forward(self, x):
        if self._should_pause():
            open(self.results + ".paused", "w").close()
            while True:  # until SIGINT (KeyboardInterrupt here) or SIGKILL
                time.sleep(0.05)
        return self.inner(x)


def make() -> torch.nn.Module:
    return PausingModel(load_default_model(0.25), os.environ.get("RGF_TEST_PAUSE_AT", ""))
