"""Thin wrapper: python benchmarks/bench_model_stage.py [options] == python -m retrievalguard_fast bench model-stage [options]."""

import sys

from retrievalguard_fast.bench import run

if __name__ == "__main__":
    run("model-stage", sys.argv[1:])
