"""Durable files: every file the package writes goes through here, so a kill at any moment (even
SIGKILL, even a power cut after the call returned) leaves either the old or the new content.

- :func:`atomic_write`: write a whole file (reports, run.json, caches, merges) into a temporary
  file beside it, fsync it, rename it over the target, fsync the folder;
- :class:`DurableAppender`: append lines (results.jsonl), each flushed and fsync'ed before the
  call returns.
"""

from __future__ import annotations

import os
from typing import IO, Callable, Optional


def fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (POSIX: the directory entry is data of the directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[IO], None], *, binary: bool = False) -> None:
    """``write(file)`` into ``path`` atomically and durably: a reader never sees a half-written
    file, and once this returns the new content survives a crash. The temporary file keeps the
    target's extension (``name.tmp.ext``) so writers that pick a format by it (matplotlib) work."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{ext}"
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


class DurableAppender:
    """Appends lines to one file, each durable (flush + fsync) before :meth:`write_line` returns;
    the file is opened at the first line."""

    def __init__(self, path: str):
        self.path = path
        self._file: Optional[IO] = None

    def write_line(self, line: str) -> None:
        if self._file is None:
            self._file = open(self.path, "a")
        self._file.write(line + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
