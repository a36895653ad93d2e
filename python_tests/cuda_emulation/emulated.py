"""Loading an emulated ``_cuda`` module (emulation_build.py) and driving the package's CUDA path
with it.

:class:`Emulation` is one built variant: ``module`` is the emulated ``_cuda`` (the same
functions as the real one, on host pointers), and the ctypes handle on the same shared object
reaches the emulator's controls (scheduling mode and order, the SM count the host code plans
with, the faults it reported) and the harness's probe kernels (probes.cu).

:func:`cuda_path` makes the package's own CUDA path run on CPU tensors: the kernels layer
(``kernels/nn.py``, ``noise.py``, ``screen.py``) -> :class:`CudaBackend` -> the emulated module.
Only what decides *where* tensors live is patched (the device kind of a call, ``_place``'s
stream); everything from the argument checks to the backend's pointer handling runs as it does
for CUDA tensors.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.machinery
import importlib.util
from typing import Iterator

import numpy as np

import emulation_build as build

FIBERS, THREADS = 0, 1


class Emulation:
    def __init__(self, path: str, name: str):
        loader = importlib.machinery.ExtensionFileLoader("_cuda", path)
        spec = importlib.util.spec_from_file_location(f"rgf_emulated_{name}._cuda", path, loader=loader)
        self.module = importlib.util.module_from_spec(spec)
        loader.exec_module(self.module)
        self.path = path
        self.lib = ctypes.CDLL(path)  # the same loaded object: dlopen returns the module's handle
        self.lib.rgf_emu_configure.argtypes = [ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int]
        self.lib.rgf_emu_report.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        self.lib.rgf_emu_report.restype = ctypes.c_size_t
        self.lib.rgf_emu_launches.restype = ctypes.c_uint64
        self.lib.rgf_emu_blocks.restype = ctypes.c_uint64
        self.configure()

    def configure(self, mode: int = FIBERS, block_seed: int = 0, thread_seed: int = 0, sm_count: int = 132) -> None:
        self.lib.rgf_emu_configure(mode, block_seed, thread_seed, sm_count)

    def report(self) -> str:
        n = self.lib.rgf_emu_report(None, 0)
        buf = ctypes.create_string_buffer(n + 1)
        self.lib.rgf_emu_report(buf, n + 1)
        return buf.value.decode()

    def reset(self) -> None:
        self.lib.rgf_emu_reset()

    def launches(self) -> int:
        return int(self.lib.rgf_emu_launches())

    def probe(self, name: str, *args) -> int:
        """Calls probe_<name> (probes.cu) with numpy arrays as pointers; returns its cudaError_t."""
        fn = getattr(self.lib, "probe_" + name)
        fn.restype = ctypes.c_int
        conv = []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous
                conv.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, float):
                conv.append(ctypes.c_double(a))
            else:
                conv.append(ctypes.c_int64(a))  # a full register: right for int, int64_t and size_t parameters
        return int(fn(*conv))


_loaded: dict = {}


def load(variant: str = "fibers", mutant=None, mutant_name: str = "") -> Emulation:
    """The emulated module of a variant (built once per process, cached on disk across runs)."""
    key = (variant, mutant_name)
    if key not in _loaded:
        _loaded[key] = Emulation(build.build(variant, mutant, mutant_name), f"{variant}_{mutant_name or 'real'}")
    return _loaded[key]


@contextlib.contextmanager
def cuda_path(emulation: Emulation) -> Iterator[None]:
    """Within the block, the package's ops treat CPU tensors as CUDA tensors and run them through
    ``CudaBackend`` on the emulated module (numpy inputs still take the CPU path)."""
    import torch

    from retrievalguard_fast.kernels import arrays, backend

    saved = (backend._cuda, backend._CUDA_BACKEND, backend.CudaBackend._place, arrays.is_cuda, arrays.check_same_device)
    original_check = arrays.check_same_device

    def check_same_device(op, named):
        kind = original_check(op, named)  # refuses mixed devices as usual
        tensors = [a for a in named.values() if a is not None and isinstance(a, torch.Tensor)]
        return "cuda" if tensors and all(isinstance(a, torch.Tensor) for a in named.values() if a is not None) else kind

    try:
        backend._cuda = emulation.module
        backend._CUDA_BACKEND = backend.CudaBackend()
        backend.CudaBackend._place = staticmethod(lambda t: (0, 0))  # device 0, the default stream
        arrays.is_cuda = lambda a: isinstance(a, torch.Tensor)
        arrays.check_same_device = check_same_device
        yield
    finally:
        (backend._cuda, backend._CUDA_BACKEND, backend.CudaBackend._place, arrays.is_cuda,
         arrays.check_same_device) = saved
