"""A/B of soft_radii's exact pruning of positives on the CLI's main job, in one process.

    python benchmarks/bench_soft_radii_pruning.py [--rounds 2]

Runs `python -m retrievalguard_fast demo` (digits, 360 queries, sequential) alternately with
pruning off and on, and prints each run's certification time, the ratio, and whether every
per-query record is identical (pruning must never change a result).
"""

import argparse
import contextlib
import functools
import io
import json
import re
import shutil
import tempfile

from retrievalguard_fast import cli
from retrievalguard_fast.smoothing import certificates, certify


def run_demo(out):
    shutil.rmtree(out, ignore_errors=True)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cli.main(["demo", "--out", out, "--quiet"])
    seconds = float(re.search(r"certified in ([0-9.]+) s", buf.getvalue()).group(1))
    with open(f"{out}/results.jsonl") as f:
        records = sorted((json.dumps({k: v for k, v in json.loads(line).items() if k != "seconds"}, sort_keys=True)
                          for line in f))
    return seconds, records


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    original = certificates.soft_radii
    times = {False: [], True: []}
    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for prune in (False, True):
                certify.soft_radii = functools.partial(original, prune=prune)
                seconds, records[prune] = run_demo(f"{tmp}/out")
                times[prune].append(seconds)
                print(f"pruning {'on ' if prune else 'off'}: {seconds:.1f} s", flush=True)
    certify.soft_radii = original
    best_off, best_on = min(times[False]), min(times[True])
    print(f"best of {args.rounds}: off {best_off:.1f} s, on {best_on:.1f} s, {best_off / best_on:.2f}x; "
          f"records identical: {records[False] == records[True]}")


if __name__ == "__main__":
    main()
