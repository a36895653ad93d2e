"""Thin wrapper: python benchmarks/bench_kernels.py [options] == python -m retrievalguard_fast bench kernels [options]."""

import sys

from retrievalguard_fast.bench import run

if __name__ == "__main__":
    run("kernels", sys.argv[1:])
