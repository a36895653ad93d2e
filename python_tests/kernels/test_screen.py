"""The screened (tensor-core) nearest-neighbour mode: same result as the exact mode, bit for bit.

The screen is only a shortcut: low-precision scores pick candidates, the exact float32 key
decides among them, and a rigorous bound (csrc/common/nn_screen.h, docs/certification.md
section 6) sends every row it cannot decide to the exact kernel. These tests pin the outcome
(identical to exact mode) on random and on adversarial near-tie data where the low-precision
ranking really is wrong, and check the error model itself against float64.
"""

import numpy as np
import pytest
import torch

import retrievalguard_fast as rgf
from retrievalguard_fast.kernels.backend import _core
from retrievalguard_fast.kernels.screen import round_to_tf32, screen_matmul_precision, screen_operand, MAX_SCREEN_CANDIDATES
from conftest import to_kind, to_numpy

PRECISIONS = ["tf32", "bf16"]


def unit_rows(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def clustered_problem(seed, rows=600, clusters=40, per_cluster=6, dim=48, spread=2e-3, duplicates=True):
    """Gallery of tight clusters of near-duplicate unit rows (plus exact duplicates), queries close
    to cluster centres: the nearest row within a cluster is decided by differences far below the
    bf16/TF32 screening error, so the low-precision ranking is often wrong there."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((clusters, dim)))
    g = np.repeat(centres, per_cluster, axis=0) + spread * rng.standard_normal((clusters * per_cluster, dim))
    g = unit_rows(g)
    if duplicates:
        g[1::per_cluster] = g[0::per_cluster]  # exact ties: the lower index must win
    labels = rng.integers(0, 7, len(g))
    owner = rng.integers(0, clusters, rows)
    q = centres[owner] + spread * rng.standard_normal((rows, dim))
    q = unit_rows(q) * np.float32(0.999)  # norm <= 1, so normalize=False is allowed
    return q.astype(np.float32), g.astype(np.float32), labels


def exact_reference(q, g, labels, num_classes, exclude):
    """Exact-mode results: nn_vote's counts and sum, and the nearest index per row from
    nn_search (with normalize=False both rank by the same float32 key)."""
    counts, total = rgf.nn_vote(q, g, labels, num_classes, exclude=exclude, normalize=False)
    index1 = rgf.nn_search(q, g, exclude=exclude)[0]
    return counts, total, index1


def approx_nearest(q, g, precision, exclude):
    """The nearest index by the screening scores alone (what a screen without verification returns)."""
    qt, gt = torch.from_numpy(q), torch.from_numpy(g)
    if precision == "tf32":
        scores = (round_to_tf32(qt) @ round_to_tf32(gt).T).numpy().astype(np.float64)
    else:
        scores = (qt.bfloat16() @ gt.bfloat16().T).float().numpy().astype(np.float64)
    keys = (g.astype(np.float64) ** 2).sum(1)[None, :] - 2.0 * scores
    if exclude is not None:
        keys[np.arange(len(q)), exclude] = np.inf
    return keys.argmin(1)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("candidates", [1, 2, 8])
def test_adversarial_near_ties_match_exact_mode(precision, candidates, kind):
    q, g, labels = clustered_problem(1)
    exclude = np.random.default_rng(2).integers(-1, len(g), len(q))
    ref_counts, ref_sum, ref_index = exact_reference(q, g, labels, 7, exclude)
    wrong = approx_nearest(q, g, precision, exclude) != ref_index
    if precision == "bf16":  # the scenario must really defeat the low-precision ranking
        assert wrong.mean() > 0.2, wrong.mean()
    got = rgf.nn_vote_screened(to_kind(q, kind), to_kind(g, kind), to_kind(labels, kind), 7,
                               exclude=to_kind(exclude, kind), normalize=False, precision=precision,
                               candidates=candidates)
    np.testing.assert_array_equal(to_numpy(got.nearest), ref_index)
    np.testing.assert_array_equal(to_numpy(got.counts), to_numpy(ref_counts))
    assert np.array_equal(to_numpy(got.embedding_sum), to_numpy(ref_sum))  # bit for bit
    if candidates == 1:  # a row whose screen ranking was wrong cannot be accepted on the screen alone
        assert got.undecided_rows >= int(wrong.sum())
    elif candidates < 6:  # clusters of 6 near-ties do not fit: some rows need the exact search
        assert got.undecided_rows > 0


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("normalize", [True, False])
def test_random_problem_matches_exact_mode(precision, normalize, kind, small_tiles):
    rng = np.random.default_rng(3)
    rows, gallery_rows, dim, num_classes = 700, 1500, 40, 31
    g = rng.standard_normal((gallery_rows, dim)).astype(np.float32)
    if not normalize:
        g = unit_rows(g)
    labels = rng.integers(0, num_classes, gallery_rows)
    q = g[rng.integers(0, gallery_rows, rows)] + 0.4 * rng.standard_normal((rows, dim)).astype(np.float32)
    q = (q * (3.0 if normalize else 1.0 / (1.01 * np.linalg.norm(q, axis=1).max()))).astype(np.float32)
    q[5] = 0.0  # a zero row (scale 0) must give the same answer too
    exclude = rng.integers(-1, gallery_rows, rows)
    ref_counts, ref_sum = rgf.nn_vote(q, g, labels, num_classes, exclude=exclude, normalize=normalize)
    # Several chunks (chunk_bytes) must give the same result as one.
    for chunk_bytes in (None, 97 * gallery_rows * 4):
        got = rgf.nn_vote_screened(to_kind(q, kind), to_kind(g, kind), to_kind(labels, kind), num_classes,
                                   exclude=to_kind(exclude, kind), normalize=normalize, precision=precision,
                                   chunk_bytes=chunk_bytes)
        np.testing.assert_array_equal(to_numpy(got.counts), ref_counts)
        assert np.array_equal(to_numpy(got.embedding_sum), ref_sum)
        assert (to_numpy(got.nearest) >= 0).all() and (to_numpy(got.nearest) != exclude).all()
        assert got.undecided_rows < rows // 10  # the screen decides nearly every row itself
    if not normalize:
        np.testing.assert_array_equal(to_numpy(got.nearest), rgf.nn_search(q, g, exclude=exclude)[0])


def test_nn_vote_precision_argument(kind):
    q, g, labels = clustered_problem(4, rows=200)
    ref = rgf.nn_vote(q, g, labels, 7)
    for precision in PRECISIONS:
        got = rgf.nn_vote(to_kind(q, kind), to_kind(g, kind), to_kind(labels, kind), 7, precision=precision)
        np.testing.assert_array_equal(to_numpy(got[0]), ref[0])
        assert np.array_equal(to_numpy(got[1]), ref[1])
        if kind != "numpy":
            assert got[0].device == to_kind(q, kind).device
    with pytest.raises(ValueError, match="precision must be one of"):
        rgf.nn_vote(q, g, labels, 7, precision="fp8")


def test_tiny_galleries_and_empty_batches(kind):
    q, g, labels = clustered_problem(5, rows=50, clusters=2, per_cluster=2)
    for gallery_rows in (1, 2, 3):  # at most `candidates` rows: all are rescored exactly
        ref = rgf.nn_vote(q, g[:gallery_rows], labels[:gallery_rows], 7)
        got = rgf.nn_vote_screened(to_kind(q, kind), to_kind(g[:gallery_rows], kind),
                                   to_kind(labels[:gallery_rows], kind), 7, candidates=3)
        np.testing.assert_array_equal(to_numpy(got.counts), ref[0])
        assert got.undecided_rows == 0
    # A single excluded index for every row, and an empty batch.
    ref = rgf.nn_vote(q, g, labels, 7, exclude=1)
    got = rgf.nn_vote_screened(to_kind(q, kind), to_kind(g, kind), to_kind(labels, kind), 7, exclude=1)
    np.testing.assert_array_equal(to_numpy(got.counts), ref[0])
    assert (to_numpy(got.nearest) != 1).all()
    empty = rgf.nn_vote_screened(to_kind(q[:0], kind), to_kind(g, kind), to_kind(labels, kind), 7)
    assert to_numpy(empty.counts).sum() == 0 and tuple(empty.nearest.shape) == (0,)
    assert (to_numpy(empty.embedding_sum) == 0).all()


def test_a_callers_autocast_does_not_change_the_screen(kind):
    """Under autocast the screening matmul would return another dtype; it must not (the kernel
    reads the scores as float32 for TF32 and as bf16 for bf16)."""
    q, g, labels = clustered_problem(9, rows=100)
    ref = rgf.nn_vote(q, g, labels, 7)
    device_type = "cuda" if kind == "cuda" else "cpu"
    for dtype in (torch.bfloat16, torch.float16):
        if device_type == "cpu" and dtype == torch.float16:
            continue
        with torch.autocast(device_type, dtype=dtype):
            for precision in PRECISIONS:
                got = rgf.nn_vote_screened(to_kind(q, kind), to_kind(g, kind), to_kind(labels, kind), 7,
                                           precision=precision)
                np.testing.assert_array_equal(to_numpy(got.counts), ref[0])
                assert np.array_equal(to_numpy(got.embedding_sum), ref[1])


def test_bad_arguments_are_named(kind):
    q, g, labels = clustered_problem(6, rows=20)
    q, g, labels = (to_kind(a, kind) for a in (q, g, labels))
    with pytest.raises(ValueError, match="candidates must be in"):
        rgf.nn_vote_screened(q, g, labels, 7, candidates=0)
    with pytest.raises(ValueError, match="candidates must be in"):
        rgf.nn_vote_screened(q, g, labels, 7, candidates=MAX_SCREEN_CANDIDATES + 1)
    with pytest.raises(ValueError, match="precision must be one of"):
        rgf.nn_vote_screened(q, g, labels, 7, precision="exact")
    with pytest.raises(ValueError, match="chunk_bytes"):
        rgf.nn_vote_screened(q, g, labels, 7, chunk_bytes=0)
    bad = q.clone() if kind != "numpy" else q.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        rgf.nn_vote_screened(bad, g, labels, 7)
    with pytest.raises(ValueError, match="non-finite"):  # also when the bad row is in a later chunk
        rgf.nn_vote_screened(bad, g, labels, 7, chunk_bytes=2 * g.shape[0] * 4)
    with pytest.raises(ValueError, match="gallery_labels"):
        rgf.nn_vote_screened(q, g, labels[:-1], 7)
    with pytest.raises(ValueError, match="gallery_labels"):
        rgf.nn_vote_screened(q, g, labels, 3)  # labels up to 6 are outside [0, 3)


def rounding_stress_problem(precision, rows=64, gallery_rows=96, dim=128, seed=7):
    """Same-sign values placed just below a rounding midpoint of the screening format, so the input
    rounding errors all point the same way and add up (the worst case of the error model)."""
    rng = np.random.default_rng(seed)
    ulp = 2.0**-7 if precision == "bf16" else 2.0**-10  # spacing of the format in [1, 2)
    def near_midpoint(shape):
        whole = 1.0 + ulp * rng.integers(0, int(1 / ulp), shape)
        return (whole + ulp * (0.5 - 1e-3)).astype(np.float32)  # rounds down by almost half an ulp
    return near_midpoint((rows, dim)), near_midpoint((gallery_rows, dim))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("data", ["random", "stress"])
def test_screening_matmul_error_is_within_its_model(precision, data, kind):
    """|score - q.g| <= screen_rel_error |q||g| for the matmul this backend really runs (CPU
    torch here; cuBLAS tensor cores on a GPU), checked in float64, on data built to make the
    rounding errors add up. The model must also not be loose by orders of magnitude."""
    if data == "random":
        rng = np.random.default_rng(8)
        q = rng.standard_normal((64, 128)).astype(np.float32)
        g = rng.standard_normal((96, 128)).astype(np.float32)
    else:
        q, g = rounding_stress_problem(precision)
    dev = "cuda" if kind == "cuda" else "cpu"
    qt, gt = torch.from_numpy(q).to(dev), torch.from_numpy(g).to(dev)
    with screen_matmul_precision(qt.device, precision):
        scores = torch.mm(screen_operand(qt, precision), screen_operand(gt, precision).T)
    scores = scores.float().cpu().numpy().astype(np.float64)
    exact = q.astype(np.float64) @ g.astype(np.float64).T
    scale = np.linalg.norm(q.astype(np.float64), axis=1)[:, None] * np.linalg.norm(g.astype(np.float64), axis=1)[None, :]
    ratio = np.abs(scores - exact) / scale / rgf.screen_rel_error(precision, q.shape[1])
    assert ratio.max() <= 1.0, ratio.max()
    if data == "stress":
        assert ratio.max() > 0.2, ratio.max()  # the stress data really stresses it


@pytest.mark.parametrize("precision", PRECISIONS)
def test_key_bound_covers_the_key_difference(precision):
    """The per-row bound on |approximate key - exact key| (the kernels' screen_key_bound) holds
    against float64 keys, with its safety factor to spare, for normalised and raw rows."""
    q, g = rounding_stress_problem(precision, rows=32, gallery_rows=48)
    q64, g64 = q.astype(np.float64), g.astype(np.float64)
    rel = rgf.screen_rel_error(precision, q.shape[1])
    qt, gt = torch.from_numpy(q), torch.from_numpy(g)
    scores = torch.mm(screen_operand(qt, precision), screen_operand(gt, precision).T)
    scores = scores.float().numpy().astype(np.float64)
    gn32 = (g64**2).sum(1).astype(np.float32)
    for normalize in (True, False):
        n2 = (q64**2).sum(1)
        s = 1.0 / np.sqrt(n2) if normalize else np.ones(len(q))
        m2s = (-2.0 * s).astype(np.float32).astype(np.float64)
        approx_key = (m2s[:, None] * scores + gn32[None, :]).astype(np.float32)
        true_key = (g64**2).sum(1)[None, :] - 2.0 * s[:, None] * (q64 @ g64.T)
        bound = np.array([_core.screen_key_bound(rel, q.shape[1], s[i], np.sqrt(n2[i]), float(gn32.max()))
                          for i in range(len(q))])
        worst = (np.abs(approx_key - true_key).max(axis=1) / bound).max()
        assert worst <= 0.5, worst  # the approximate side alone uses at most half the bound


@pytest.mark.parametrize("api", ["legacy", "new"])
def test_matmul_flags_are_set_and_restored_through_the_callers_api(api):
    """torch refuses to read a mix of its legacy and new TF32 flags, so the screen must set and
    restore TF32 through whichever one the process uses (the flags exist on CPU builds too)."""
    from types import SimpleNamespace

    matmul = torch.backends.cuda.matmul
    cuda = SimpleNamespace(type="cuda")
    try:
        if api == "legacy":
            torch.set_float32_matmul_precision("highest")
        else:
            matmul.fp32_precision = "ieee"
            matmul.fp32_precision = "tf32"  # a process that only uses the new API
        before = (matmul.fp32_precision, matmul.allow_bf16_reduced_precision_reduction)
        with screen_matmul_precision(cuda, "tf32"):
            assert matmul.fp32_precision == "tf32" and not matmul.allow_bf16_reduced_precision_reduction
        with screen_matmul_precision(cuda, "bf16"):
            assert not matmul.allow_bf16_reduced_precision_reduction
        assert (matmul.fp32_precision, matmul.allow_bf16_reduced_precision_reduction) == before
        if api == "legacy":
            assert torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision("highest")


@pytest.mark.parametrize("setting", ["legacy", "per-backend"])
def test_a_callers_matmul_precision_cannot_widen_the_cpu_screen(setting):
    """A caller that lets float32 matmuls run in bf16 (set_float32_matmul_precision("medium"), or
    the per-backend oneDNN flag) must not change the screen: inside it the CPU matmul is pinned
    to full float32, and the caller's setting is restored afterwards."""
    q, g, labels = clustered_problem(11, rows=300)
    ref = rgf.nn_vote(q, g, labels, 7)
    qt, gt = torch.from_numpy(q), torch.from_numpy(g)
    old = torch.get_float32_matmul_precision()
    try:
        if setting == "legacy":
            torch.set_float32_matmul_precision("medium")
        else:
            torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        before = torch.backends.mkldnn.matmul.fp32_precision
        with screen_matmul_precision(qt.device, "tf32"):
            assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"
        assert torch.backends.mkldnn.matmul.fp32_precision == before == "bf16"
        for precision in PRECISIONS:
            got = rgf.nn_vote_screened(qt, gt, torch.from_numpy(labels), 7, precision=precision)
            np.testing.assert_array_equal(got.counts.numpy(), ref[0])
            assert np.array_equal(got.embedding_sum.numpy(), ref[1])
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = "none"
        torch.backends.cuda.matmul.fp32_precision = "none"
        torch.set_float32_matmul_precision(old)
