"""Benchmarks behind ``python -m retrievalguard_fast bench`` (thin wrappers live in benchmarks/).

Each one measures the competitor in the same run and prints ratios; figures are recorded in
benchmarks/RESULTS.md. ``kernels``: nn_vote and gaussian_noise against numpy, torch and faiss;
``certify``: the whole certifier against the model alone and a plain-torch loop (digits, or the
paper-sized ResNet-50 workload on a GPU); ``sequential``: sequential against fixed-n
certification; ``model-stage``: the model-stage options (bf16, channels-last, compile, batch size);
``data``: images decoded per second beside model samples per second, and peak memory over a small
and a large image gallery. What they share (the ``hardware: ...`` line, device synchronisation,
the timers) is in :mod:`.common`.
"""

NAMES = ("kernels", "certify", "sequential", "model-stage", "data")


def run(name: str, argv) -> None:
    if name == "kernels":
        from .kernels import main
    elif name == "certify":
        from .certify import main
    elif name == "sequential":
        from .sequential import main
    elif name == "model-stage":
        from .model_stage import main
    elif name == "data":
        from .data import main
    else:
        raise ValueError(f"unknown benchmark {name!r}; expected one of {', '.join(NAMES)}")
    main(argv)
