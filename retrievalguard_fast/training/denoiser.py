"""A denoiser for denoised smoothing (Salman et al., NeurIPS 2020), trained against a frozen
encoder with their *stability* objective carried over to embeddings: for a clean image x and its
noisy copy x + d (d ~ N(0, sigma^2 I), the package's noise),

    loss = | n(E(D(x + d))) - n(E(x)) |^2,        n(v) = v / |v|,

the squared distance between the unit embedding of the denoised noisy image and that of the clean
image; E is the frozen encoder, D the denoiser. It needs no labels, and its minimum keeps every
noisy sample at the clean image's place in the gallery's geometry, which is what the smoothed
retriever's votes and mean embedding measure. ``certify --model E --denoiser denoiser.pt``
certifies the composite E(D(.)).

``--backbone`` names the denoiser's network: ``dncnn`` (Zhang et al. 2017, the architecture
Salman et al. use: 17 layers of 64 channels, residual: D(x) = x - body(x)), ``dncnn-DxW`` (D
layers of W channels), or ``module:factory`` (a module mapping images to images of the same shape).
"""

from __future__ import annotations

import re
from typing import Optional

import torch

from ..errors import InputError, Term
from .model import BACKBONE, build_backbone, embedding_width, load_weights, run_on_example

ENCODER = Term("encoder", "--encoder")

OBJECTIVES = ("stability",)
DEFAULT_ARCHITECTURE = "dncnn"
_DNCNN = re.compile(r"dncnn(?:-(\d+)x(\d+))?$")


class DnCNN(torch.nn.Module):
    """``x - body(x)``: conv+ReLU, ``depth - 2`` times conv+BN+ReLU, conv (3x3 convolutions of
    ``width`` channels; the last maps back to the image's ``channels``)."""

    def __init__(self, channels: int, depth: int = 17, width: int = 64):
        super().__init__()
        nn = torch.nn
        layers = [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


def build_denoiser(spec: str, weights: Optional[str], example: torch.Tensor) -> torch.nn.Module:
    """``--backbone`` of a denoiser run -> the denoiser, checked on ``example`` (a few training
    images, ``(B, C, H, W)`` for the built-ins): it must return a tensor of the input's shape.
    The caller seeds torch first (the initial weights)."""
    match = _DNCNN.match(spec)
    if match:
        depth, width = (int(match.group(1)), int(match.group(2))) if match.group(1) else (17, 64)
        if depth < 2 or width < 1:
            raise InputError(f"{{backbone}} {spec}: a DnCNN needs at least 2 layers of at least 1 channel",
                             backbone=BACKBONE)
        if example.ndim != 4:
            raise InputError(f"{{backbone}} {spec}: needs images of shape (channels, height, width); the training "
                             f"images have shape {tuple(example.shape[1:])}", backbone=BACKBONE)
        model = DnCNN(int(example.shape[1]), depth, width)
        if weights is not None:
            load_weights(model, weights, spec)
    else:
        model = build_backbone(spec, weights)
    out = run_on_example(model.eval(), example, spec, BACKBONE, what="the denoiser ")
    if not isinstance(out, torch.Tensor) or out.shape != example.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"{{backbone}} {spec}: the denoiser returns {got} for images of shape {tuple(example.shape)}; "
                         "a denoiser must return images of the shape it is given", backbone=BACKBONE)
    return model


def unit(e: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(e.reshape(e.shape[0], -1), dim=1)


def stability_loss(encoder, denoiser, clean: torch.Tensor, noisy: torch.Tensor,
                   clean_embeddings: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per image, ``|n(E(D(noisy))) - n(E(clean))|^2`` (the module's formula); the clean side is
    a constant (no gradient flows into the target)."""
    if clean_embeddings is None:
        with torch.no_grad():
            clean_embeddings = unit(encoder(clean))
    return (unit(encoder(denoiser(noisy))) - clean_embeddings).pow(2).sum(dim=1)


def freeze(encoder: torch.nn.Module) -> torch.nn.Module:
    """The encoder as the loss sees it: eval mode (BatchNorm's running statistics, no dropout), no
    parameter trained; gradients still flow through it into the denoiser."""
    encoder.eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


def check_encoder_output(encoder, example: torch.Tensor, spec: str) -> int:
    """The frozen encoder must map ``(B, *input_shape)`` to ``(B, dim)``; returns ``dim``."""
    return embedding_width(encoder, example, spec, ENCODER, name="dim")
