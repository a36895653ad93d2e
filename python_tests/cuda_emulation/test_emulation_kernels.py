"""The package's CUDA code (csrc/cuda, csrc/bind_cuda.cpp and the Python CudaBackend), executed
under the CUDA emulation, bit for bit against the CPU backend: noise in every output dtype,
Philox blocks, the exact search and vote, the screened vote and its raw screen kernel, on odd
sizes, ties, exclusions and bad input, with several device sizes (the host code splits the
gallery into segments by the SM count) and scheduling orders."""

import numpy as np
import pytest
import torch

import cases
from emulated import THREADS, cuda_path

import retrievalguard_fast as rgf

from emulation_fixtures import emu, emu_contract, emulation_contract, emulation_fibers  # noqa: F401  (fixtures)

pytestmark = pytest.mark.cuda_emulation


# ---------------------------------------------------------------------------- Philox

def test_philox_keeps_its_int32_inputs_alive(emu):
    """The use-after-free found by the emulation: CudaBackend.philox4x32 passed pointers of
    temporaries freed before the kernel ran, so the first rows came out wrong."""
    cases.philox(emu, np.arange(40).reshape(10, 4), [7, 9])


@pytest.mark.parametrize("m", [1, 255, 256, 257, 600])
def test_philox_random_counters_and_keys(emu, m):
    rng = np.random.default_rng(m)
    cases.philox(emu, rng.integers(0, 2**32, (m, 4)), rng.integers(0, 2**32, (m, 2)))


# ---------------------------------------------------------------------------- noise

@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape,n", [((1,), 1), ((3,), 5), ((4,), 2), ((5,), 3), ((2, 3, 7), 4), ((1030,), 3)])
def test_noise_matches_cpu(emu, dtype, shape, n):
    cases.noise(emu, shape, n, seed=12345678901234, stream=77, start=2**32 - 2, dtype=dtype)


def test_noise_large_sigma_and_seed_extremes(emu):
    cases.noise(emu, (9,), 2, seed=2**64 - 1, stream=2**32 - 1, start=2**64 - 2, sigma=3e4)
    cases.noise(emu, (9,), 2, seed=0, stream=0, start=0, sigma=1e-30, dtype=torch.float16)


def test_noise_into_out_buffer(emu):
    x = np.linspace(-1, 1, 13).astype(np.float32)
    cpu = rgf.gaussian_noise(x, 0.5, 4, seed=9)
    out = torch.full((4, 13), float("nan"), dtype=torch.bfloat16)
    with cuda_path(emu):
        got = rgf.gaussian_noise(torch.from_numpy(x), 0.5, 4, seed=9, out=out, dtype=torch.bfloat16)
    assert got is out
    cases.same_bits(out.view(torch.int16), torch.from_numpy(cpu).to(torch.bfloat16).view(torch.int16).numpy(), "out")


# ---------------------------------------------------------------------------- exact search and vote

SHAPES = [(1, 1, 1), (3, 2, 5), (2, 7, 16), (64, 64, 16), (65, 130, 17), (130, 70, 33), (5, 300, 3), (40, 90, 64)]


@pytest.mark.parametrize("rows,gallery_rows,dim", SHAPES)
@pytest.mark.parametrize("sm_count", [1, 132])
def test_nn_search_matches_cpu(emu, rows, gallery_rows, dim, sm_count):
    emu.configure(sm_count=sm_count)  # 132: the gallery is split into segments; 1: one segment
    q, g = cases.problem(rows * 7 + dim, rows, gallery_rows, dim, ties=True)
    cases.nn_search(emu, q, g)
    exclude = (np.arange(rows) * 3 % gallery_rows) - (np.arange(rows) % 4 == 0)
    cases.nn_search(emu, q, g, exclude=exclude.astype(np.int64))
    cases.nn_search(emu, q, g, exclude=gallery_rows - 1)


def test_nn_search_no_rows_and_one_gallery_row(emu):
    q, g = cases.problem(5, 0, 3, 4)
    cases.nn_search(emu, q, g)
    q, g = cases.problem(5, 9, 1, 4)
    cases.nn_search(emu, q, g)  # no second neighbour: index -1, distance inf
    cases.nn_search(emu, q, g, exclude=0)  # no neighbour at all


@pytest.mark.parametrize("dim", [10, 40])
def test_norms_are_summed_in_index_order(emu, dim):
    """Rows whose float32 norm depends on the order of the float64 sum of squares
    (cases.order_sensitive_rows): the warp sum must add in index order, as the CPU does."""
    g = cases.order_sensitive_rows(30, dim)
    squares = g.astype(np.float64) ** 2  # sequential float64 sums (np.cumsum adds in order):
    in_order = np.cumsum(squares, axis=1)[:, -1].astype(np.float32)
    reversed_order = np.cumsum(squares[:, ::-1], axis=1)[:, -1].astype(np.float32)
    assert (in_order != reversed_order).all()  # the order really matters for these rows
    q, _ = cases.problem(dim, 20, 1, dim)
    cases.nn_search(emu, q, g)
    cases.nn_search(emu, g, g)
    cases.nn_vote(emu, g, g, np.arange(30) % 4, 4, normalize=True)


def test_nn_search_large_and_tiny_values(emu):
    q, g = cases.problem(11, 20, 33, 9, scale=1e17)
    cases.nn_search(emu, q, g)
    q, g = cases.problem(12, 20, 33, 9, scale=1e-20)
    cases.nn_search(emu, q, g)


@pytest.mark.parametrize("rows,gallery_rows,dim", [(1, 2, 1), (33, 65, 7), (64, 129, 31), (200, 40, 300)])
@pytest.mark.parametrize("normalize", [True, False])
def test_nn_vote_matches_cpu(emu, rows, gallery_rows, dim, normalize):
    q, g = cases.problem(rows + gallery_rows, rows, gallery_rows, dim, ties=True)
    if not normalize:
        q, g = cases.unit_rows(q), cases.unit_rows(g)
    q[0] = 0.0  # a zero row stays zero when normalising
    labels = (np.arange(gallery_rows) * 7) % 5
    cases.nn_vote(emu, q, g, labels, 5, normalize=normalize)
    cases.nn_vote(emu, q, g, labels, 6, exclude=np.arange(rows, dtype=np.int64) % gallery_rows, normalize=normalize)


# ---------------------------------------------------------------------------- screened vote

@pytest.mark.parametrize("precision", ["tf32", "bf16"])
@pytest.mark.parametrize("candidates", [1, 4, 16])
def test_screened_vote_matches_cpu_on_near_ties(emu, precision, candidates):
    q, g, labels = cases.clustered(candidates, 48, 10, 6, 40)
    undecided = cases.screened(emu, q, g, labels, 5, precision, candidates)
    cases.screened(emu, q, g, labels, 5, precision, candidates, exclude=np.arange(48, dtype=np.int64) % 60)
    if candidates == 1:
        assert undecided > 0  # the exact fallback ran


@pytest.mark.parametrize("gallery_rows", [1, 5, 16, 17, 33, 200])
def test_screen_on_odd_gallery_sizes(emu, gallery_rows):
    q, g = cases.problem(gallery_rows, 37, gallery_rows, 23)
    labels = np.arange(gallery_rows) % 3
    cases.screened(emu, q, g, labels, 3, "tf32", 8, normalize=True)


# ---------------------------------------------------------------------------- bad input

def test_bad_input_is_reported_with_the_cpu_message(emu):
    q, g = cases.problem(3, 10, 12, 6)
    labels = np.arange(12) % 3
    bad_q = q.copy()
    bad_q[4, 2] = np.nan
    assert "queries row 4" in cases.same_error(emu, "nn_search", bad_q, g)
    bad_g = g.copy()
    bad_g[7, 0] = np.inf
    assert "gallery row 7" in cases.same_error(emu, "nn_search", q, bad_g)
    assert "embeddings row 4" in cases.same_error(emu, "nn_vote", bad_q, g, labels, 3)
    bad_labels = labels.copy()
    bad_labels[5] = 3
    assert "gallery_labels[5] = 3" in cases.same_error(emu, "nn_vote", q, g, bad_labels, 3)
    assert "> 1" in cases.same_error(emu, "nn_vote", q * 2, cases.unit_rows(g), labels, 3, normalize=False)
    big = q.copy()
    big[1] = 1e19
    assert "too large" in cases.same_error(emu, "nn_search", big, g)
    assert "gallery_labels[5]" in cases.same_error(emu, "nn_vote_screened", cases.unit_rows(q), g, bad_labels, 3,
                                                   precision="bf16")


def test_unchecked_bad_rows_cast_no_vote(emu):
    """check=False on CUDA: bad rows are left out of the votes (the CPU always checks)."""
    q, g = cases.problem(4, 10, 12, 6)
    q[[2, 5]] = np.nan
    with cuda_path(emu):
        counts, _ = rgf.nn_vote(torch.from_numpy(q), torch.from_numpy(g), torch.arange(12) % 3, 3, check=False)
    good = np.delete(q, [2, 5], axis=0)
    expected, _ = rgf.nn_vote(good, g, np.arange(12) % 3, 3)
    cases.same_bits(counts, expected, "counts without the bad rows")


# ---------------------------------------------------------------------------- scheduling orders

@pytest.mark.parametrize("block_seed,thread_seed", [(1, 0), (0, 2), (3, 4)])
def test_random_block_and_thread_orders(emu, block_seed, thread_seed):
    emu.configure(block_seed=block_seed, thread_seed=thread_seed)
    assert cases.smoke(emu) > 0
    q, g = cases.problem(8, 130, 200, 20, ties=True)
    cases.nn_search(emu, q, g)


def test_os_threads(emu):
    """One OS thread per CUDA thread (the mode ThreadSanitizer runs): same bits."""
    emu.configure(mode=THREADS)
    q, g = cases.problem(9, 20, 70, 18, ties=True)
    cases.nn_search(emu, q, g)
    cases.nn_vote(emu, q, g, np.arange(70) % 3, 3)
    cases.philox(emu, np.arange(40).reshape(10, 4), [7, 9])


def test_kernels_really_ran(emu):
    before = emu.launches()
    q, g = cases.problem(1, 5, 6, 7)
    cases.nn_search(emu, q, g)
    assert emu.launches() - before == 4  # row terms, gallery norms, tiles, merge
