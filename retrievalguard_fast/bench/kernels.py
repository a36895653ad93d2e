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
measured memory copy. The CPU and the CUDA runs are one code path each (bench_nn_vote,
bench_noise), parametrised by a Target: the device, its synchronisation, its sizes and which
competitors exist there (numpy and faiss-cpu on the CPU only).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .. import kernels
from ..kernels import build_info, has_cuda, screen
from .common import best_time, print_hardware, sync_for

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
    t = best_time(lambda: a @ b, repeat, sync_for(device))
    return 2 * size**3 / t


def copy_rate(device, nbytes=1 << 29, repeat=5):
    """Measured memory copy bandwidth (bytes read + written per second)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    t = best_time(lambda: dst.copy_(src), repeat, sync_for(device))
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


@dataclass(frozen=True)
class Target:
    """What differs between the CPU and the CUDA run of the kernel benchmarks; everything else is
    one code path. The competitors on host arrays (numpy, faiss-cpu) run on the CPU only, and there
    ours runs on numpy arrays (the arrays those competitors take); on CUDA it runs on device tensors."""

    device: torch.device
    label: str  # in the table titles: "CPU", "CUDA (<GPU name>)"
    suffix: str  # after our contenders' names: "", " (CUDA)"
    sync: Callable[[], None]
    rows: int  # nn_vote embeddings
    noise_samples: int  # gaussian_noise copies
    check_rows: int  # nn_vote rows checked against torch before timing
    ours_note: str
    torch_name: str
    torch_note: str
    torch_chunk: int  # rows per matmul of the torch baseline
    matmul_size: int  # the compute ceiling's square matmul
    copy_bytes: int  # the bandwidth ceiling's copy
    flops: tuple  # (scale, unit, format) of the FLOP/s figures
    modes_rows: int
    modes_repeat: int
    modes_check_rows: int

    @property
    def on_host(self) -> bool:
        return self.device.type == "cpu"


def make_target(name: str, args) -> Target:
    device = torch.device(name)
    if name == "cpu":
        return Target(device, "CPU", "", sync_for(device), args.rows, args.noise_samples, check_rows=500,
                      ours_note=f"{build_info()['cpu']['threads']} threads", torch_name="torch cpu mm+argmin+bincount",
                      torch_note=f"{torch.get_num_threads()} threads", torch_chunk=2048, matmul_size=4096,
                      copy_bytes=1 << 29, flops=(1e9, "GFLOP/s", ".1f"), modes_rows=min(args.rows, args.modes_rows),
                      modes_repeat=1, modes_check_rows=2000)
    return Target(device, f"CUDA ({torch.cuda.get_device_name(device)})", " (CUDA)", sync_for(device), args.cuda_rows,
                  args.cuda_noise_samples, check_rows=2000, ours_note="fp32 FFMA tiles",
                  torch_name="torch mm+argmin+bincount (cuBLAS)", torch_note="TF32 off", torch_chunk=8192,
                  matmul_size=8192, copy_bytes=1 << 30, flops=(1e12, "TFLOP/s", ".2f"), modes_rows=args.cuda_rows,
                  modes_repeat=args.repeat, modes_check_rows=20_000)


def host(a):
    return a.cpu().numpy() if torch.is_tensor(a) else np.asarray(a)


def bench_nn_vote(args, target: Target):
    n, N, k, C = target.rows, args.gallery, args.dim, args.classes
    rng = np.random.default_rng(0)
    e = rng.standard_normal((n, k)).astype(np.float32)
    g = rng.standard_normal((N, k)).astype(np.float32)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    labels = rng.integers(0, C, size=N)
    dev, sync = target.device, target.sync
    et, gt, lt = (torch.from_numpy(a).to(dev) for a in (e, g, labels))
    ours_e, ours_g, ours_labels = (e, g, labels) if target.on_host else (et, gt, lt)

    # The baselines' float32 matmul: TF32 off (on the CPU this changes nothing).
    with fp32_matmul():
        # Correctness first, on a slice: our votes against torch's (identical up to near ties: at
        # most one per 500 rows, and 2) and the embedding sums.
        m = min(n, target.check_rows)
        ties = max(2, m // 500)
        ours_c, ours_s = (host(r) for r in kernels.nn_vote(ours_e[:m], ours_g, ours_labels, C))
        ref_c, ref_s = (host(r) for r in vote_torch(et[:m], gt, lt, C, chunk=target.torch_chunk))
        assert abs(ours_c - ref_c).sum() <= ties, f"nn_vote ({dev.type}) disagrees with torch"
        assert np.allclose(ours_s, ref_s, atol=1e-3), f"nn_vote ({dev.type}) embedding sum disagrees with torch"

        # check=False: on CUDA reading the problem counters back synchronises; the CPU always checks.
        t_ours = best_time(lambda: kernels.nn_vote(ours_e, ours_g, ours_labels, C, check=False), args.repeat, sync)
        results = [row(f"retrievalguard_fast nn_vote{target.suffix}", t_ours, t_ours, target.ours_note)]
        if target.on_host and not args.skip_numpy:
            results.append(row("numpy matmul+argmin+bincount", best_time(lambda: vote_numpy(e, g, labels, C), 1),
                               t_ours))
        results.append(row(target.torch_name, best_time(lambda: vote_torch(et, gt, lt, C, chunk=target.torch_chunk),
                                                        args.repeat, sync), t_ours, target.torch_note))
        if target.on_host:
            try:
                faiss_vote = make_faiss_vote(g, labels, C)
                fc, _ = faiss_vote(e[:m])
                assert abs(fc - ref_c).sum() <= ties, "faiss disagrees with torch"
                results.append(row("faiss-cpu IndexFlatL2 k=1+bincount", best_time(lambda: faiss_vote(e), args.repeat),
                                   t_ours))
            except ImportError:
                print("  (faiss-cpu not installed: pip install faiss-cpu)")
        peak = matmul_rate(dev, target.matmul_size)
    flops = 2.0 * n * N * k
    scale, unit, fmt = target.flops
    ceiling = (f"ours: {flops / t_ours / scale:{fmt}} {unit} = {flops / t_ours / peak:.0%} of torch's measured "
               f"{target.matmul_size}^3 float32 matmul {peak / scale:{fmt}} {unit}")
    print_table(f"nn_vote {target.label}: {n} embeddings x {N} gallery x {k} dims, {C} classes", results, ceiling)
    out = [{"kernel": "nn_vote", "device": dev.type, "shape": [n, N, k, C], "results": results,
            "gflops": flops / t_ours / 1e9, "ceiling_gflops": peak / 1e9}]
    if args.modes:
        for data in args.modes_data:
            out.append(bench_nn_vote_modes(modes_embeddings(target.modes_rows, gt, data), gt, lt, C,
                                           target.modes_repeat, check_rows=target.modes_check_rows, data=data))
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
    sync = sync_for(dev)
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


def bench_noise(args, target: Target):
    shape = tuple(args.noise_shape)
    n, dev, sync = target.noise_samples, target.device, target.sync
    x_host = np.random.default_rng(0).random(shape).astype(np.float32)
    xt = torch.from_numpy(x_host).to(dev)
    buf = torch.empty((n,) + shape, device=dev)
    # Ours and torch write the same buffer (on the CPU ours gets it as a numpy array).
    x, out = (x_host, buf.numpy()) if target.on_host else (xt, buf)
    z = kernels.gaussian_noise(x, 1.0, 2000, seed=1)
    assert abs(float((z - x).mean())) < 0.01 and abs(float((z - x).std()) - 1) < 0.01, \
        f"gaussian_noise ({dev.type}) is not N(x, 1)"
    t_ours = best_time(lambda: kernels.gaussian_noise(x, 0.25, n, seed=1, out=out), args.repeat, sync)
    results = [row(f"retrievalguard_fast gaussian_noise{target.suffix}", t_ours, t_ours, "x + sigma z, out= buffer")]
    results.append(row("torch.randn (normals only)",
                       best_time(lambda: torch.randn((n,) + shape, device=dev, out=buf), args.repeat, sync), t_ours))
    results.append(row("torch randn + x (the noisy batch)",
                       best_time(lambda: torch.randn((n,) + shape, device=dev, out=buf).mul_(0.25).add_(xt),
                                 args.repeat, sync), t_ours))
    if target.on_host:
        results.append(row("numpy Generator.standard_normal",
                           best_time(lambda: np.random.default_rng(1).standard_normal((n,) + shape, dtype=np.float32),
                                     1), t_ours))
    bw = copy_rate(dev, target.copy_bytes)
    written = 4.0 * n * np.prod(shape)
    ceiling = (f"ours: {written / t_ours / 1e9:.2f} GB/s written ({n * np.prod(shape) / t_ours / 1e9:.2f} G normals/s) = "
               f"{written / t_ours / bw:.0%} of measured copy bandwidth {bw / 1e9:.1f} GB/s (read+write)")
    print_table(f"gaussian_noise {target.label}: {n} copies of {shape}", results, ceiling)
    return {"kernel": "gaussian_noise", "device": dev.type, "shape": [n, *shape], "results": results}


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

    hw = print_hardware(faiss=True)
    print("build:    " + json.dumps(build_info()["cpu"] | {"cuda": build_info()["cuda"]}, default=str))
    report = {"date": time.strftime("%Y-%m-%d"), "hardware": hw, "benchmarks": []}
    for name in ("cpu", "cuda"):
        if args.device not in (name, "all"):
            continue
        if name == "cuda" and not has_cuda():
            print("\nCUDA: no usable GPU here (has_cuda() is False); CUDA benchmarks skipped")
            continue
        target = make_target(name, args)
        report["benchmarks"].extend(bench_nn_vote(args, target))
        report["benchmarks"].append(bench_noise(args, target))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=float)


if __name__ == "__main__":
    main()
