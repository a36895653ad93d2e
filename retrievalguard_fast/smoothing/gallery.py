"""The retrieval gallery: fixed embeddings with integer labels, on the CPU or a CUDA device."""

from __future__ import annotations

from typing import Any, Iterable, Optional

import numpy as np
import torch


class Gallery:
    """Gallery rows ``g_1..g_N`` (float32, l2-normalised by default) and labels ``y_1..y_N``.

    Only the query is ever attacked; the gallery is fixed. The rows used by the kernels
    (``embeddings``, on ``device``) and by the certificates (``embeddings64``, float64 copies of
    the very same float32 values) are identical.
    """

    def __init__(self, embeddings: Any, labels: Any, *, normalize: bool = True,
                 num_classes: Optional[int] = None, device: Any = "cpu"):
        emb = torch.as_tensor(np.asarray(embeddings) if not isinstance(embeddings, torch.Tensor) else embeddings)
        lab = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        if emb.ndim != 2 or emb.shape[0] < 1 or emb.shape[1] < 1:
            raise ValueError(f"Gallery: embeddings must be a non-empty 2-D array (N, k), got shape {tuple(emb.shape)}")
        if not emb.dtype.is_floating_point:
            raise TypeError(f"Gallery: embeddings must have a floating dtype, got {emb.dtype}")
        if lab.ndim != 1 or lab.shape[0] != emb.shape[0]:
            raise ValueError(f"Gallery: labels must be 1-D with one label per row ({emb.shape[0]}), got shape {tuple(lab.shape)}")
        if lab.dtype.is_floating_point or lab.dtype == torch.bool or lab.dtype.is_complex:
            raise TypeError(f"Gallery: labels must be integers, got {lab.dtype}")
        emb = emb.detach().to("cpu", torch.float64)
        lab = lab.detach().to("cpu", torch.int64)
        if not torch.isfinite(emb).all():
            raise ValueError("Gallery: embeddings contain non-finite values")
        if int(lab.min()) < 0:
            raise ValueError(f"Gallery: labels must be >= 0, got {int(lab.min())}")
        if normalize:
            norms = emb.norm(dim=1, keepdim=True)
            if (norms == 0).any():
                raise ValueError(f"Gallery: row {int((norms[:, 0] == 0).nonzero()[0])} is zero and cannot be normalised")
            emb = emb / norms
        classes = int(lab.max()) + 1
        if num_classes is not None:
            if num_classes < classes:
                raise ValueError(f"Gallery: num_classes={num_classes} but labels go up to {classes - 1}")
            classes = int(num_classes)
        self.device = torch.device(device)
        self.embeddings = emb.to(torch.float32).to(self.device).contiguous()
        self.labels = lab.to(self.device)
        self.embeddings64 = self.embeddings.cpu().numpy().astype(np.float64)
        self.sq_norms64 = (self.embeddings64**2).sum(axis=1)
        self.labels_np = lab.numpy()
        self.num_classes = classes
        self.normalized = bool(normalize)

    @classmethod
    def from_model(cls, model: torch.nn.Module, images: Any, labels: Any, *, batch_size: int = 256,
                   device: Any = "cpu", normalize: bool = True, num_classes: Optional[int] = None) -> "Gallery":
        """Embed gallery images with the clean (noise-free) base model, in batches."""
        x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
        if not x.dtype.is_floating_point:
            raise TypeError(f"Gallery.from_model: images must have a floating dtype, got {x.dtype}")
        emb = embed_batches(model, (x[a : a + batch_size] for a in range(0, len(x), batch_size)), device)
        return cls(emb, labels, normalize=normalize, num_classes=num_classes, device=device)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def to(self, device: Any) -> "Gallery":
        g = Gallery.__new__(Gallery)
        g.__dict__.update(self.__dict__)
        g.device = torch.device(device)
        g.embeddings = self.embeddings.to(g.device)
        g.labels = self.labels.to(g.device)
        return g


def embed_batches(model: torch.nn.Module, batches: Iterable[torch.Tensor], device: Any = "cpu") -> torch.Tensor:
    """The clean model's (N, k) float32 embeddings (on the CPU) of image batches given in order.

    Images read from disk come as batches from a loader, arrays as slices: both go through here,
    so the same images in the same batches give the same embeddings from any source."""
    device = torch.device(device)
    model = model.to(device).eval()
    out = []
    with torch.inference_mode():
        for batch in batches:
            e = model(batch.to(device, torch.float32))
            if e.ndim != 2 or e.shape[0] != len(batch):
                raise ValueError(f"Gallery.from_model: the model must return (batch, k) embeddings, got shape {tuple(e.shape)}")
            out.append(e.float().cpu())
    return torch.cat(out)
