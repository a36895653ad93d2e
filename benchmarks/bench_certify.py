"""Thin wrapper: python benchmarks/bench_certify.py [options] == python -m retrievalguard_fast bench certify [options]."""

import sys

from retrievalguard_fast.bench import run

if __name__ == "__main__":
    run("certify", sys.argv[1:])
