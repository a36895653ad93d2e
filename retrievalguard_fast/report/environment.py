"""Where a run ran: the device in words and the versions of everything behind its numbers.
One home for the hardware line that the reports and the benchmarks print."""

from __future__ import annotations

import os
import platform

import numpy as np


def versions() -> dict:
    import scipy
    import torch

    from .. import __version__
    from ..kernels import build_info

    return {"retrievalguard_fast": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "python": platform.python_version(), "build": build_info()}


def device_text(device) -> str:
    """``cuda (NVIDIA H100 ...)`` or ``cpu (2 cores, x86_64)``."""
    import torch

    if getattr(device, "type", device) == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} cores, {platform.machine()})"
