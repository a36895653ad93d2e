"""Loading the compiled modules and saying what they offer.

``_core`` (CPU kernels) is always built. ``_cuda`` exists only when the package was built with a
CUDA compiler; it links the CUDA runtime statically, so it imports on machines without a GPU or
driver and then reports no device.
"""

from __future__ import annotations

import glob
import os
import sys
from contextlib import contextmanager
from typing import Iterator, Optional


# Bump with any change to the compiled modules' functions; checked at import so that Python code
# and compiled modules of different versions are never mixed.
KERNEL_ABI = 4


def _find_installed_build() -> Optional[str]:
    """The folder of an installed copy's compiled modules, when this package is imported from a
    source checkout (the current directory shadows site-packages, e.g. `python -m ...` in the
    repository root). The source tree itself holds no compiled modules."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        candidate = os.path.join(os.path.abspath(entry or "."), "retrievalguard_fast")
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


def _require_cuda_module(op: str, device: Optional[object] = None):
    if _cuda is None:
        raise RuntimeError(
            f"{op}: got CUDA tensors (device {device}), but retrievalguard_fast was built without "
            "CUDA; reinstall it on a machine where CMake finds nvcc"
        )
    return _cuda
