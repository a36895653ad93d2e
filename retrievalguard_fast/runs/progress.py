"""Progress of a run: a tqdm bar on a terminal, plain log lines (about every 10 s) otherwise (logs
of batch jobs), nothing with ``quiet``; the queries of a run (:class:`Progress`) and the images
of a gallery being embedded (:func:`image_batches`)."""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator


class Progress:
    def __init__(self, total: int, done: int, quiet: bool = False):
        self.total, self.done, self.quiet = total, done, quiet
        self.start = self.last = time.perf_counter()
        self.samples_seen = 0
        self.bar = None
        if not quiet and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="query", dynamic_ncols=True, file=sys.stderr)

    def samples(self, count: int) -> None:
        self.samples_seen += count
        if self.bar is not None:
            rate = self.samples_seen / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} samples/s", refresh=False)

    def query_done(self) -> None:
        self._set_done(self.done + 1)

    def group_total(self, done: int, samples: int) -> None:
        """The totals of a run across ranks (rank 0 shows them): queries done and samples drawn
        by every rank, instead of this process's own. Called often: it prints as rarely as ever."""
        self.samples_seen = samples
        self._set_done(done)

    def _set_done(self, done: int) -> None:
        previous, self.done = self.done, done
        if self.bar is not None:
            if done != previous:
                self.bar.update(done - previous)
            return
        now = time.perf_counter()
        if not self.quiet and (now - self.last >= 10 or (done == self.total and previous < done)):
            elapsed = now - self.start
            rate = self.samples_seen / max(elapsed, 1e-9)
            print(f"[{time.strftime('%H:%M:%S')}] {self.done}/{self.total} queries, {rate:,.0f} samples/s, "
                  f"{elapsed:.0f} s elapsed", file=sys.stderr, flush=True)
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def image_batches(batches: Iterable, total: int, what: str) -> Iterator:
    """``batches`` unchanged, with a progress bar on a terminal; otherwise (logs) one line at the
    end, so that an error while embedding stays the only line."""
    if not sys.stderr.isatty():
        started = time.perf_counter()
        yield from batches
        seconds = time.perf_counter() - started
        print(f"{what}: {seconds:.1f} s, {total / max(seconds, 1e-9):,.0f} images/s", file=sys.stderr, flush=True)
        return
    from tqdm import tqdm

    with tqdm(total=total, unit="image", desc="gallery", dynamic_ncols=True, file=sys.stderr) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch))
