"""The compiled kernels: loading them, saying what they offer, and the one dispatch point.

``_core`` (CPU kernels) is always built. ``_cuda`` exists only when the package was built with a
CUDA compiler; it links the CUDA runtime statically, so it imports on machines without a GPU or
driver and then reports no device.

Each device kind has a backend object with the same methods (:class:`CpuBackend`,
:class:`CudaBackend`); :func:`backend_for` picks one, and nothing else in the package asks which
device it runs on. Backend methods take arguments already checked and converted by the public
ops (``noise``, ``nn``, ``screen``); the kernels count input problems into named slots
(``problem_slots``) and the ops turn them into one message for every backend (docs/design.md,
section "Nearest-neighbour kernels").
"""

from __future__ import annotations

import glob
import os
import sys
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

import numpy as np

from .arrays import numpy_view, torch_module

# Bump with any change to the compiled modules' functions; checked at import so that Python code
# and compiled modules of different versions are never mixed. The only place the number is
# written: CMakeLists.txt reads it from this line (keep it as `KERNEL_ABI = <n>`) and compiles it
# into both modules.
KERNEL_ABI = 4


def _find_installed_build() -> Optional[str]:
    """The folder of an installed copy's compiled modules, when this package is imported from a
    source checkout (the current directory shadows site-packages, e.g. `python -m ...` in the
    repository root). The source tree itself holds no compiled modules."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        candidate = os.path.join(os.path.abspath(entry or "."), "retrievalguard_fast", "kernels")
        if candidate != here and glob.glob(os.path.join(candidate, "_core.*")):
            return candidate
    return None


try:
    from . import _core  # noqa: E402
except ImportError:
    _installed = _find_installed_build()
    if _installed is None:
        raise ImportError(
            "retrievalguard_fast: the compiled module _core is missing; install the package "
            "(pip install .) rather than importing the source tree"
        ) from None
    sys.modules[__package__].__path__.append(_installed)  # type: ignore[attr-defined]
    from . import _core  # noqa: E402,F811

if getattr(_core, "kernel_abi", None) != KERNEL_ABI:
    raise ImportError(
        f"retrievalguard_fast: compiled module {_core.__file__} is of another version "
        f"(kernel ABI {getattr(_core, 'kernel_abi', None)}, expected {KERNEL_ABI}); reinstall: pip install ."
    )

try:
    from . import _cuda  # type: ignore[attr-defined]
except ImportError:  # built without a CUDA compiler
    _cuda = None
if _cuda is not None and getattr(_cuda, "kernel_abi", None) != KERNEL_ABI:
    raise ImportError(
        f"retrievalguard_fast: compiled module {_cuda.__file__} is of another version "
        f"(kernel ABI {getattr(_cuda, 'kernel_abi', None)}, expected {KERNEL_ABI}); reinstall: pip install ."
    )


def has_cuda() -> bool:
    """True when the CUDA backend was compiled in *and* a usable GPU and driver are present."""
    if _cuda is None:
        return False
    try:
        return _cuda.device_count() > 0
    except RuntimeError:
        return False


def build_info() -> dict:
    """What was compiled in, and what this machine offers to it."""
    info = {
        "cpu": {
            "openmp": bool(_core.openmp),
            "threads": int(_core.num_threads()),
            "march": str(_core.cpu_arch),
            "dot_kernel": str(_core.dot_kernel),
            "tile_sizes": tuple(_core.get_tile_sizes()),
        },
        "cuda": {"compiled": _cuda is not None},
    }
    if _cuda is not None:
        info["cuda"].update(
            architectures=str(_cuda.architectures),
            compiler_version=str(_cuda.compiler_version),
            runtime_version=int(_cuda.runtime_version()),
            driver_version=int(_cuda.driver_version()),
            device_count=int(_cuda.device_count()),
        )
    info["has_cuda"] = has_cuda()
    return info


def set_cpu_tile_sizes(rows: int, gallery_rows: int) -> None:
    """Set the CPU kernels' tile shape (query rows x gallery rows, rounded up to 32-row panels).

    Results do not depend on it (ties go to the lower index); only speed does. Tests shrink it
    so that small inputs run the tiled code paths that large ones use.
    """
    _core.set_tile_sizes(int(rows), int(gallery_rows))


def get_cpu_tile_sizes() -> tuple:
    return tuple(_core.get_tile_sizes())


@contextmanager
def cpu_tile_sizes(rows: int, gallery_rows: int) -> Iterator[None]:
    """Temporarily use another CPU tile shape (see :func:`set_cpu_tile_sizes`)."""
    old = get_cpu_tile_sizes()
    set_cpu_tile_sizes(rows, gallery_rows)
    try:
        yield
    finally:
        set_cpu_tile_sizes(*old)


# ----------------------------------------------------------------------------- backends


class CpuBackend:
    """The C++ kernels (``_core``) on numpy arrays or CPU tensors (read through numpy views)."""

    #: The CPU kernels read back their problem counters for free and skip the work when there
    #: are any, so every call is checked.
    always_checks = True

    @staticmethod
    def _flat(a: Any) -> np.ndarray:
        return numpy_view(a).reshape(-1)

    def _exclude(self, exclude: Any) -> np.ndarray:
        return numpy_view(exclude) if exclude is not None else np.empty(0, dtype=np.int64)

    def new_problems(self, like: Any) -> np.ndarray:
        return np.zeros(int(_core.num_problem_slots), dtype=np.int64)

    def read_problems(self, problems: Any) -> Dict[str, int]:
        return {name: int(problems[i]) for name, i in _core.problem_slots.items()}

    def philox4x32(self, counters: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """counters (m, 4) and keys (m, 2) as uint32 numpy arrays; the (m, 4) uint32 output words."""
        out = np.empty((counters.shape[0], 4), dtype=np.uint32)
        _core.philox4x32(counters, keys, out)
        return out

    def gaussian_noise(self, x: Any, sigma: float, n: int, seed: int, stream: int, start: int, out: Any) -> None:
        _core.gaussian_noise(self._flat(x), sigma, n, seed, stream, start, self._flat(out))

    def nn_search(self, queries, gallery, exclude, normalize, index1, dist1, index2, dist2, problems) -> None:
        _core.nn_search(self._flat(queries), self._flat(gallery), int(queries.shape[1]), self._exclude(exclude),
                        bool(normalize), numpy_view(index1), numpy_view(dist1), numpy_view(index2), numpy_view(dist2),
                        numpy_view(problems))

    def nn_vote(self, embeddings, gallery, labels, num_classes, exclude, normalize, counts, embedding_sum,
                problems) -> None:
        _core.nn_vote(self._flat(embeddings), self._flat(gallery), int(embeddings.shape[1]), numpy_view(labels),
                      num_classes, self._exclude(exclude), bool(normalize), numpy_view(counts),
                      numpy_view(embedding_sum), numpy_view(problems))

    def nn_screen(self, embeddings, gallery, labels, num_classes, exclude, normalize, scores, candidates, rel_error,
                  counts, embedding_sum, nearest, problems) -> None:
        """scores: a float32 or bfloat16 tensor (bfloat16 is passed as its uint16 bit pattern)."""
        torch = torch_module()
        scores_np = scores.numpy() if scores.dtype == torch.float32 else scores.view(torch.int16).numpy().view(np.uint16)
        _core.nn_screen(self._flat(embeddings), self._flat(gallery), int(embeddings.shape[1]), numpy_view(labels),
                        num_classes, self._exclude(exclude), bool(normalize), scores_np, candidates, rel_error,
                        numpy_view(counts), numpy_view(embedding_sum), numpy_view(nearest), numpy_view(problems))


class CudaBackend:
    """The CUDA kernels (``_cuda``) on CUDA tensors: raw device pointers, queued on
    ``torch.cuda.current_stream()`` of the tensors' device; nothing synchronises except
    :meth:`read_problems`."""

    always_checks = False  # reading the counters back synchronises; callers choose (check=)

    @staticmethod
    def _place(t: Any) -> tuple:
        torch = torch_module()
        index = t.device.index if t.device.index is not None else torch.cuda.current_device()
        return index, torch.cuda.current_stream(t.device).cuda_stream

    @staticmethod
    def _ptr(t: Any) -> int:
        return t.data_ptr() if t is not None else 0

    def new_problems(self, like: Any) -> Any:
        return torch_module().zeros(int(_cuda.num_problem_slots), dtype=torch_module().int64, device=like.device)

    def read_problems(self, problems: Any) -> Dict[str, int]:
        values = problems.tolist()  # one synchronisation
        return {name: int(values[i]) for name, i in _cuda.problem_slots.items()}

    def philox4x32(self, counters: Any, keys: Any) -> Any:
        """counters (m, 4) and keys (m, 2) as int64 tensors holding uint32 values; the output words
        as an int64 tensor (torch has no uint32 arithmetic on CUDA)."""
        torch = torch_module()

        def as_int32_bits(t):  # uint32 values -> int32 with the same bits (explicit wrap-around)
            return torch.where(t >= 2**31, t - 2**32, t).to(torch.int32).contiguous()

        out = torch.empty((counters.shape[0], 4), dtype=torch.int32, device=counters.device)
        # Named, so they live until the kernel has run: a temporary's storage is freed (and
        # reused by the next conversion) as soon as its .data_ptr() returns.
        counters32, keys32 = as_int32_bits(counters), as_int32_bits(keys)
        _cuda.philox4x32(*self._place(out), counters32.data_ptr(), keys32.data_ptr(), counters.shape[0], out.data_ptr())
        return out.to(torch.int64) & 0xFFFFFFFF

    def gaussian_noise(self, x: Any, sigma: float, n: int, seed: int, stream: int, start: int, out: Any) -> None:
        torch = torch_module()
        out_code = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[out.dtype]
        _cuda.gaussian_noise(*self._place(x), x.data_ptr(), x.numel(), sigma, n, seed, stream, start,
                             out.data_ptr(), out_code)

    def nn_search(self, queries, gallery, exclude, normalize, index1, dist1, index2, dist2, problems) -> None:
        _cuda.nn_search(*self._place(queries), queries.data_ptr(), queries.shape[0], gallery.data_ptr(),
                        gallery.shape[0], queries.shape[1], self._ptr(exclude), bool(normalize), index1.data_ptr(),
                        dist1.data_ptr(), index2.data_ptr(), dist2.data_ptr(), problems.data_ptr())

    def nn_vote(self, embeddings, gallery, labels, num_classes, exclude, normalize, counts, embedding_sum,
                problems) -> None:
        _cuda.nn_vote(*self._place(embeddings), embeddings.data_ptr(), embeddings.shape[0], gallery.data_ptr(),
                      gallery.shape[0], embeddings.shape[1], labels.data_ptr(), num_classes, self._ptr(exclude),
                      bool(normalize), counts.data_ptr(), embedding_sum.data_ptr(), problems.data_ptr())

    def nn_screen(self, embeddings, gallery, labels, num_classes, exclude, normalize, scores, candidates, rel_error,
                  counts, embedding_sum, nearest, problems) -> None:
        _cuda.nn_screen(*self._place(embeddings), embeddings.data_ptr(), embeddings.shape[0], gallery.data_ptr(),
                        gallery.shape[0], embeddings.shape[1], labels.data_ptr(), num_classes, self._ptr(exclude),
                        bool(normalize), scores.data_ptr(), scores.dtype == torch_module().bfloat16, candidates, rel_error,
                        counts.data_ptr(), embedding_sum.data_ptr(), nearest.data_ptr(), problems.data_ptr())


CPU = CpuBackend()
_CUDA_BACKEND = CudaBackend() if _cuda is not None else None


def backend_for(device_kind: str, op: str, device: Optional[object] = None):
    """The backend of a call whose arrays live on ``device_kind`` ('cpu' or 'cuda'): the one
    place where an op is dispatched by device."""
    if device_kind != "cuda":
        return CPU
    if _CUDA_BACKEND is None:
        raise RuntimeError(
            f"{op}: got CUDA tensors (device {device}), but retrievalguard_fast was built without "
            "CUDA; reinstall it on a machine where CMake finds nvcc"
        )
    return _CUDA_BACKEND
