"""Smoothed 1-NN retrieval over any torch embedding model: the public entry point.

A :class:`SmoothedRetriever` wraps an embedding model and a :class:`~.gallery.Gallery`. For each
query it draws ``n0 + n`` noisy copies (counter-based: copy ``i`` of query ``q`` is sample ``i``
of noise stream ``q`` under ``seed``), embeds them, and with one fused
:func:`~retrievalguard_fast.nn_vote` pass per batch counts the 1-NN labels and accumulates the
mean normalised embedding (:mod:`~.sampler`). From those it certifies (:mod:`~.certify`)

- the vote model V (Cohen et al. CERTIFY: ``n0`` selection votes choose the label, ``n`` fresh
  votes bound its probability with Clopper-Pearson), and
- the soft model S (RetrievalGuard: the nearest gallery label of the mean embedding, with the
  Gaussian and Lipschitz radii and the Monte-Carlo bound (Bennett or McDiarmid) of docs/certification.md
  section 3, using all ``n0 + n`` samples, since that bound holds for every direction at once),

beside the clean prediction. Results depend only on the seed, each query's stream index and the
parameters; the batch size changes them only if the model's per-row output depends on the
number of rows in its batch (torch's CPU kernels here: not for 64 rows or more).

Guarantee, per query and per certificate: with probability at least ``1 - alpha`` over the
sampling, the vote radius is certified (no perturbation of l2 norm below it changes the vote
model's prediction); separately, with probability at least ``1 - alpha``, the soft radii are
certified (for the soft Recall@K radii: the true label stays among the K nearest). The two hold
together with probability at least ``1 - 2 alpha``, not ``1 - alpha``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch

from ..errors import is_out_of_memory
from ..kernels import arrays as arr
from ..kernels import nn_search
from ..kernels.screen import NN_PRECISIONS
from .certify import certify_step
from .config import CertifyConfig
from .gallery import Gallery
from .record import ABSTAIN, QueryCertificate
from .sampler import Sampler

__all__ = ["SmoothedRetriever", "QueryCertificate", "ABSTAIN"]


class SmoothedRetriever:
    """Randomized smoothing of 1-NN retrieval over a base embedding model.

    ``model``: any ``torch.nn.Module`` mapping a batch of inputs (in the model's own input
    space, e.g. pixels in [0, 1], with any normalisation inside the model) to (batch, k)
    embeddings; it is put in eval mode and run under ``torch.inference_mode()``.
    ``sigma``: noise level in that input space (radii are in the same space).
    ``batch_size``: noisy samples per model call; samples of several queries share a batch when
    one query has fewer left, and the model always sees exactly this many rows (the last batch is
    padded), so a sample's embedding never depends on how the queries were packed. It changes
    speed, not results, as long as the model's output for a row does not depend on the number of
    rows in its batch (see the module docstring).
    Model-stage options: ``bf16`` (run the model under bfloat16 autocast: a different,
    deterministic base model, usually faster on CPUs with AVX-512 BF16 and on GPUs),
    ``channels_last`` (NHWC memory format, for convolutional models), ``compile``
    (``torch.compile`` the model; the first batches pay the compilation).
    ``nn_precision``: the nearest-neighbour search of :func:`~retrievalguard_fast.nn_vote`:
    ``"exact"`` (default), or ``"tf32"`` / ``"bf16"`` (tensor-core screening, verified: the same
    votes and sums bit for bit, so it changes speed, never results; worth it on GPUs with large
    galleries, slower on CPUs).
    """

    def __init__(self, model: torch.nn.Module, gallery: Gallery, sigma: float, *, device: Any = None,
                 batch_size: int = 1000, seed: int = 0, bf16: bool = False, channels_last: bool = False,
                 compile: bool = False, nn_precision: str = "exact"):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"SmoothedRetriever: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(gallery, Gallery):
            raise TypeError(f"SmoothedRetriever: gallery must be a Gallery, got {type(gallery).__name__}")
        # The noise kernels scale by float32(sigma); the certificates use that very value, so a
        # sigma not representable in float32 never makes a radius (slightly) too large.
        self.sigma = float(np.float32(arr.check_positive_float("SmoothedRetriever", "sigma", sigma)))
        self.batch_size = arr.check_int("SmoothedRetriever", "batch_size", batch_size, 1, 2**31 - 1)
        self.seed = arr.check_int("SmoothedRetriever", "seed", seed, 0, 2**64 - 1)
        self.device = torch.device(device) if device is not None else gallery.device
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("SmoothedRetriever: device cuda requested but no GPU is available")
        self.model = model.to(self.device).eval()
        self.gallery = gallery.to(self.device)
        # Model-stage options. Each one runs a different, still deterministic base model (bf16
        # rounds inside the model; the others only change speed, up to float rounding); the
        # certificates hold for the model as run, and model_stage says which one that was.
        self.bf16, self.channels_last, self.compile = bool(bf16), bool(channels_last), bool(compile)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._forward = torch.compile(self.model) if self.compile else self.model
        if nn_precision not in NN_PRECISIONS:
            raise ValueError(f"SmoothedRetriever: nn_precision must be one of {NN_PRECISIONS}, "
                             f"got {nn_precision!r}")
        self.nn_precision = nn_precision

    @property
    def model_stage(self) -> Dict[str, bool]:
        """The model-stage options in effect (recorded with every result)."""
        return {"bf16_autocast": self.bf16, "channels_last": self.channels_last, "torch_compile": self.compile}

    # ------------------------------------------------------------------ checks

    def embed(self, batch: torch.Tensor, what: str) -> torch.Tensor:
        """The base model on one batch, as configured (model-stage options), checked: (batch, k) float32."""
        if self.channels_last and batch.ndim == 4:
            batch = batch.contiguous(memory_format=torch.channels_last)
        try:
            if self.bf16:
                with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16):
                    e = self._forward(batch)
            else:
                e = self._forward(batch)
        except RuntimeError as exc:  # shape mismatches inside the model; running out of memory is not one
            if is_out_of_memory(exc):
                raise
            raise ValueError(f"{what}: the model failed on inputs of shape {tuple(batch.shape)}: {exc}") from exc
        if not isinstance(e, torch.Tensor) or e.ndim != 2 or e.shape[0] != batch.shape[0]:
            shape = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
            raise ValueError(f"{what}: the model must return (batch, k) embeddings; got {shape} for a batch of {batch.shape[0]}")
        if e.shape[1] != self.gallery.dim:
            raise ValueError(f"{what}: the model returns embeddings of dimension {e.shape[1]} but the gallery has {self.gallery.dim}")
        return e.float()

    def _check_queries(self, x, labels, exclude, indices, config: CertifyConfig):
        op = "certify"
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        if x.ndim < 2:
            raise ValueError(f"{op}: queries must have shape (M, *input_shape), got {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise TypeError(f"{op}: queries must have a floating dtype, got {x.dtype}")
        x = x.detach().to(self.device, torch.float32).contiguous()
        if not torch.isfinite(x).all():
            raise ValueError(f"{op}: queries contain non-finite values")
        m = x.shape[0]
        for k in config.ks:  # Recall@K needs K gallery rows
            arr.check_int(op, "ks", k, 1, len(self.gallery))

        def int_array(name, a, default, lo, hi):
            if a is None:
                return default
            arr = np.asarray(a.cpu() if isinstance(a, torch.Tensor) else a)
            if arr.shape != (m,) or not np.issubdtype(arr.dtype, np.integer):
                raise ValueError(f"{op}: {name} must be {m} integers (one per query), got shape {arr.shape} of {arr.dtype}")
            if m and (arr.min() < lo or arr.max() > hi):
                raise ValueError(f"{op}: {name} must be in [{lo}, {hi}], got values in [{arr.min()}, {arr.max()}]")
            return arr.astype(np.int64)

        labels = int_array("labels", labels, None, 0, 2**62)
        exclude = int_array("exclude", exclude, np.full(m, -1, np.int64), -1, len(self.gallery) - 1)
        indices = int_array("indices", indices, np.arange(m, dtype=np.int64), 0, 2**32 - 1)
        return x, labels, exclude, indices

    # ------------------------------------------------------------------ certification

    def clean_predictions(self, x: torch.Tensor, exclude: np.ndarray) -> np.ndarray:
        """Labels of the gallery rows nearest to the clean (noise-free) embeddings."""
        out = np.empty(len(x), dtype=np.int64)
        buffer = torch.zeros((min(self.batch_size, len(x)),) + tuple(x.shape[1:]), dtype=torch.float32, device=self.device)
        with torch.inference_mode():
            for a in range(0, len(x), len(buffer)):
                rows = min(len(buffer), len(x) - a)
                buffer[:rows] = x[a : a + rows]  # one batch shape throughout (see Sampler.run)
                e = self.embed(buffer, "certify (clean pass)")[:rows]
                e = torch.nn.functional.normalize(e, dim=1)
                ex = torch.as_tensor(exclude[a : a + rows], device=self.device)
                try:
                    idx, *_ = nn_search(e, self.gallery.embeddings, exclude=ex)
                except ValueError as exc:
                    raise ValueError(f"certify (clean pass): model output is unusable ({exc})") from exc
                out[a : a + len(e)] = self.gallery.labels_np[idx.cpu().numpy()]
        return out

    def iter_certify(self, queries: Any, labels: Any = None, config: Optional[CertifyConfig] = None, *,
                     exclude: Any = None, indices: Any = None, on_batch: Optional[Callable[[int], None]] = None,
                     **settings: Any) -> Iterator[QueryCertificate]:
        """Certify queries, yielding each :class:`QueryCertificate` as it completes.

        ``queries``: (M, *input_shape). ``labels``: true labels (for Recall@K radii and the
        summary), optional. ``exclude``: a gallery index per query to leave out (-1 for none).
        ``indices``: each query's noise stream (default 0..M-1); give the dataset index so that a
        query's result does not depend on which other queries are certified with it.

        ``config``: a :class:`~.config.CertifyConfig` (default: its defaults), with any of its
        settings replaced by keyword (``n0=``, ``n=``, ``alpha=``, ``ks=``, ``mode=``, ``radii=``,
        ``first_checkpoint=``, ``soft_bound=``). Fixed-n mode (default): every query draws ``n0``
        selection and ``n`` certification samples. ``mode="sequential"`` makes ``n`` a cap: a query
        stops at the first checkpoint of a doubling schedule (from ``first_checkpoint``) where each
        of ``radii`` is certified or out of reach, for the vote and the soft model; every bound is
        then taken at level ``alpha / J`` over the ``J`` checkpoints (see
        :mod:`~.sequential`). Results are reported at the stopping checkpoint. ``soft_bound``: the
        Monte-Carlo bound on the mean embedding behind every soft radius (see
        :func:`~.stats.mean_embedding_deviation`).

        Queries share batches: as one stops, the next starts, so batches stay full. Results are
        yielded as queries complete (not necessarily in input order); ``on_batch(samples)`` is
        called after each model batch (progress bars).
        """
        config = CertifyConfig.of(config, **settings)
        x, labels, exclude, indices = self._check_queries(queries, labels, exclude, indices, config)
        schedule = config.schedule()
        m = len(x)
        if m == 0:
            return
        clean = self.clean_predictions(x, exclude)  # also validates the model on these inputs
        sampler = Sampler(self, x, labels, exclude, indices, clean, config.n0, schedule)
        yield from sampler.run(lambda evidence: certify_step(evidence, self.gallery, self.sigma, schedule, config.ks,
                                                             config.soft_bound), on_batch)

    def certify(self, queries: Any, labels: Any = None, config: Optional[CertifyConfig] = None,
                **kwargs: Any) -> List[QueryCertificate]:
        """All queries' certificates as a list, in input order (see :meth:`iter_certify`)."""
        certs = list(self.iter_certify(queries, labels, config, **kwargs))
        order = {int(i): k for k, i in enumerate(kwargs.get("indices") if kwargs.get("indices") is not None
                                                 else range(len(certs)))}
        return sorted(certs, key=lambda c: order[c.index])
