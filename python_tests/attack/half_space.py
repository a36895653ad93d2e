"""A closed-form model for the attack's tests: a half-space, whose smoothed models' true robust
radius is the distance to its plane."""

import numpy as np
import torch

from retrievalguard_fast.smoothing import Gallery


class HalfSpace(torch.nn.Module):
    """Embedding (scale (w.x + b), 1): with the gallery {(1, 0): label 0, (-1, 0): label 1} the
    1-NN label is 0 iff w.x + b > 0. Both smoothed models are the same half-space (F's first
    coordinate is an odd, increasing function of w.x + b under symmetric noise), so with |w| = 1
    the true robust radius of x is exactly w.x + b, the distance to the plane."""

    def __init__(self, w, b, scale=2.0):
        super().__init__()
        self.register_buffer("w", torch.as_tensor(w, dtype=torch.float32))
        self.b, self.scale = float(b), float(scale)

    def forward(self, x):
        s = self.scale * (x.flatten(1) @ self.w + self.b)
        return torch.stack([s, torch.ones_like(s)], dim=1)


def half_space_queries(dim=16, count=3, distance=1.0, seed=0, scale=2.0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(dim)
    w /= np.linalg.norm(w)
    b = 0.3
    # Points at the given distance on the label-0 side: x = x0 + (distance - (w.x0 + b)) w.
    x0 = rng.uniform(-1, 1, size=(count, dim))
    x = x0 + (distance - (x0 @ w + b))[:, None] * w[None, :]
    assert np.allclose(x @ w + b, distance)
    gallery = Gallery(np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([0, 1]))
    return HalfSpace(w, b, scale), gallery, x.astype(np.float32)
