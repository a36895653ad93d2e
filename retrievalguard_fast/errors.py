"""User-facing errors: a mistake in the input (arguments, files, folders) or a resource the run
cannot get, reported by the CLI as one line with exit status 2."""

from __future__ import annotations

import contextlib
from typing import Iterator


class InputError(Exception):
    """Bad input or a resource limit the user can change: one line saying what and what to do."""


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's allocators fail with RuntimeError subclasses (torch.OutOfMemoryError on CUDA,
    "DefaultCPUAllocator: can't allocate memory" on the host); numpy with MemoryError."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@contextlib.contextmanager
def out_of_memory_is_input_error(stage: str, lower: str) -> Iterator[None]:
    """Turn running out of host or GPU memory inside the block into one InputError naming the
    stage and what to lower. Results already saved stay saved (they were written as they came)."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        where = "GPU" if "CUDA" in str(exc) or "cuda" in type(exc).__name__.lower() else "host"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"out of {where} memory while {stage} ({first[:160]}); lower {lower}") from exc
