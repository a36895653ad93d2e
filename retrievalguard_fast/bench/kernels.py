"""Kernel benchmark: retrievalguard_fast against numpy, torch and faiss on the same data, in one run.

    python -m retrievalguard_fast bench kernels                  # defaults of the issue, about a minute on 2 cores
    python -m retrievalguard_fast bench kernels --rows 2000      # smaller
    python -m retrievalguard_fast bench kernels --json out.json  # also write the figures

A second nn_vote table compares its modes (exact; screened by a TF32 or bf16 tensor-core matmul
and verified, see nn_vote_screened) with torch's float32 matmul + argmin and with unverified
low-precision argmins, and reports how often each one's nearest item differs from exact mode.

For each kernel: correctness is checked against the baseline first, then every contender is
warmed up and timed (best of --repeat; CUDA timings synchronise before reading the clock).
Prints the hardware, each time, the ratio against ours (baseline time / our time, so >1x means we
are faster) and the fraction of the machine's ceiling we reach: for nn_vote, FLOP/s (2 n N k)
against a measured float32 matmul rate; for gaussian_noise, bytes written per second against a
measured memory copy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time

import numpy as np
import torch

from .. import kernels
from ..kernels import build_info, has_cuda, screen


def best_time(fn, repeat, sync=None):
    fn()  # warm-up
    if sync:
        sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware():
    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "threads_used": build_info()["cpu"]["threads"],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
    }
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        info["faiss"] = None
    if has_cuda():
        info["gpu"] = torch.cuda.get_device_name()
    return info


# ----------------------------------------------------------------------------- baselines


@contextlib.contextmanager
def fp32_matmul():
    """The baselines' float32 matmul: TF32 off (restored afterwards)."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def vote_numpy(e, g, labels, classes, chunk=2048):
    """normalise, matmul per chunk, argmin of |g|^2 - 2 e.g, bincount."""
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    gn = (g * g).sum(1)
    nearest = np.empty(len(e), dtype=np.int64)
    for a in range(0, len(e), chunk):
        nearest[a : a + chunk] = np.argmin(gn[None, :] - 2 * (e[a : a + chunk] @ g.T), axis=1)
    return np.bincount(labels[nearest], minlength=classes), e.sum(0)


def vote_torch(e, g, labels, classes, chunk=2048):
    e = torch.nn.functional.normalize(e, dim=1)
    gn = (g * g).sum(1)
    nearest = torch.empty(len(e), dtype=torch.int64, device=e.device)
    for a in range(0, len(e), chunk):
        nearest[a : a + chunk] = torch.argmin(gn[None, :] - 2 * (e[a : a + chunk] @ g.T), dim=1)
    return torch.bincount(labels[nearest], minlength=classes), e.sum(0, dtype=torch.float64)


def make_faiss_vote(g, labels, classes):
    import faiss

    index = faiss.IndexFlatL2(g.shape[1])
    index.add(g)

    def run(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        _, nearest = index.search(e, 1)
        return np.bincount(labels[nearest[:, 0]], minlength=classes), e.sum(0)

    return run


# ----------------------------------------------------------------------------- ceilings


def matmul_rate(device, size=4096, repeat=3):
    """Measured float32 matmul FLOP/s: the compute ceiling nn_vote is compared against."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else None
    t = best_time(lambda: a @ b, repeat, sync)
    return 2 * size**3 / t


def copy_rate(device, nbytes=1 << 29, repeat=5):
    """Measured memory copy bandwidth (bytes read + written per second)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    sync = torch.cuda.synchronize if device == "cuda" else None
    t = best_time(lambda: dst.copy_(src), repeat, sync)
    return 2 * nbytes / t


# ----------------------------------------------------------------------------- benchmarks


def row(name, seconds, ours_seconds, extra=""):
    ratio = seconds / ours_seconds
    return {"contender": name, "seconds": seconds, "ratio": ratio, "note": extra}


def print_table(title, rows, ceiling_text):
    print(f"\n{title}")
    print(f"  {'contender':<34}{'time':>12}{'ours vs it':>12}  note")
    for r in rows:
        print(f"  {r['contender']:<34}{r['seconds'] * 1e3:>10.1f}ms{r['ratio']:>11.2f}x  {r['note']}")
    print(f"  {ceiling_text}")


def bench_nn_vote_cpu(args, rng):
    n, N, k, C = args.rows, args.gallery, args.dim, args.classes
    e = rng.standard_normal((n, k)).astype(np.float32)
    g = rng.standard_normal((N, k)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    labels = rng.integers(0, C, size=N)

    # Correctness first, on a slice: our votes against numpy's (identical up to near ties).
    m = min(n, 500)
    ours_c, ours_s = kernels.nn_vote(e[:m], g, labels, C)
    ref_c, ref_s = vote_numpy(e[:m], g, labels, C)
    assert abs(ours_c - ref_c).sum() <= 2, "nn_vote disagrees with numpy"
    assert np.allclose(ours_s, ref_s, atol=1e-3), "nn_vote embedding sum disagrees with numpy"

    t_ours = best_time(lambda: kernels.nn_vote(e, g, labels, C), args.repeat)
    results = [row("retrievalguard_fast nn_vote", t_ours, t_ours, f"{build_info()['cpu']['threads']} threads")]
    if not args.skip_numpy:
        results.append(row("numpy matmul+argmin+bincount", best_time(lambda: vote_numpy(e, g, labels, C), 1), t_ours))
    et, gt, lt = torch.from_numpy(e), torch.from_numpy(g), torch.from_numpy(labels)
    results.append(row("torch cpu mm+argmin+bincount", best_time(lambda: vote_torch(et, gt, lt, C), args.repeat), t_ours,
                       f"{torch.get_num_threads()} threads"))
    try:
        faiss_vote = make_faiss_vote(g, labels, C)
        fc, _ = faiss_vote(e[:m])
        assert abs(fc - ref_c).sum() <= 2, "faiss disagrees with numpy"
        results.append(row("faiss-cpu IndexFlatL2 k=1+bincount", best_time(lambda: faiss_vote(e), args.repeat), t_ours))
    except ImportError:
        print("  (faiss-cpu not installed: pip install faiss-cpu)")
    flops = 2.0 * n * N * k
    peak = matmul_rate("cpu")
    ceiling = f"ours: {flops / t_ours / 1e9:.1f} GFLOP/s = {flops / t_ours / peak:.0%} of torch's measured 4096^3 float32 matmul {peak / 1e9:.1f} GFLOP/s"
    print_table(f"nn_vote CPU: {n} embeddings x {N} gallery x {k} dims, {C} classes", results, ceiling)
    out = [{"kernel": "nn_vote", "device": "cpu", "shape": [n, N, k, C], "results": results,
            "gflops": flops / t_ours / 1e9, "ceiling_gflops": peak / 1e9}]
    if args.modes:
        m = min(n, args.modes_rows)
        for data in args.modes_data:
            out.append(bench_nn_vote_modes(modes_embeddings(m, gt, data), gt, lt, C, 1, check_rows=2000, data=data))
    return out


def lowprec_argmin(e_unit, g, precision, chunk=8192):
    """Nearest rows by a plain tensor-core matmul + argmin, unverified (what the screen guards against)."""
    gn = (g * g).sum(1)
    nearest = torch.empty(len(e_unit), dtype=torch.int64, device=e_unit.device)
    with screen.screen_matmul_precision(e_unit.device, precision):
        gs = screen.screen_operand(g, precision)
        for a in range(0, len(e_unit), chunk):
            scores = torch.mm(screen.screen_operand(e_unit[a : a + chunk], precision), gs.T).float()
            nearest[a : a + chunk] = torch.argmin(gn[None, :] - 2 * scores, dim=1)
    return nearest


def modes_embeddings(n, g, data, seed=0):
    """Embeddings for the mode table: "random" (standard normal rows) or "near" (a random gallery
    row plus N(0, 0.05^2) per coordinate, like the noisy samples of a query close to its items)."""
    gen = torch.Generator(device=g.device).manual_seed(seed)
    if data == "random":
        return torch.randn(n, g.shape[1], generator=gen, device=g.device)
    idx = torch.randint(0, len(g), (n,), generator=gen, device=g.device)
    return g[idx] + 0.05 * torch.randn(n, g.shape[1], generator=gen, device=g.device)


def bench_nn_vote_modes(e, g, labels, C, repeat, check_rows, data="random"):
    """nn_vote's exact and screened (TF32 / bf16 tensor-core) modes against torch float32
    (TF32 off) matmul + argmin + bincount, on the same unit-norm embeddings. For each mode: time,
    speed-up over that baseline, the fraction of rows the screen left to the exact search, and
    the fraction of rows (of the first check_rows) whose nearest item differs from exact mode."""
    dev = e.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    e_unit = torch.nn.functional.normalize(e, dim=1)  # normalize=False below: nn_search ranks by the same key
    n = len(e_unit)
    check_rows = min(check_rows, n)
    exact_nearest = kernels.nn_search(e_unit[:check_rows], g)[0]
    exact_counts, exact_sum = kernels.nn_vote(e_unit, g, labels, C, normalize=False)

    with fp32_matmul():
        t_base = best_time(lambda: vote_torch(e_unit, g, labels, C, chunk=8192), repeat, sync)
    rows = [{"mode": "torch fp32 mm+argmin+bincount (baseline)", "seconds": t_base, "undecided": None, "differs": None}]
    t = best_time(lambda: kernels.nn_vote(e_unit, g, labels, C, normalize=False, check=False), repeat, sync)
    rows.append({"mode": "ours exact (fp32, fixed order)", "seconds": t, "undecided": None, "differs": 0.0})
    for precision in screen.SCREEN_PRECISIONS:
        r = screen.nn_vote_screened(e_unit, g, labels, C, precision=precision, normalize=False)
        assert bool((r.counts == exact_counts).all()) and bool((r.embedding_sum == exact_sum).all()), \
            f"screened {precision} disagrees with exact mode"
        differs = float((r.nearest[:check_rows] != exact_nearest).double().mean())
        t = best_time(lambda: screen.nn_vote_screened(e_unit, g, labels, C, precision=precision, normalize=False,
                                                    check=False), repeat, sync)
        rows.append({"mode": f"ours screened {precision} (verified)", "seconds": t,
                     "undecided": r.undecided_rows / n, "differs": differs})
    for precision in screen.SCREEN_PRECISIONS:
        differs = float((lowprec_argmin(e_unit[:check_rows], g, precision) != exact_nearest).double().mean())
        t = best_time(lambda: torch.bincount(labels[lowprec_argmin(e_unit, g, precision)], minlength=C), repeat, sync)
        rows.append({"mode": f"torch {precision} mm+argmin (unverified)", "seconds": t, "undecided": None,
                     "differs": differs})
    for r in rows:
        r["speedup_vs_baseline"] = t_base / r["seconds"]
    print(f"\nnn_vote modes ({dev.type}, {data} embeddings): {n} x {len(g)} x {g.shape[1]}; speed-up over the torch fp32 baseline; "
          f"'differs' = nearest item differs from exact mode (first {check_rows} rows)")
    print(f"  {'mode':<42}{'time':>11}{'speed-up':>10}{'undecided':>11}{'differs':>10}")
    for r in rows:
        und = "" if r["undecided"] is None else f"{r['undecided']:.2%}"
        dif = "" if r["differs"] is None else f"{r['differs']:.3%}"
        print(f"  {r['mode']:<42}{r['seconds'] * 1e3:>9.1f}ms{r['speedup_vs_baseline']:>9.2f}x{und:>11}{dif:>10}")
    return {"kernel": "nn_vote modes", "device": dev.type, "data": data, "shape": [n, len(g), g.shape[1], C],
            "modes": rows}


def bench_noise_cpu(args):
    shape = tuple(args.noise_shape)
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    n = args.noise_samples
    out = np.empty((n,) + shape, np.float32)
    z = kernels.gaussian_noise(x, 1.0, 2000, seed=1)
    assert abs(float((z - x).mean())) < 0.01 and abs(float((z - x).std()) - 1) < 0.01
    t_ours = best_time(lambda: kernels.gaussian_noise(x, 0.25, n, seed=1, out=out), args.repeat)
    results = [row("retrievalguard_fast gaussian_noise", t_ours, t_ours, "x + sigma z, out= buffer")]
    xt = torch.from_numpy(x)
    buf = torch.empty((n,) + shape)
    results.append(row("torch.randn (normals only)", best_time(lambda: torch.randn((n,) + shape, out=buf), args.repeat), t_ours))
    results.append(row("torch randn + x (the noisy batch)", best_time(lambda: torch.randn((n,) + shape, out=buf).mul_(0.25).add_(xt), args.repeat), t_ours))
    results.append(row("numpy Generator.standard_normal", best_time(lambda: np.random.default_rng(1).standard_normal((n,) + shape, dtype=np.float32), 1), t_ours))
    bw = copy_rate("cpu")
    written = 4.0 * n * np.prod(shape)
    ceiling = (f"ours: {written / t_ours / 1e9:.2f} GB/s written ({n * np.prod(shape) / t_ours / 1e9:.2f} G normals/s) = "
               f"{written / t_ours / bw:.0%} of measured copy bandwidth {bw / 1e9:.1f} GB/s (read+write)")
    print_table(f"gaussian_noise CPU: {n} copies of {shape}", results, ceiling)
    return {"kernel": "gaussian_noise", "device": "cpu", "shape": [n, *shape], "results": results}


def bench_cuda(args, rng):
    dev = "cuda"
    sync = torch.cuda.synchronize
    n, N, k, C = args.cuda_rows, args.gallery, args.dim, args.classes
    e = torch.randn(n, k, device=dev)
    g = torch.nn.functional.normalize(torch.randn(N, k, device=dev), dim=1)
    labels = torch.randint(0, C, (N,), device=dev)
    ours_c, _ = kernels.nn_vote(e[:2000], g, labels, C)
    ref_c, _ = vote_torch(e[:2000], g, labels, C)
    assert int((ours_c - ref_c).abs().sum()) <= 4, "CUDA nn_vote disagrees with torch"
    with fp32_matmul():
        t_ours = best_time(lambda: kernels.nn_vote(e, g, labels, C, check=False), args.repeat, sync)
        results = [row("retrievalguard_fast nn_vote (CUDA)", t_ours, t_ours, "fp32 FFMA tiles")]
        results.append(row("torch mm+argmin+bincount (cuBLAS)", best_time(lambda: vote_torch(e, g, labels, C, chunk=8192), args.repeat, sync), t_ours, "TF32 off"))
        flops = 2.0 * n * N * k
        peak = matmul_rate(dev, 8192)
    print_table(f"nn_vote CUDA ({torch.cuda.get_device_name()}): {n} x {N} x {k}", results,
                f"ours: {flops / t_ours / 1e12:.2f} TFLOP/s = {flops / t_ours / peak:.0%} of measured fp32 matmul {peak / 1e12:.1f} TFLOP/s")
    out = [{"kernel": "nn_vote", "device": "cuda", "shape": [n, N, k, C], "results": results}]
    if args.modes:
        for data in args.modes_data:
            out.append(bench_nn_vote_modes(modes_embeddings(n, g, data), g, labels, C, args.repeat, check_rows=20_000,
                                           data=data))

    shape = tuple(args.noise_shape)
    x = torch.rand(shape, device=dev)
    m = args.cuda_noise_samples
    buf = torch.empty((m,) + shape, device=dev)
    z = kernels.gaussian_noise(x, 1.0, 2000, seed=1)
    assert abs(float((z - x).std()) - 1) < 0.01
    t_ours = best_time(lambda: kernels.gaussian_noise(x, 0.25, m, seed=1, out=buf), args.repeat, sync)
    results = [row("retrievalguard_fast gaussian_noise (CUDA)", t_ours, t_ours)]
    results.append(row("torch.randn (normals only)", best_time(lambda: torch.randn((m,) + shape, device=dev, out=buf), args.repeat, sync), t_ours))
    results.append(row("torch randn + x", best_time(lambda: torch.randn((m,) + shape, device=dev, out=buf).mul_(0.25).add_(x), args.repeat, sync), t_ours))
    bw = copy_rate(dev, 1 << 30)
    written = 4.0 * m * np.prod(shape)
    print_table(f"gaussian_noise CUDA: {m} copies of {shape}", results,
                f"ours: {written / t_ours / 1e9:.0f} GB/s written = {written / t_ours / bw:.0%} of measured copy bandwidth {bw / 1e9:.0f} GB/s")
    out.append({"kernel": "gaussian_noise", "device": "cuda", "shape": [m, *shape], "results": results})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=20_000, help="noisy embeddings per nn_vote call (CPU)")
    p.add_argument("--gallery", type=int, default=60_000, help="gallery rows")
    p.add_argument("--dim", type=int, default=128, help="embedding dimension")
    p.add_argument("--classes", type=int, default=11_000, help="label classes")
    p.add_argument("--noise-samples", type=int, default=20_000, help="noisy copies (CPU)")
    p.add_argument("--noise-shape", type=int, nargs="+", default=[3, 32, 32], help="shape of x")
    p.add_argument("--cuda-rows", type=int, default=100_000)
    p.add_argument("--cuda-noise-samples", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--no-modes", dest="modes", action="store_false",
                   help="skip the exact vs screened (TF32/bf16 tensor-core) nn_vote mode table")
    p.add_argument("--modes-rows", type=int, default=2000, help="embeddings for the mode table on the CPU")
    p.add_argument("--modes-data", nargs="+", choices=["random", "near"], default=["random", "near"],
                   help="embeddings of the mode table: random rows and/or noisy copies of gallery rows")
    p.add_argument("--skip-numpy", action="store_true", help="skip the (slow) numpy nn_vote baseline")
    p.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)

    hw = hardware()
    print("hardware: " + ", ".join(f"{k}={v}" for k, v in hw.items()))
    print("build:    " + json.dumps(build_info()["cpu"] | {"cuda": build_info()["cuda"]}, default=str))
    rng = np.random.default_rng(0)
    report = {"date": time.strftime("%Y-%m-%d"), "hardware": hw, "benchmarks": []}
    if args.device in ("cpu", "all"):
        report["benchmarks"].extend(bench_nn_vote_cpu(args, rng))
        report["benchmarks"].append(bench_noise_cpu(args))
    if args.device in ("cuda", "all"):
        if has_cuda():
            report["benchmarks"].extend(bench_cuda(args, rng))
        else:
            print("\nCUDA: no usable GPU here (has_cuda() is False); CUDA benchmarks skipped")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=float)


if __name__ == "__main__":
    main()
