"""Devices and models of a run: ``--device`` resolved, ``--model`` loaded (a TorchScript file or a
``package.module:factory``), and the digests that identify them by content: a file's bytes, a
built module's state (:func:`module_digest`), so that run.json and the gallery cache name the very
model that ran, whatever it is called."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import zipfile
from typing import Optional

from ..errors import InputError

#: The TorchScript extra file in which ``train`` records how a model was trained (its sigma first).
TRAINING_EXTRA_FILE = "retrievalguard_training.json"


def resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA GPU is available here (use --device cpu or auto)")
    return torch.device(name)


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def module_digest(model) -> str:
    """sha256 of a module's class and state: every parameter and buffer (name, dtype, shape and
    bytes, in ``state_dict`` order). Retrained weights behind the same factory change it; the same
    weights built twice give the same digest."""
    import torch

    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\n".encode())
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):  # extra state: its repr
            h.update(f"{name} {value!r}\n".encode())
            continue
        t = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name} {t.dtype} {tuple(value.shape)}\n".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_model(spec: str, what: str = "--model"):
    """``--model`` (or ``what``, e.g. ``--denoiser``): a TorchScript file (identified by its bytes)
    or ``package.module:factory`` (identified by the built module's state, :func:`module_digest`)
    -> ``(model, model_id)``."""
    import torch

    if os.path.exists(spec):
        try:
            model = torch.jit.load(spec, map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise InputError(f"{what} {spec}: not a loadable TorchScript file ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
        return model, file_digest(spec)
    if ":" not in spec:
        raise InputError(f"{what} {spec}: no such file; expected a TorchScript file or 'package.module:factory'")
    module_name, factory_name = spec.split(":", 1)
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, factory_name)
        model = factory()
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{what} {spec}: could not build the model ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{what} {spec}: the factory returned {type(model).__name__}, expected a torch.nn.Module")
    return model, f"factory:{spec}:sha256:{module_digest(model)}"


def training_sigma(spec: str, model, what: str = "--model") -> Optional[float]:
    """The sigma ``model`` was trained at, if it says: a TorchScript file written by ``train``
    carries it in its extra file :data:`TRAINING_EXTRA_FILE` (read from the archive directly,
    without loading the model again); a factory's module may carry it as ``training_sigma``."""
    if not os.path.exists(spec):
        value = getattr(model, "training_sigma", None)
        return None if value is None else float(value)
    try:
        with zipfile.ZipFile(spec) as archive:
            name = next((n for n in archive.namelist() if n.endswith("/extra/" + TRAINING_EXTRA_FILE)), None)
            if name is None:
                return None
            return float(json.loads(archive.read(name))["sigma"])
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
        raise InputError(f"{what} {spec}: its training record {TRAINING_EXTRA_FILE} is unreadable ({exc})") from None


def check_training_sigma(trained: Optional[float], sigma: float, allow: bool, spec: str, what: str = "model") -> None:
    """Certifying at another sigma than the model was trained at certifies almost nothing (Cohen
    et al.'s ImageNet ResNet-50 trained at 0.25 and certified at 0.5: 0.8% of images at radius 0,
    against 57.2% trained at 0.5): refused unless ``allow`` (``--allow-sigma-mismatch``)."""
    import numpy as np

    if trained is None or allow or np.float32(trained) == np.float32(sigma):
        return
    raise InputError(f"--sigma {sigma:g}: the {what} {spec} was trained at sigma {trained:g}; use --sigma {trained:g}, "
                     "or pass --allow-sigma-mismatch to smooth it at another sigma anyway")


def with_denoiser(denoiser, encoder):
    """Denoised smoothing (Salman et al. 2020): the base model is ``encoder(denoiser(x))`` on each
    noisy sample, and the certificate is for that composite; the gallery stays embedded by the
    encoder alone (clean images need no denoising, and any fixed gallery is sound)."""
    import torch

    class Denoised(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.denoiser, self.encoder = denoiser, encoder

        def forward(self, x):
            return self.encoder(self.denoiser(x))

    return Denoised()
