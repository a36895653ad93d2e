"""Shared by every test folder (one per layer of the package: kernels/, smoothing/, attack/,
data/, runs/, cli/): the array kinds the kernel tests run over, the CUDA marker, the digits
model and gallery, and the helpers that run the command line as a user does (a subprocess) and
read what it wrote. Helper models for subprocesses (pausing_model.py, image_model.py) and the
float64 reference kernels (reference.py) live beside this file, which pytest puts on sys.path."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import retrievalguard_fast as rgf

if os.environ.get("RGF_REQUIRE_CUDA") and not rgf.has_cuda():
    # benchmarks/gpu_check.sh: on the GPU machine, GPU tests must run, not skip.
    raise pytest.UsageError("RGF_REQUIRE_CUDA is set but retrievalguard_fast.has_cuda() is False: " + str(rgf.build_info()["cuda"]))

# Array kinds every kernel test runs over: the same expectations pin each backend.
KINDS = ["numpy", "torch"] + (["cuda"] if rgf.has_cuda() else [])


def to_kind(a, kind):
    """numpy array -> the given kind (numpy, CPU tensor, CUDA tensor)."""
    if kind == "numpy":
        return np.asarray(a)
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t.cuda() if kind == "cuda" else t


def to_numpy(a):
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


@pytest.fixture(params=[pytest.param(k, marks=pytest.mark.cuda) if k == "cuda" else k for k in KINDS])
def kind(request):
    return request.param


@pytest.fixture
def small_tiles():
    """Force tiny CPU tiles so small inputs run the tiled and segmented code paths."""
    from retrievalguard_fast.kernels.backend import cpu_tile_sizes

    with cpu_tile_sizes(3, 5):
        yield


def requires_cuda(test):
    """A test that needs a CUDA GPU: marked ``cuda`` (``pytest -m cuda`` selects them, as
    benchmarks/gpu_check.sh does) and skipped without one."""
    skip = pytest.mark.skipif(not rgf.has_cuda(), reason="needs a CUDA GPU and the CUDA module")
    return pytest.mark.cuda(skip(test))


@pytest.fixture(scope="session")
def digits():
    """The shipped sigma=0.25 digits model, its gallery and the digits split."""
    from retrievalguard_fast.demo import load_default_model, load_digits_split

    data = load_digits_split()
    model = load_default_model(0.25)
    return model, rgf.Gallery.from_model(model, data.gallery_x, data.gallery_y), data


# ---------------------------------------------------------------------- the command line in a subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
PAUSING_MODEL = "pausing_model:make"  # python_tests/pausing_model.py


def cli_env(pause_at=None):
    """The environment of a CLI subprocess: this folder importable (for PAUSING_MODEL) and, with
    ``pause_at``, the model told where to pause."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]))
    env.pop("RGF_TEST_PAUSE_AT", None)
    if pause_at is not None:
        env["RGF_TEST_PAUSE_AT"] = pause_at
    return env


def cli(*args, cwd, check=True, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "retrievalguard_fast", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=cli_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def read_results(folder):
    with open(os.path.join(folder, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


def strip_timing(records):
    return sorted(({k: v for k, v in r.items() if k != "seconds"} for r in records), key=lambda r: r["index"])
