"""Thin wrapper: python benchmarks/bench_sequential.py [options] == python -m retrievalguard_fast bench sequential [options]."""

import sys

from retrievalguard_fast.bench import run

if __name__ == "__main__":
    run("sequential", sys.argv[1:])
