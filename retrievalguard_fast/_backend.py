"""Loading the compiled modules and saying what they offer.

``_core`` (CPU kernels) is always built. ``_cuda`` exists only when the package was built with a
CUDA compiler; it links the CUDA runtime statically, so it imports on machines without a GPU or
driver and then reports no device.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from contextlib import contextmanager
from typing import Iterator, Optional


def _preload_openblas() -> str:
    """Load scipy-openblas32's library globally so ``_core`` finds it under its soname.

    ``_core`` also carries an rpath to that library; loading it by path here makes the import
    work whatever the install layout (editable installs, --target directories).
    """
    import scipy_openblas32

    candidates = sorted(glob.glob(os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas*")))
    if not candidates:
        raise ImportError(
            "retrievalguard_fast: the scipy-openblas32 package has no library in "
            f"{scipy_openblas32.get_lib_dir()}; reinstall it (pip install --force-reinstall scipy-openblas32)"
        )
    ctypes.CDLL(candidates[0], mode=ctypes.RTLD_GLOBAL)
    return candidates[0]


_OPENBLAS_PATH = _preload_openblas()

# Bump with any change to the compiled modules' functions; checked at import so that Python code
# and compiled modules of different versions are never mixed.
KERNEL_ABI = 1


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



def _import_core():
    """Import _core with a short OpenMP spin-wait for its (the system's) libgomp.

    libgomp reads GOMP_SPINCOUNT once, when it is loaded. Its default lets idle worker threads
    spin for up to ~300k iterations after each parallel region; in a certification loop that
    alternates our kernels with a torch model (which has its own OpenMP runtime), the spinning
    threads of one runtime steal the cores of the other and slowed the loop by 2-3x on a 2-core
    machine. The variable is set only while _core (and with it libgomp) loads, then restored, so
    the user's environment and other runtimes are untouched; an explicit setting is respected.
    """
    saved = os.environ.get("GOMP_SPINCOUNT")
    if saved is None:
        os.environ["GOMP_SPINCOUNT"] = "10000"
    try:
        from . import _core as core
    finally:
        if saved is None:
            os.environ.pop("GOMP_SPINCOUNT", None)
    return core


try:
    _core = _import_core()
except ImportError:
    _installed = _find_installed_build()
    if _installed is None:
        raise ImportError(
            "retrievalguard_fast: the compiled module _core is missing; install the package "
            "(pip install .) rather than importing the source tree"
        ) from None
    sys.modules[__package__].__path__.append(_installed)  # type: ignore[attr-defined]
    _core = _import_core()

if getattr(_core, "kernel_abi", None) != KERNEL_ABI:
    raise ImportError(
        f"retrievalguard_fast: compiled module {_core.__file__} is of another version "
        f"(kernel ABI {getattr(_core, 'kernel_abi', None)}, expected {KERNEL_ABI}); reinstall: pip install ."
    )

try:
    from . import _cuda  # type: ignore[attr-defined]
except ImportError:  # built without a CUDA compiler
    _cuda = None


def cuda_module():
    """The compiled CUDA module, or None when the package was built without CUDA."""
    return _cuda


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
            "blas": "OpenBLAS (scipy-openblas32) " + _openblas_version(),
            "blas_library": _OPENBLAS_PATH,
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


def _openblas_version() -> str:
    try:
        import scipy_openblas32

        return str(scipy_openblas32.__version__)
    except Exception:  # pragma: no cover - informational only
        return "unknown"


def set_cpu_tile_sizes(rows: int, gallery_rows: int) -> None:
    """Set the CPU kernels' tile shape (query rows x gallery rows per sgemm call).

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
