"""The model a training run builds and ships: a backbone (``--backbone``) that maps images to
``(batch, features)``, a linear head to ``--embedding-dim`` and l2 normalisation (RetrievalGuard's
128-d normalised output), exported as TorchScript with the training record inside it.

``--backbone``: ``mlp`` or ``cnn`` (small built-in networks for any input size), ``module:factory``
(a function returning an ``nn.Module``), or ``torchvision:NAME`` with ``--weights FILE`` (a
torchvision classifier whose ``fc`` is dropped; only when torchvision imports; never downloads).
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Optional, Tuple

import torch

from ..data.models import TRAINING_EXTRA_FILE as EXTRA_FILE
from ..errors import InputError, Term

BACKBONE = Term("backbone", "--backbone")
WEIGHTS = Term("weights", "--weights")


def mlp() -> torch.nn.Module:
    """Two hidden layers of 256 (with the head: the shipped digits network's shape)."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(256), torch.nn.ReLU(),
                               torch.nn.Linear(256, 256), torch.nn.ReLU())


def cnn() -> torch.nn.Module:
    """Three 3x3 convolutions with batch norm, global average pooling: 64 features."""
    nn = torch.nn
    return nn.Sequential(nn.LazyConv2d(16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                         nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


BUILT_IN = {"mlp": mlp, "cnn": cnn}


class Embedder(torch.nn.Module):
    """backbone -> linear head -> l2 normalisation."""

    def __init__(self, backbone: torch.nn.Module, head: torch.nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.head(self.backbone(x)), dim=1)


def _torchvision(name: str, weights: Optional[str]) -> torch.nn.Module:
    try:
        import torchvision
    except Exception as exc:  # noqa: BLE001 - an incompatible wheel fails in many ways
        raise InputError(f"{{backbone}} torchvision:{name}: torchvision does not import here ({type(exc).__name__}); "
                         "use a module:factory backbone", backbone=BACKBONE) from None
    if weights is None or not os.path.isfile(weights):
        what = "needs {weights} FILE (a state_dict saved with torch.save; nothing is downloaded)" if weights is None \
            else f"{{weights}} {weights}: no such file"
        raise InputError(f"{{backbone}} torchvision:{name}: {what}", backbone=BACKBONE, weights=WEIGHTS)
    factory = getattr(torchvision.models, name, None)
    if factory is None:
        raise InputError(f"{{backbone}} torchvision:{name}: torchvision.models has no {name}", backbone=BACKBONE)
    model = factory(weights=None)
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{{weights}} {weights}: not a state_dict of torchvision's {name} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160]})", weights=WEIGHTS) from None
    model.fc = torch.nn.Identity()
    return model


def build_backbone(spec: str, weights: Optional[str] = None) -> torch.nn.Module:
    """``--backbone`` -> an ``nn.Module`` (see the module docstring). ``weights``, for a
    module:factory or built-in backbone, is a state_dict file loaded into it."""
    if spec.startswith("torchvision:"):
        return _torchvision(spec[len("torchvision:"):], weights)
    if spec in BUILT_IN:
        model = BUILT_IN[spec]()
    elif ":" in spec:
        module_name, factory_name = spec.split(":", 1)
        try:
            model = getattr(importlib.import_module(module_name), factory_name)()
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{{backbone}} {spec}: could not build it ({type(exc).__name__}: {exc})",
                             backbone=BACKBONE) from None
        if not isinstance(model, torch.nn.Module):
            raise InputError(f"{{backbone}} {spec}: the factory returned {type(model).__name__}, expected a "
                             "torch.nn.Module", backbone=BACKBONE)
    else:
        raise InputError(f"{{backbone}} {spec}: expected {', '.join(BUILT_IN)}, module:factory or torchvision:NAME",
                         backbone=BACKBONE)
    if weights is not None:
        load_weights(model, weights, spec)
    return model


def load_weights(model: torch.nn.Module, weights: str, spec: str) -> None:
    """``--weights FILE`` (a state_dict) into the model ``--backbone spec`` built; one line if not."""
    if not os.path.isfile(weights):
        raise InputError(f"{{weights}} {weights}: no such file", weights=WEIGHTS)
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{{weights}} {weights}: does not load into {{backbone}} {spec} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160]})", weights=WEIGHTS, backbone=BACKBONE) from None


def run_on_example(module: torch.nn.Module, example: torch.Tensor, spec: str, term: Term, what: str = ""):
    """``module(example)`` without gradients; a failure is one line naming ``term`` (``--backbone``,
    ``--encoder``) and ``spec``. ``what``: how the message names the module ("the denoiser ")."""
    try:
        with torch.no_grad():
            return module(example)
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{{arg}} {spec}: {what}fails on the training images of shape {tuple(example.shape[1:])} "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})", arg=term) from None


def embedding_width(module: torch.nn.Module, example: torch.Tensor, spec: str, term: Term, name: str = "F") -> int:
    """The width of what ``module`` maps ``example`` (a few training images) to, which must be
    ``(batch, width)``; else one line naming ``term`` and ``spec``."""
    out = run_on_example(module, example, spec, term)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != example.shape[0]:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"{{arg}} {spec}: returns {got} for a batch of {example.shape[0]} images; expected "
                         f"(batch, {name}) = ({example.shape[0]}, {name})", arg=term)
    return int(out.shape[1])


def build_embedder(spec: str, weights: Optional[str], example: torch.Tensor, dim: int) -> Tuple[Embedder, int]:
    """The backbone with its head, checked on ``example`` (a few training images): it must map
    ``(B, *input_shape)`` to ``(B, features)``. Lazy layers are initialised here, so the caller
    seeds torch first. Returns the model and its number of features."""
    backbone = build_backbone(spec, weights)
    features = embedding_width(backbone.eval(), example, spec, BACKBONE, name="features")
    return Embedder(backbone, torch.nn.Linear(features, dim)), features


def export_torchscript(model: torch.nn.Module, example: torch.Tensor, record: dict, write) -> None:
    """Trace ``model`` (eval mode, on the CPU) and write it with ``record`` (sigma first) as the
    extra file :data:`EXTRA_FILE` into the open binary file ``write`` gives (``certify --model``
    loads it, and ``certify --denoiser`` a denoiser; both check its sigma)."""
    model = model.cpu().eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, example.cpu(), check_trace=False)
    torch.jit.save(traced, write, _extra_files={EXTRA_FILE: json.dumps(record, sort_keys=True)})
