"""The embedded default: scikit-learn's handwritten digits and a small embedding network.

No download: ``sklearn.datasets.load_digits`` ships 1,797 8x8 images (pixels scaled to [0, 1]).
They are split, stratified and seeded, into a gallery and queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

INPUT_SHAPE = (1, 8, 8)


@dataclass
class DigitsSplit:
    gallery_x: np.ndarray  # (N, 1, 8, 8) float32 in [0, 1]
    gallery_y: np.ndarray  # (N,) int64
    query_x: np.ndarray
    query_y: np.ndarray


def load_digits_split(query_fraction: float = 0.2, seed: int = 0) -> DigitsSplit:
    """A stratified, seeded gallery/query split of the digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = data.target.astype(np.int64)
    gx, qx, gy, qy = train_test_split(x, y, test_size=query_fraction, random_state=seed, stratify=y)
    return DigitsSplit(np.ascontiguousarray(gx), gy, np.ascontiguousarray(qx), qy)


class DigitsEmbeddingNet(torch.nn.Module):
    """A small MLP: (B, 1, 8, 8) pixels in [0, 1] -> (B, dim) embeddings."""

    def __init__(self, dim: int = 32, hidden: int = 256):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(64, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden),
            torch.nn.ReLU(),
            torch.nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------------- shipped default models

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TRAINING_RECIPE = dict(epochs=40, batch_size=128, lr=2e-3, scale=16.0, seed=0)


def default_weights_path(sigma: float) -> Path:
    return WEIGHTS_DIR / f"digits_mlp_sigma{sigma:g}.pt"


def train_default_model(sigma: float, verbose: bool = False) -> DigitsEmbeddingNet:
    """The recipe behind the shipped weights: DigitsEmbeddingNet trained under noise of
    ``sigma`` on the gallery split of :func:`load_digits_split` (queries are held out)."""
    from .training import train_embedding_model

    torch.manual_seed(TRAINING_RECIPE["seed"])
    data = load_digits_split()
    return train_embedding_model(DigitsEmbeddingNet(), data.gallery_x, data.gallery_y, sigma=sigma,
                                 verbose=verbose, **TRAINING_RECIPE)


def load_default_model(sigma: float = 0.25) -> DigitsEmbeddingNet:
    """The shipped model trained at ``sigma`` (scripts/train_digits_model.py writes them); for a
    sigma without shipped weights, trains one on the spot (a few seconds on a CPU)."""
    path = default_weights_path(sigma)
    model = DigitsEmbeddingNet()
    if path.exists():
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        model = train_default_model(sigma)
    return model.eval()
