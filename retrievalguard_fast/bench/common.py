"""What every benchmark shares: the hardware line, the device's synchronisation and the clock.

- :func:`hardware` / :func:`print_hardware`: where a run ran, one dict and one ``hardware: ...``
  line for every benchmark, built on :mod:`retrievalguard_fast.report.environment`
  (:func:`~retrievalguard_fast.report.environment.device_text`,
  :func:`~retrievalguard_fast.report.environment.versions`) plus the CPU's model name, the threads
  of our kernels and of torch, and the GPU's name;
- :func:`sync_for`: the callable that waits for a device's queued work (a no-op on the CPU);
- :func:`timed` (one call) and :func:`best_time` (warm-up, then the best of ``repeat``), both
  synchronising before they read the clock.

Imports stay light here (torch and the compiled kernels are imported when first needed):
``bench.data``'s peak-memory subprocess imports its model from this package.
"""

from __future__ import annotations

import os
import platform
import time


def _noop():
    pass


def sync_for(device):
    """``torch.cuda.synchronize`` for a CUDA device (a ``torch.device`` or its name), else a no-op."""
    if str(getattr(device, "type", device)).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    return _noop


def timed(fn, sync=None):
    """(seconds, result) of one call of ``fn``; ``sync`` (e.g. :func:`sync_for`'s) runs before
    the clock starts and before it is read."""
    if sync:
        sync()
    t0 = time.perf_counter()
    out = fn()
    if sync:
        sync()
    return time.perf_counter() - t0, out


def best_time(fn, repeat, sync=None):
    """Best seconds of ``repeat`` calls of ``fn`` after one untimed warm-up call."""
    fn()  # warm-up
    if sync:
        sync()
    return min(timed(fn, sync)[0] for _ in range(repeat))


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device=None, *, faiss: bool = False) -> dict:
    """Where a run ran: CPU model, cores, our kernels' threads (``threads_used``), torch's threads,
    the run's device in words (when ``device`` is given), the GPU's name (when a GPU is usable)
    and the versions behind the figures (with ``faiss``: faiss's too, None when not installed)."""
    import torch

    from ..kernels import build_info, has_cuda
    from ..report.environment import device_text, versions

    v = versions()
    info = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads_used": build_info()["cpu"]["threads"],
            "torch_threads": torch.get_num_threads()}
    if device is not None:
        info["device"] = device_text(device)
    info |= {"python": v["python"], "numpy": v["numpy"], "torch": v["torch"],
             "retrievalguard_fast": v["retrievalguard_fast"]}
    if faiss:
        try:
            import faiss as faiss_module

            info["faiss"] = faiss_module.__version__
        except ImportError:
            info["faiss"] = None
    if has_cuda():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def hardware_line(info: dict) -> str:
    return "hardware: " + ", ".join(f"{k}={v}" for k, v in info.items())


def print_hardware(device=None, *, faiss: bool = False) -> dict:
    """Print the ``hardware: ...`` line of :func:`hardware` and return its dict (for a JSON report)."""
    info = hardware(device, faiss=faiss)
    print(hardware_line(info))
    return info
