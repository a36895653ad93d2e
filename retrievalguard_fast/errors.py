"""User-facing errors: a mistake in the input (arguments, files, folders) or a resource the run
cannot get, one line saying what is wrong and what to change.

The library and the CLI name the same setting differently (``resume=True`` / ``--resume``). An
:class:`InputError` is written once, with ``{name}`` placeholders for such :class:`Term`\\ s:
``str(error)`` speaks the library's words, :meth:`InputError.for_cli` the command line's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Term:
    """One setting as the library spells it and as the command line does."""

    library: str
    flag: str


OUT = Term("out", "--out")
RESUME = Term("resume=True", "--resume")
BATCH_SIZE = Term("batch_size", "--batch-size")
EOT = Term("config.eot", "--eot")
CERTIFIED = Term("certified", "--certified")


class Worded:
    """An exception whose message names settings by :class:`Term`: ``message`` may hold
    ``{name}`` placeholders for the ``terms``; ``str()`` spells them the library's way,
    :meth:`for_cli` as flags."""

    def __init__(self, message: str, **terms: Term):
        self.template, self.terms = message, terms
        super().__init__(self._spell(lambda t: t.library))  # type: ignore[call-arg]

    def _spell(self, spelling) -> str:
        text = self.template
        for name, term in self.terms.items():
            text = text.replace("{" + name + "}", spelling(term))
        return text

    def for_cli(self) -> str:
        """The message with every term spelled as its command-line flag."""
        return self._spell(lambda t: t.flag)


class InputError(Worded, ValueError):
    """Bad input or a resource limit the user can change: one line saying what and what to do.
    A ``ValueError``, so library callers catch it as one; the CLI prints :meth:`for_cli`."""


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's allocators fail with RuntimeError subclasses (torch.OutOfMemoryError on CUDA,
    "DefaultCPUAllocator: can't allocate memory" on the host); numpy with MemoryError."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@contextlib.contextmanager
def out_of_memory_is_input_error(stage: str, lower: str, **terms: Term) -> Iterator[None]:
    """Turn running out of host or GPU memory inside the block into one InputError naming the
    stage and what to lower (``lower`` may hold ``{name}`` placeholders for ``terms``). Results
    already saved stay saved (they were written as they came)."""
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        where = "GPU" if "CUDA" in str(exc) or "cuda" in type(exc).__name__.lower() else "host"
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"out of {where} memory while {stage} ({first[:160]}); lower {lower}", **terms) from exc
