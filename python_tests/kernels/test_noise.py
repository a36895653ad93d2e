import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import stats

import retrievalguard_fast as rgf
import reference
from conftest import requires_cuda, to_kind, to_numpy


def test_matches_float64_box_muller_reference():
    """Every element: the Philox words of (seed, stream, sample, j) through Box-Muller, in
    float64. Our float32 polynomials must agree to float32 accuracy."""
    dim, n, seed, stream, start = 37, 300, 12345678901234, 77, 1000
    x = np.linspace(-1, 1, dim).astype(np.float32)
    out = rgf.gaussian_noise(x, 0.5, n, seed=seed, stream=stream, start=start)
    z = reference.normals(seed, stream, np.arange(start, start + n), dim)
    expected = x.astype(np.float64) + 0.5 * z
    assert out.shape == (n, dim) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=4e-6 * (1 + np.abs(z)).max())


def test_standard_normal_statistics():
    z = rgf.gaussian_noise(np.zeros(1000, np.float32), 1.0, 400, seed=3).ravel().astype(np.float64)
    n = z.size  # 400,000 normals
    assert abs(z.mean()) < 5 / np.sqrt(n)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / n)
    assert abs(stats.skew(z)) < 5 * np.sqrt(6 / n)
    assert abs(stats.kurtosis(z)) < 5 * np.sqrt(24 / n)
    assert stats.kstest(z, "norm").pvalue > 1e-4
    # Pairs from one Box-Muller draw are uncorrelated, and so are neighbouring samples.
    assert abs(np.corrcoef(z[0::2], z[1::2])[0, 1]) < 5 / np.sqrt(n / 2)


def test_sigma_and_x_enter_as_x_plus_sigma_z():
    x = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.float32)
    base = rgf.gaussian_noise(np.zeros_like(x), 1.0, 20, seed=9)
    noisy = rgf.gaussian_noise(x, 0.25, 20, seed=9)
    assert noisy.shape == (20, 3, 5, 7)
    np.testing.assert_allclose(noisy, x + 0.25 * base, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dim", [1, 3, 4, 5, 8191, 8192 + 13, 3 * 64 * 64 + 2])
def test_batch_split_invariance(dim):
    """Copy i depends only on (seed, stream, start + i): any split gives the same bits."""
    x = np.zeros(dim, np.float32)
    whole = rgf.gaussian_noise(x, 1.0, 23, seed=5, stream=2, start=100)
    parts = [rgf.gaussian_noise(x, 1.0, m, seed=5, stream=2, start=100 + s) for s, m in [(0, 1), (1, 10), (11, 12)]]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_streams_and_seeds_differ():
    x = np.zeros(64, np.float32)
    a = rgf.gaussian_noise(x, 1.0, 4, seed=1, stream=0)
    assert not np.array_equal(a, rgf.gaussian_noise(x, 1.0, 4, seed=1, stream=1))
    assert not np.array_equal(a, rgf.gaussian_noise(x, 1.0, 4, seed=2, stream=0))
    assert not np.array_equal(a[1], a[0])


def test_thread_count_invariance(tmp_path):
    code = (
        "import numpy as np, retrievalguard_fast as r, hashlib;"
        "z = r.gaussian_noise(np.zeros(3*32*32, np.float32), 1.0, 300, seed=11);"
        "print(hashlib.sha256(z.tobytes()).hexdigest())"
    )
    digests = set()
    for threads in ("1", "2", "3"):
        env = dict(os.environ, OMP_NUM_THREADS=threads)
        digests.add(subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True, check=True).stdout)
    assert len(digests) == 1


def test_kinds_agree_and_out_is_filled(kind):
    x = np.random.default_rng(4).random((3, 8, 8)).astype(np.float32)
    expected = rgf.gaussian_noise(x, 0.3, 50, seed=8, stream=3)
    xk = to_kind(x, kind)
    got = rgf.gaussian_noise(xk, 0.3, 50, seed=8, stream=3)
    assert type(got) is type(xk)
    if kind == "numpy":
        np.testing.assert_array_equal(got, expected)
    else:
        assert got.device == xk.device
        # CPU and CUDA use the same float32 math (explicit FMAs, our own log/sincos): same bits.
        np.testing.assert_array_equal(to_numpy(got), expected)
    out = to_kind(np.full((50, 3, 8, 8), np.nan, np.float32), kind)
    res = rgf.gaussian_noise(xk, 0.3, 50, seed=8, stream=3, out=out)
    assert res is out
    np.testing.assert_array_equal(to_numpy(out), expected)


def test_other_float_dtypes_and_noncontiguous_x_are_converted():
    x64 = np.random.default_rng(5).random((4, 6))
    expected = rgf.gaussian_noise(x64.astype(np.float32), 1.0, 3, seed=1)
    np.testing.assert_array_equal(rgf.gaussian_noise(x64, 1.0, 3, seed=1), expected)
    xt = torch.from_numpy(np.asfortranarray(x64.astype(np.float32)))  # not C-contiguous
    np.testing.assert_array_equal(rgf.gaussian_noise(xt.t().contiguous().t(), 1.0, 3, seed=1).numpy(), expected)
    np.testing.assert_array_equal(rgf.gaussian_noise(x64.T, 1.0, 3, seed=1), rgf.gaussian_noise(np.ascontiguousarray(x64.T, np.float32), 1.0, 3, seed=1))


BAD = [
    (dict(x=np.zeros(4, np.int32)), TypeError, "x must have a floating dtype"),
    (dict(x=np.array([0.0, np.nan], np.float32)), ValueError, "x contains non-finite"),
    (dict(x=np.array([0.0, np.inf], np.float32)), ValueError, "x contains non-finite"),
    (dict(sigma=0.0), ValueError, "sigma must be a finite number > 0"),
    (dict(sigma=-1.0), ValueError, "sigma must be a finite number > 0"),
    (dict(sigma=float("nan")), ValueError, "sigma must be a finite number > 0"),
    (dict(sigma="1"), TypeError, "sigma must be a real number"),
    (dict(sigma=1e39), ValueError, "sigma must be representable in float32"),
    (dict(sigma=1e-50), ValueError, "sigma must be representable in float32"),
    (dict(out=torch.zeros(2, 4, requires_grad=True), x=torch.zeros(4)), TypeError, "out must not require grad"),
    (dict(n=0), ValueError, r"n must be in \[1,"),
    (dict(n=2.0), TypeError, "n must be an integer"),
    (dict(seed=-1), ValueError, "seed must be in"),
    (dict(stream=2**32), ValueError, "stream must be in"),
    (dict(start=-5), ValueError, "start must be in"),
    (dict(start=2**64 - 2, n=5), ValueError, "start \\+ n - 1 must be below 2\\*\\*64"),
    (dict(out=np.zeros((3, 4), np.float32)), ValueError, r"out must have shape \(2, 4\)"),
    (dict(out=np.zeros((2, 4), np.float64)), TypeError, "out must have dtype"),
    (dict(out=np.zeros((4, 2), np.float32).T), ValueError, "out must be C-contiguous"),
    (dict(out=torch.zeros(2, 4)), TypeError, "out must be a numpy array like x"),
]


@pytest.mark.parametrize("override,exc,match", BAD)
def test_bad_input(override, exc, match):
    args = dict(x=np.zeros(4, np.float32), sigma=1.0, n=2)
    args.update(override)
    x, sigma, n = args.pop("x"), args.pop("sigma"), args.pop("n")
    out = args.get("out")
    before = None if out is None else np.array(to_numpy(out), copy=True)
    with pytest.raises(exc, match=match):
        rgf.gaussian_noise(x, sigma, n, **args)
    if out is not None:  # nothing half-written
        np.testing.assert_array_equal(to_numpy(out), before)


def test_out_overlapping_x_is_refused_and_empty_x_returns_at_once():
    buf = np.zeros((4, 100), np.float32)
    with pytest.raises(ValueError, match="out overlaps x"):
        rgf.gaussian_noise(buf[0], 1.0, 4, out=buf)
    assert rgf.gaussian_noise(np.zeros(0, np.float32), 1.0, 2**40).shape == (2**40, 0)


@requires_cuda
def test_cuda_half_precision_outputs_round_the_float32_result():
    x = torch.rand(3, 16, 16, device="cuda")
    ref = rgf.gaussian_noise(x, 0.5, 8, seed=2)
    for dtype in (torch.float16, torch.bfloat16):
        got = rgf.gaussian_noise(x, 0.5, 8, seed=2, dtype=dtype)
        assert got.dtype == dtype
        torch.testing.assert_close(got, ref.to(dtype), rtol=0, atol=0)


@requires_cuda
def test_cuda_mixed_devices_refused():
    with pytest.raises(ValueError, match="all arrays must be on one device"):
        rgf.gaussian_noise(torch.zeros(4, device="cuda"), 1.0, 2, out=torch.zeros(2, 4))
