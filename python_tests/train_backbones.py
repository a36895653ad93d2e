"""Backbones for the training tests' ``--backbone train_backbones:NAME`` (this folder is on the
CLI subprocesses' path): ``wrong_shape`` returns (batch, 4, 2) instead of (batch, features)."""

import torch


class WrongShape(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.lin(x.flatten(1)[:, :8]).reshape(len(x), 4, 2)


def wrong_shape():
    return WrongShape()
