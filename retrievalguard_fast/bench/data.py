"""Image input benchmark: decoding throughput against the model stage, and peak memory of a run
over a small and a large image gallery.

    python -m retrievalguard_fast bench data                          # decode vs model, CPU
    python -m retrievalguard_fast bench data --memory 2000,20000      # + peak RSS per gallery size

It writes a synthetic image set once (JPEGs of --image-size, a folder per class, under --root)
and measures, in one run:

1. images decoded per second: :func:`~retrievalguard_fast.data.images.iter_images` (Pillow decode,
   resize 256, centre crop 224) with --workers DataLoader workers, and with none;
2. model samples per second: the model on full batches of 3 x 224 x 224 inputs (as certification
   runs it); decoding is not the bottleneck while (1) with workers exceeds (2). Certification
   decodes a query once and then evaluates n noisy copies, so there the margin is n-fold; the
   gallery is decoded and embedded once, one evaluation per image;
3. with --memory N1,N2,...: peak resident memory of ``certify`` (a subprocess per size, the same
   8 queries, gallery = the first N images): the main process and its largest DataLoader worker.
   The target: the largest gallery within 15% of the smallest.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from .common import print_hardware, sync_for, timed

QUERIES = 8


class SmallCNN(torch.nn.Module):
    """A small convolutional embedding network for 3 x 224 x 224 inputs (128-d), seeded: cheap
    enough for a 2-core CPU, so the measurement is about the data path."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 7, stride=4, padding=3), torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 128))

    def forward(self, x):
        return self.net(x)


def small_cnn() -> torch.nn.Module:
    """``--model retrievalguard_fast.bench.data:small_cnn``."""
    return SmallCNN()


def make_model(name: str) -> torch.nn.Module:
    if name == "resnet50":  # the paper's model; needs torchvision (optional)
        from .certify import ResNet50Embedding

        return ResNet50Embedding()
    return SmallCNN()


def write_images(root: str, count: int, size, per_class: int = 5) -> None:
    """Images 0..count-1 (JPEG, random smooth content) in folders of ``per_class``, and one CSV
    list per gallery size asked later; existing files are kept (the set is written once)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    for i in range(count):
        path = os.path.join(root, "images", f"{i // per_class:05d}", f"{i:06d}.jpg")
        coarse = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        img = Image.fromarray(coarse, "RGB").resize((w, h), Image.BILINEAR)
        img.save(path, quality=90)


def write_list(root: str, name: str, first: int, count: int, per_class: int = 5) -> str:
    path = os.path.join(root, name)
    with open(path, "w") as f:
        f.write("path,label\n")
        for i in range(first, first + count):
            f.write(f"images/{i // per_class:05d}/{i:06d}.jpg,{i // per_class}\n")
    return path


def decode_rate(root: str, count: int, workers: int) -> float:
    from ..data.images import Preprocess, iter_images, list_source

    images = list_source(write_list(root, f"decode_{count}.csv", 0, count), "--gallery")
    started = time.perf_counter()
    seen = sum(len(b) for b in iter_images(images, Preprocess(256, 224), batch_size=32, workers=workers, what="bench"))
    assert seen == count
    return count / (time.perf_counter() - started)


def model_rate(model: torch.nn.Module, batch: int, batches: int, device: torch.device) -> float:
    x = torch.rand((batch, 3, 224, 224), device=device)
    model = model.to(device).eval()
    with torch.inference_mode():
        model(x)  # warm-up
        seconds, _ = timed(lambda: [model(x) for _ in range(batches)], sync_for(device))
    return batch * batches / seconds


def peak_memory(root: str, gallery: int, workers: int, batch: int) -> dict:
    """certify (8 queries, the first ``gallery`` images) in a subprocess: its peak RSS (MiB) and
    its largest DataLoader worker's."""
    queries = write_list(root, "queries.csv", 0, QUERIES)
    listed = write_list(root, f"gallery_{gallery}.csv", QUERIES, gallery)
    with tempfile.TemporaryDirectory() as out:
        args = ["certify", "--model", "retrievalguard_fast.bench.data:small_cnn", "--queries", f"list:{queries}",
                "--gallery", f"list:{listed}", "--sigma", "0.25", "--n0", "20", "--n", "200", "--mode", "fixed-n",
                "--batch-size", str(batch), "--workers", str(workers), "--device", "cpu", "--quiet", "--out", out]
        code = ("import resource, sys, json\nfrom retrievalguard_fast.cli import main\n"
                f"rc = main({args!r})\n"
                "print(json.dumps({'rc': rc, 'main_mib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,"
                " 'worker_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))")
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"certify failed for a gallery of {gallery}:\n{proc.stderr}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["rc"] == 0 and len(open(os.path.join(out, "results.jsonl")).readlines()) == QUERIES
    return {"gallery": gallery, "main_mib": report["main_mib"], "worker_mib": report["worker_mib"], "seconds": seconds}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=os.path.join(tempfile.gettempdir(), "rgf-bench-images"),
                   help="where the synthetic images are written (once) and reused")
    p.add_argument("--image-size", default="320x240", help="WxH of the synthetic JPEGs (default 320x240)")
    p.add_argument("--images", type=int, default=1000, help="images decoded for the throughput figure")
    p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)))
    p.add_argument("--model", choices=["small-cnn", "resnet50"], default="small-cnn",
                   help="model of the model-stage figure (resnet50 needs torchvision)")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--batches", type=int, default=5, help="timed model batches")
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory", default="", help="gallery sizes for the peak-memory runs, e.g. 2000,20000")
    p.add_argument("--json")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    size = tuple(int(v) for v in args.image_size.split("x"))
    sizes = [int(v) for v in args.memory.split(",") if v.strip()]
    print_hardware(device)
    write_images(args.root, max([args.images, QUERIES + max(sizes, default=0)]), size)

    decoded = {w: decode_rate(args.root, args.images, w) for w in sorted({0, args.workers})}
    samples = model_rate(make_model(args.model), args.batch_size, args.batches, device)
    print(f"\n  images decoded/s ({size[0]}x{size[1]} JPEG -> resize 256, crop 224; {args.images} images):")
    for w, rate in decoded.items():
        print(f"    {w} workers: {rate:,.0f} images/s")
    print(f"  model samples/s ({args.model}, batch {args.batch_size} x 3 x 224 x 224, {device}): {samples:,.0f}")
    best = decoded[args.workers]
    print(f"  decoding / model stage: {best / samples:.1f}x ({'decoding is not' if best > samples else 'decoding IS'} "
          "the bottleneck of embedding the gallery; a query is decoded once per n noisy samples)")
    memory = []
    for n in sizes:
        memory.append(peak_memory(args.root, n, args.workers, args.batch_size))
        m = memory[-1]
        print(f"  certify, gallery {n:>6} images, {QUERIES} queries: peak RSS {m['main_mib']:.0f} MiB (main), "
              f"{m['worker_mib']:.0f} MiB (largest worker), {m['seconds']:.0f} s")
    if len(memory) >= 2:
        ratio = memory[-1]["main_mib"] / memory[0]["main_mib"]
        print(f"  peak RSS, gallery {sizes[-1]} / gallery {sizes[0]}: {ratio:.3f} (target <= 1.15)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": time.strftime("%Y-%m-%d"), "image_size": size, "decoded_per_s": decoded,
                       "model": args.model, "model_samples_per_s": samples, "memory": memory}, f, indent=2)


if __name__ == "__main__":
    main()
