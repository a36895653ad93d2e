"""The emulator itself (csrc/emulation): each CUDA rule it claims to enforce is broken once by
a probe kernel (probes.cu) and must be reported, each legal pattern must pass, and its
arithmetic (rounding intrinsics, conversions, atomics) is checked against numpy."""

import numpy as np
import pytest

from emulated import THREADS

from emulation_fixtures import emu, emu_contract, emulation_contract, emulation_fibers  # noqa: F401  (fixtures)

pytestmark = pytest.mark.cuda_emulation

SUCCESS, INVALID_VALUE, INVALID_CONFIGURATION, INVALID_HANDLE, LAUNCH_FAILURE = 0, 1, 9, 400, 719


def expect_fault(emu, code, *fragments):
    """The launch failed as a device fault does in CUDA, the report says why, and the fault is
    sticky until the emulator is reset (as a CUDA context is after a fault)."""
    assert code == LAUNCH_FAILURE, f"expected cudaErrorLaunchFailure, got {code}"
    report = emu.report()
    for f in fragments:
        assert f in report, f"{f!r} not in the emulator's report:\n{report}"
    assert emu.probe("launch", 1, 1, 1, 32, 1, 1, 0, 0, np.zeros(1, np.int32)) == LAUNCH_FAILURE
    emu.reset()
    assert emu.probe("launch", 1, 1, 1, 32, 1, 1, 0, 0, np.zeros(1, np.int32)) == SUCCESS


@pytest.fixture(params=["fibers", "threads"])
def mode_emu(request, emu):
    if request.param == "threads":
        emu.configure(mode=THREADS)
    return emu


def test_divergent_syncthreads_is_reported(mode_emu):
    expect_fault(mode_emu, mode_emu.probe("divergent_barrier", np.zeros(64, np.int32)), "divergent __syncthreads()",
                 "probes.cu:")


def test_exited_threads_drop_out_of_barriers(mode_emu):
    out = np.zeros(64, np.int32)
    assert mode_emu.probe("exited_threads", out) == SUCCESS
    np.testing.assert_array_equal(out[:40], (np.arange(40) + 1) % 40)


def test_barrier_against_shuffle_is_a_deadlock(mode_emu):
    expect_fault(mode_emu, mode_emu.probe("barrier_vs_shuffle", np.zeros(64, np.int32)), "deadlock",
                 "16 thread(s) (0, 1, 2, 3, ...) wait at __syncthreads()",
                 "16 thread(s) (16, 17, 18, 19, ...) wait at __shfl_sync(mask 0xffffffff)")


def test_shuffle_values(mode_emu):
    out = np.zeros(7 * 64, np.int32)
    assert mode_emu.probe("shuffle_values", out) == SUCCESS
    t = np.arange(64)
    lane, base = t % 32, t - t % 32
    v = 100 + t
    out = out.reshape(7, 64)
    np.testing.assert_array_equal(out[0], v[base + 3])
    np.testing.assert_array_equal(out[1], v[base + (lane ^ 5)])
    np.testing.assert_array_equal(out[2], np.where(lane >= 2, v - 2, v))
    np.testing.assert_array_equal(out[3], np.where(lane + 7 < 32, v + 7, v))
    np.testing.assert_array_equal(out[4], v[t - t % 8 + 1])
    ballot = [sum(1 << k for k in range(32) if (32 * w + k) % 3 == 0) for w in (0, 1)]
    np.testing.assert_array_equal(out[5].view(np.uint32), np.repeat(np.array(ballot, np.uint32), 32))
    np.testing.assert_array_equal(out[6], 2 * (0.5 + (base + (lane ^ 16))))


def test_mask_without_the_caller_is_reported(mode_emu):
    expect_fault(mode_emu, mode_emu.probe("mask_excludes_caller", np.zeros(32, np.int32)), "does not include it")


def test_divergent_shuffle_is_reported(mode_emu):
    expect_fault(mode_emu, mode_emu.probe("divergent_shuffle", np.zeros(32, np.int32)),
                 "divergent warp operation in warp 0", "lane 0 is at __shfl_sync", "lane 16 at __shfl_sync")


def test_exited_lanes_drop_out_but_cannot_be_read(mode_emu):
    out = np.zeros(32, np.int32)
    assert mode_emu.probe("exited_lanes", out, -1) == SUCCESS
    np.testing.assert_array_equal(out[:16], np.arange(16) ^ 1)
    expect_fault(mode_emu, mode_emu.probe("exited_lanes", out, 20), "reads lane 20, which does not take part")


def test_shared_memory_is_garbage_before_each_block(emu):
    out = np.zeros(3 * 64, np.uint32)
    assert emu.probe("shared_garbage", out, 3) == SUCCESS
    assert (out == 0xFFFFFFFF).all()  # NaN: never the previous block's values (0.0, 1.0)
    emu.configure(thread_seed=5)  # random garbage
    assert emu.probe("shared_garbage", out, 3) == SUCCESS
    assert len(np.unique(out)) > 100 and not np.isin(out, [0, 0x3F800000]).any()


def test_static_shared_memory_limit(emu):
    expect_fault(emu, emu.probe("too_much_static_shared", np.zeros(32, np.float32)), "exceeds the 48 KiB")


@pytest.mark.parametrize("grid,block,shared,optin,code", [
    ((1, 1, 1), (1024, 1, 1), 0, 0, SUCCESS),
    ((1, 1, 1), (1025, 1, 1), 0, 0, INVALID_CONFIGURATION),
    ((1, 1, 1), (32, 32, 2), 0, 0, INVALID_CONFIGURATION),
    ((1, 1, 1), (1, 1, 65), 0, 0, INVALID_CONFIGURATION),
    ((1, 1, 1), (0, 1, 1), 0, 0, INVALID_CONFIGURATION),
    ((0, 1, 1), (32, 1, 1), 0, 0, INVALID_CONFIGURATION),
    ((1, 65535, 1), (1, 1, 1), 0, 0, SUCCESS),
    ((1, 65536, 1), (1, 1, 1), 0, 0, INVALID_CONFIGURATION),
    ((1, 1, 65536), (1, 1, 1), 0, 0, INVALID_CONFIGURATION),
    ((1, 1, 1), (32, 1, 1), 48 * 1024, 0, SUCCESS),
    ((1, 1, 1), (32, 1, 1), 48 * 1024 + 1, 0, INVALID_VALUE),
    ((1, 1, 1), (32, 1, 1), 100 * 1024, 100 * 1024, SUCCESS),
    ((1, 1, 1), (32, 1, 1), 100 * 1024 + 4, 100 * 1024, INVALID_VALUE),
    ((1, 1, 1), (32, 1, 1), 0, 227 * 1024 + 1, 1000 + INVALID_VALUE),
])
def test_launch_limits_of_an_h100(emu, grid, block, shared, optin, code):
    out = np.zeros(1, np.int32)
    assert emu.probe("launch", *grid, *block, shared, optin, out) == code
    assert out[0] == (1 if code == SUCCESS else 0)
    emu.reset()  # forget the opt-in


def test_invalid_stream(emu):
    assert emu.probe("bad_stream", np.zeros(1, np.int32)) == INVALID_HANDLE


def test_runtime_api_on_host_memory(emu):
    out = np.zeros(2 * 64, np.uint8)
    assert emu.probe("runtime", out, 64) == SUCCESS
    assert (out[:64] == 0xFF).all()  # fresh device memory is garbage
    assert (out[64:96] == 7).all() and (out[96:] == 0xFF).all()


@pytest.mark.parametrize("mode", ["fibers", "threads"])
def test_atomics(emu, mode):
    if mode == "threads":
        emu.configure(mode=THREADS)
    i, u, f, d = np.zeros(1, np.int32), np.zeros(1, np.uint64), np.zeros(1, np.float32), np.zeros(1, np.float64)
    assert emu.probe("atomics", 3, 100, i, u, f, d) == SUCCESS
    assert (i[0], u[0], f[0], d[0]) == (300, 900, 150.0, 75.0)


def test_block_and_thread_orders(emu):
    ticket, blocks, threads = np.zeros(2, np.int32), np.zeros(50, np.int32), np.zeros(64, np.int32)
    assert emu.probe("order", 50, 64, ticket, blocks, threads) == SUCCESS
    np.testing.assert_array_equal(blocks, np.arange(50))  # default: index order
    np.testing.assert_array_equal(threads, np.arange(64))
    emu.configure(block_seed=7, thread_seed=8)
    ticket[:] = 0
    assert emu.probe("order", 50, 64, ticket, blocks, threads) == SUCCESS
    assert sorted(blocks) == list(range(50)) and list(blocks) != list(range(50))
    assert sorted(threads) == list(range(64)) and list(threads) != list(range(64))


def rounding(emu, n=4000, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n).astype(np.float32) * np.float32(3)
    b = rng.standard_normal(n).astype(np.float32)
    c = rng.standard_normal(n).astype(np.float32)
    a[:6] = [0.5, 1.5, 2.5, -0.0005, 70000.0, 1e-6]  # ties and overflow for the conversions
    x = rng.standard_normal(n) * 2.0**40
    x[:4] = [0.5, 1.5, -2.5, 2.0**70]
    out32, out64, out16 = np.zeros(4 * n, np.uint32), np.zeros(3 * n, np.int64), np.zeros(2 * n, np.uint16)
    assert emu.probe("rounding", a, b, c, x, n, out32, out64, out16) == SUCCESS
    return a, b, c, x, out32.reshape(4, n), out64.reshape(3, n), out16.reshape(2, n)


def fma32(a, b, c):
    """float32 fma: the exact a*b+c (exact in float64 for float32 inputs up to one rounding of
    the sum, which is then rounded to float32; the double rounding never matters here because the
    float64 sum of a float32 product and a float32 is exact or far from a float32 tie)."""
    return (a.astype(np.float64) * b + c).astype(np.float32)


def test_rounding_intrinsics(emu):
    a, b, c, x, o32, o64, o16 = rounding(emu)
    unfused = (a * b + c).astype(np.float32)  # numpy float32: two roundings
    np.testing.assert_array_equal(o32[0], unfused.view(np.uint32))  # __fadd_rn(__fmul_rn(a, b), c)
    np.testing.assert_array_equal(o32[1], fma32(a, b, c).view(np.uint32))  # fmaf
    assert (o32[0] != o32[1]).sum() > 100  # the two really differ on these inputs
    np.testing.assert_array_equal(o32[2], unfused.view(np.uint32))  # a*b+c, not contracted in this build
    np.testing.assert_array_equal(o32[3].view(np.int32), np.rint((a * np.float32(1000)).astype(np.float64)).astype(np.int32))
    expected_ll = np.where(np.abs(x) < 2.0**63, np.rint(x), 0).astype(np.int64)
    expected_ll[3] = 2**63 - 1  # clamped, as PTX cvt does
    np.testing.assert_array_equal(o64[0], expected_ll)
    np.testing.assert_array_equal(o64[1], (x * x + 1.0).view(np.int64))
    with np.errstate(over="ignore"):  # 70000 -> inf, as __float2half_rn gives
        np.testing.assert_array_equal(o16[0], a.astype(np.float16).view(np.uint16))
    import torch
    np.testing.assert_array_equal(o16[1], torch.from_numpy(a).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16))


def test_contraction_build_contracts_plain_multiply_adds_only(emu_contract):
    """The contraction build is what it claims: plain a*b+c becomes an FMA (as nvcc makes it),
    while the _rn intrinsics stay unfused."""
    a, b, c, x, o32, o64, o16 = rounding(emu_contract)
    np.testing.assert_array_equal(o32[2], fma32(a, b, c).view(np.uint32))  # contracted
    np.testing.assert_array_equal(o32[0], (a * b + c).astype(np.float32).view(np.uint32))  # intrinsics: not
    np.testing.assert_array_equal(o64[1], (x * x + 1.0).view(np.int64))


@pytest.mark.parametrize("variant", ["fibers", "contract"])
def test_screen_key_bound_matches_the_cpu_module(request, variant):
    """screen_key_bound (csrc/common/nn_screen.h) on the device path, against the CPU module's,
    bit for bit. Before its multiply-adds were made explicit, the contraction build (nvcc's
    default) differed in the last bit on about a quarter of these inputs."""
    from retrievalguard_fast.kernels.backend import _core

    emu = request.getfixturevalue("emu" if variant == "fibers" else "emu_contract")
    rng = np.random.default_rng(1)
    n = 20000
    rel, scale = rng.uniform(0, 0.01, n), rng.uniform(0.1, 3, n)
    dim = rng.integers(1, 2048, n).astype(np.int64)
    row_norm, gn2 = rng.uniform(0, 2, n), rng.uniform(0, 4, n)
    out = np.empty(n)
    assert emu.probe("screen_key_bound", rel, dim, scale, row_norm, gn2, n, out) == SUCCESS
    cpu = np.array([_core.screen_key_bound(*args) for args in zip(rel, dim.tolist(), scale, row_norm, gn2)])
    assert (out != cpu).sum() == 0, f"{(out != cpu).sum()} of {n} bounds differ from the CPU module's"
