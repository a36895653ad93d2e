import numpy as np
import pytest
import torch

import retrievalguard_fast as rgf
import reference
from conftest import requires_cuda, to_kind, to_numpy

# float32 distance error allowed when two candidates are near-tied (the kernels use the
# expansion |q|^2 + |g|^2 - 2 q.g in float32, as faiss does).
DIST_TOL = 2e-5


def random_problem(seed, rows, gallery_rows, dim, scale=1.0):
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((rows, dim)) * scale).astype(np.float32)
    g = (rng.standard_normal((gallery_rows, dim)) * scale).astype(np.float32)
    return q, g


def assert_same_neighbours(got_idx, ref_idx, d64, scale):
    """Indices must match, except where the two candidates' true distances are within float32
    tolerance of each other (a near tie, which rounding may break either way)."""
    rows = np.arange(len(ref_idx))
    mismatch = got_idx != ref_idx
    assert (got_idx >= 0).all()
    gap = np.abs(d64[rows, got_idx] - d64[rows, ref_idx])
    assert (gap[mismatch] <= DIST_TOL * scale).all(), f"{mismatch.sum()} mismatches, max gap {gap[mismatch].max()}"
    assert mismatch.mean() < 0.01


SHAPES = [(1, 1, 1), (7, 13, 3), (50, 333, 16), (130, 1031, 37), (257, 700, 128)]


@pytest.mark.parametrize("rows,gallery_rows,dim", SHAPES)
@pytest.mark.parametrize("tiles", ["default", "tiny"])
def test_nn_search_matches_float64_brute_force(rows, gallery_rows, dim, tiles, kind, request):
    if tiles == "tiny":
        request.getfixturevalue("small_tiles")
    q, g = random_problem(rows * 7 + gallery_rows, rows, gallery_rows, dim)
    i1, d1, i2, d2 = rgf.nn_search(to_kind(q, kind), to_kind(g, kind))
    i1, d1, i2, d2 = map(to_numpy, (i1, d1, i2, d2))
    r1, rd1, r2, rd2, d64 = reference.nn_search(q, g)
    scale = float(np.max(d64)) + 1.0
    assert i1.dtype == np.int64 and d1.dtype == np.float32
    assert_same_neighbours(i1, r1, d64, scale)
    np.testing.assert_allclose(d1, d64[np.arange(rows), i1], rtol=0, atol=DIST_TOL * scale)
    if gallery_rows == 1:
        assert (i2 == -1).all() and np.isinf(d2).all()
    else:
        assert (i2 != i1).all()
        assert_same_neighbours(i2, r2, d64, scale)
        np.testing.assert_allclose(d2, d64[np.arange(rows), i2], rtol=0, atol=DIST_TOL * scale)
        assert (d1 <= d2).all()


def test_exact_ties_go_to_the_lower_index(kind, small_tiles):
    """Multiples of 1/4 make every dot product and distance exact, so duplicate gallery rows tie
    exactly; the tie must go to the lower index whatever tile each duplicate lands in."""
    rng = np.random.default_rng(0)
    base = rng.integers(-1, 2, size=(6, 8)).astype(np.float32) / 4  # norms <= sqrt(8)/4 < 1
    gallery = np.concatenate([base, base, base])  # rows i, i+6, i+12 are identical
    q = base[[0, 3, 5, 1]]
    i1, d1, i2, d2 = map(to_numpy, rgf.nn_search(to_kind(q, kind), to_kind(gallery, kind)))
    np.testing.assert_array_equal(i1, [0, 3, 5, 1])
    np.testing.assert_array_equal(i2, [6, 9, 11, 7])
    np.testing.assert_array_equal(d1, 0)
    np.testing.assert_array_equal(d2, 0)
    labels = np.arange(18)  # every duplicate has its own label: the vote shows which one won
    counts, _ = rgf.nn_vote(to_kind(q, kind), to_kind(gallery, kind), to_kind(labels, kind), 18, normalize=False)
    np.testing.assert_array_equal(np.flatnonzero(to_numpy(counts)), [0, 1, 3, 5])


def test_ties_between_inexact_duplicates_go_to_the_lower_index_whatever_the_batch(kind):
    """Duplicated gallery rows with ordinary float values, spread over several tiles: every dot
    product is accumulated in one fixed order, so duplicates tie exactly and the lower index wins,
    and a query's result does not depend on the other rows of its batch (an sgemm does not
    promise either: its edge kernels round differently)."""
    from retrievalguard_fast.kernels.backend import cpu_tile_sizes

    rng = np.random.default_rng(0)
    g = np.tile(rng.standard_normal(64).astype(np.float32), (300, 1))
    q = rng.standard_normal((20, 64)).astype(np.float32)
    labels = (np.arange(300) >= 256).astype(np.int64)
    for tiles in [(512, 256), (3, 5), (7, 64)]:
        with cpu_tile_sizes(*tiles):
            i1, d1, i2, d2 = map(to_numpy, rgf.nn_search(to_kind(q, kind), to_kind(g, kind)))
            assert (i1 == 0).all() and (i2 == 1).all() and (d1 == d2).all()
            counts, _ = rgf.nn_vote(to_kind(q, kind), to_kind(g, kind), to_kind(labels, kind), 2)
            assert to_numpy(counts).tolist() == [20, 0]
    # Per-row results are the same alone and in a batch, for random data too.
    q, g = random_problem(21, 37, 777, 48)
    batch = rgf.nn_search(q, g)
    for r in (0, 5, 36):
        alone = rgf.nn_search(q[r : r + 1], g)
        assert [a[0] for a in alone] == [b[r] for b in batch]


@pytest.mark.parametrize("tiles", ["default", "tiny"])
def test_exclude_skips_one_index_per_row(kind, tiles, request):
    if tiles == "tiny":
        request.getfixturevalue("small_tiles")
    q, g = random_problem(3, 40, 97, 12)
    g[:40] = q  # each query is in the gallery: leave-one-out must skip itself
    exclude = np.arange(40)
    exclude[5] = -1  # no exclusion for row 5
    i1, d1, i2, d2 = map(to_numpy, rgf.nn_search(to_kind(q, kind), to_kind(g, kind), exclude=to_kind(exclude, kind)))
    r1, _, r2, _, d64 = reference.nn_search(q, g, exclude)
    assert i1[5] == 5 and d1[5] == 0
    mask = np.arange(40) != 5
    assert (i1[mask] != np.arange(40)[mask]).all() and (i2[mask] != np.arange(40)[mask]).all()
    assert_same_neighbours(i1, r1, d64, float(d64.max()))
    assert_same_neighbours(i2, r2, d64, float(d64.max()))


def test_scalar_exclude_and_single_row_gallery():
    q, g = random_problem(4, 5, 3, 4)
    i1, _, i2, _ = rgf.nn_search(q, g, exclude=1)
    assert (i1 != 1).all() and (i2 != 1).all() and set(np.concatenate([i1, i2])) <= {0, 2}
    i1, d1, i2, d2 = rgf.nn_search(q, g[:1], exclude=0)
    assert (i1 == -1).all() and np.isinf(d1).all() and (i2 == -1).all()


def test_zero_query_rows_and_large_values():
    q, g = random_problem(5, 0, 10, 4)
    i1, d1, i2, d2 = rgf.nn_search(q, g)
    assert i1.shape == (0,) and d2.shape == (0,)
    q, g = random_problem(6, 20, 50, 8, scale=1e15)  # |x|^2 ~ 1e31: still finite in float32
    i1, *_ = rgf.nn_search(q, g)
    r1, _, _, _, d64 = reference.nn_search(q, g)
    assert_same_neighbours(i1, r1, d64, float(d64.max()))


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("rows,gallery_rows,dim,classes", [(1, 1, 1, 1), (33, 101, 16, 7), (300, 1500, 64, 40)])
@pytest.mark.parametrize("tiles", ["default", "tiny"])
def test_nn_vote_matches_reference(rows, gallery_rows, dim, classes, normalize, tiles, kind, request):
    if tiles == "tiny":
        request.getfixturevalue("small_tiles")
    rng = np.random.default_rng(rows + dim)
    e, g = random_problem(rows, rows, gallery_rows, dim)
    g = reference.normalize_rows(g).astype(np.float32)
    if not normalize:
        e = (reference.normalize_rows(e) * rng.uniform(0.2, 1.0, size=(rows, 1))).astype(np.float32)
    labels = rng.integers(0, classes, size=gallery_rows)
    counts, sums = rgf.nn_vote(to_kind(e, kind), to_kind(g, kind), to_kind(labels, kind), classes, normalize=normalize)
    assert to_numpy(counts).dtype == np.int64 and to_numpy(sums).dtype == np.float64
    ref_counts, ref_sum, ref_idx, d64 = reference.nn_vote(e, g, labels, classes, normalize=normalize)
    # Where a near tie picked another row, its label must be counted instead.
    got_idx = to_numpy(rgf.nn_search(to_kind(reference.normalize_rows(e).astype(np.float32) if normalize else e, kind), to_kind(g, kind))[0])
    assert_same_neighbours(got_idx, ref_idx, d64, 4.0)
    np.testing.assert_array_equal(to_numpy(counts), np.bincount(labels[got_idx], minlength=classes))
    assert to_numpy(counts).sum() == rows
    # Sum of normalised float32 rows: float32 inputs, float64 normalisation, 2^-33 rounding.
    np.testing.assert_allclose(to_numpy(sums), ref_sum, rtol=0, atol=rows * (2**-33 + 1e-12) + 1e-9)


def test_nn_vote_exclude_and_zero_rows(kind, small_tiles):
    g = np.eye(4, dtype=np.float32)
    labels = np.array([0, 1, 2, 3])
    e = np.array([[1, 0.1, 0, 0], [0, 0, 0, 0], [0, 0, 2, 0]], np.float32)
    counts, sums = rgf.nn_vote(to_kind(e, kind), to_kind(g, kind), to_kind(labels, kind), 4,
                               exclude=to_kind(np.array([0, -1, -1]), kind))
    # Row 0 skips gallery 0 and goes to gallery 1 (closest of the rest); the zero row stays zero
    # and is equidistant from all (index 0 wins); row 2 normalises to e_2.
    np.testing.assert_array_equal(to_numpy(counts), [1, 1, 1, 0])
    expected_sum = np.array([1, 0.1, 0, 0]) / np.linalg.norm([1, 0.1]) + np.array([0, 0, 1, 0])
    np.testing.assert_allclose(to_numpy(sums), expected_sum, atol=1e-8)


def test_nn_vote_is_deterministic_across_tiles_and_batch_splits():
    e, g = random_problem(11, 999, 777, 32)
    labels = np.arange(777) % 13
    from retrievalguard_fast.kernels.backend import cpu_tile_sizes

    c0, s0 = rgf.nn_vote(e, g, labels, 13)
    for tiles in [(1, 1), (7, 3), (64, 1000), (999, 777)]:
        with cpu_tile_sizes(*tiles):
            c, s = rgf.nn_vote(e, g, labels, 13)
        np.testing.assert_array_equal(c, c0)
        np.testing.assert_array_equal(s, s0)  # bit-identical: fixed-point accumulation
    parts = [rgf.nn_vote(e[a:b], g, labels, 13) for a, b in [(0, 1), (1, 500), (500, 999)]]
    np.testing.assert_array_equal(sum(p[0] for p in parts), c0)
    np.testing.assert_array_equal(parts[0][1] + parts[1][1] + parts[2][1], s0)  # exact float64 adds


@pytest.mark.slow
def test_nn_vote_with_a_gallery_of_two_million_rows():
    """Memory stays O(rows + gallery + classes): 2M x 16 gallery (128 MB), 64 rows."""
    rng = np.random.default_rng(12)
    g = rng.standard_normal((2_000_000, 16)).astype(np.float32)
    labels = rng.integers(0, 1000, size=len(g))
    planted = rng.integers(0, len(g), size=64)
    e = g[planted] * 3.0  # each row's nearest (after normalising both sides: same direction) is its planted row
    g_unit = reference.normalize_rows(g).astype(np.float32)
    counts, _ = rgf.nn_vote(e, g_unit, labels, 1000)
    np.testing.assert_array_equal(counts, np.bincount(labels[planted], minlength=1000))


# ----------------------------------------------------------------------------- bad input

def _vote_args(**override):
    args = dict(
        embeddings=np.ones((4, 3), np.float32),
        gallery=np.eye(3, dtype=np.float32),
        gallery_labels=np.array([0, 1, 2]),
        num_classes=3,
    )
    args.update(override)
    return args


VOTE_BAD = [
    (dict(embeddings=np.ones(3, np.float32)), ValueError, "embeddings must be 2-D"),
    (dict(gallery=np.ones((3, 3, 1), np.float32)), ValueError, "gallery must be 2-D"),
    (dict(gallery=np.ones((0, 3), np.float32), gallery_labels=np.zeros(0, np.int64)), ValueError, "gallery is empty"),
    (dict(gallery=np.ones((3, 4), np.float32)), ValueError, "embeddings have dimension 3 but gallery rows have 4"),
    (dict(embeddings=np.ones((4, 3), np.int32)), TypeError, "embeddings must have a floating dtype"),
    (dict(embeddings=np.ones((4, 3), np.complex64)), TypeError, "embeddings must have a floating dtype"),
    (dict(gallery=np.ones((3, 3), bool)), TypeError, "gallery must have a floating dtype"),
    (dict(embeddings=np.array([[1, 2, np.nan]] * 4, np.float32)), ValueError, "embeddings row 0 has non-finite"),
    (dict(embeddings=np.array([[1, 2, np.inf]] * 4, np.float32)), ValueError, "embeddings row 0 has non-finite"),
    (dict(gallery=np.array([[1, 0, 0], [0, np.nan, 0], [0, 0, 1]], np.float32)), ValueError, "gallery row 1 has non-finite"),
    (dict(gallery_labels=np.array([0, 1, 3])), ValueError, r"gallery_labels\[2\] = 3 is outside \[0, num_classes=3\)"),
    (dict(gallery_labels=np.array([0, -1, 2])), ValueError, r"gallery_labels\[1\] = -1 is outside"),
    (dict(gallery_labels=np.array([0, 1])), ValueError, "one label per gallery row"),
    (dict(gallery_labels=np.array([0.0, 1, 2])), TypeError, "gallery_labels must have an integer dtype"),
    (dict(num_classes=0), ValueError, r"num_classes must be in \[1,"),
    (dict(num_classes=3.0), TypeError, "num_classes must be an integer"),
    (dict(exclude=np.array([0, 1])), ValueError, r"exclude must have one entry per row \(4\)"),
    (dict(exclude=np.array([0, 1, 2, 3])), ValueError, r"exclude values must be gallery indices in \[0, 3\)"),
    (dict(exclude=np.array([0, 1, 2, -2])), ValueError, "exclude values"),
    (dict(exclude=3), ValueError, r"exclude must be in \[-1, 2\]"),
    (dict(exclude=np.zeros(4)), TypeError, "exclude must have an integer dtype"),
    (dict(normalize=1), TypeError, "normalize must be a bool"),
    (dict(normalize=False, embeddings=np.full((4, 3), 2.0, np.float32)), ValueError, "with normalize=False rows must have norm <= 1"),
    (dict(gallery=np.ones((1, 3), np.float32), gallery_labels=np.array([0]), exclude=0), ValueError, "exclude removes the only gallery row"),
    (dict(embeddings=torch.ones(4, 3, dtype=torch.int64)), TypeError, "embeddings must have a floating dtype"),
    (dict(embeddings="abc"), TypeError, "embeddings must be a numeric numpy array or torch tensor"),
]


@pytest.mark.parametrize("override,exc,match", VOTE_BAD)
def test_nn_vote_bad_input(override, exc, match):
    with pytest.raises(exc, match=match):
        rgf.nn_vote(**_vote_args(**override))


# Bad values that only the kernels see (they count them into problem slots): every backend must
# report them with the same message, naming the first offending row or label.
VALUE_PROBLEMS = [
    (dict(embeddings=np.array([[1, 2, 0]] * 2 + [[1, np.nan, 0]] * 2, np.float32)), "embeddings row 2 has non-finite"),
    (dict(gallery=np.array([[1, 0, 0], [0, 1, 0], [0, 0, np.inf]], np.float32)), "gallery row 2 has non-finite"),
    (dict(gallery_labels=np.array([0, 1, 3])), r"gallery_labels\[2\] = 3 is outside \[0, num_classes=3\)"),
    (dict(normalize=False, embeddings=np.array([[0.5, 0, 0]] * 3 + [[2.0, 0, 0]], np.float32)),
     r"embeddings row 3 has l2 norm 2 > 1; with normalize=False"),
]


@pytest.mark.parametrize("override,match", VALUE_PROBLEMS)
def test_value_problems_read_the_same_on_every_backend(override, match, kind):
    args = {k: to_kind(v, kind) if isinstance(v, np.ndarray) else v for k, v in _vote_args(**override).items()}
    with pytest.raises(ValueError, match=match):
        rgf.nn_vote(**args)
    with pytest.raises(ValueError, match=match):
        rgf.nn_vote_screened(**args)
    if "gallery_labels" not in override and override.get("normalize", True):
        search = {"queries": args["embeddings"], "gallery": args["gallery"]}
        with pytest.raises(ValueError, match=match.replace("embeddings row", "queries row")):
            rgf.nn_search(**search)


SEARCH_BAD = [
    (dict(queries=np.ones((2, 2, 2), np.float32)), ValueError, "queries must be 2-D"),
    (dict(queries=np.ones((2, 4), np.float32)), ValueError, "queries have dimension 4"),
    (dict(queries=np.array([[np.nan, 0, 0]], np.float32)), ValueError, "queries row 0 has non-finite"),
    (dict(gallery=np.array([[np.inf, 0, 0]], np.float32)), ValueError, "gallery row 0 has non-finite"),
    (dict(queries=np.full((1, 3), 3e38, np.float32)), ValueError, "too large for float32"),
    (dict(gallery=np.ones((0, 3), np.float32)), ValueError, "gallery is empty"),
    (dict(exclude=[5]), ValueError, "exclude values must be gallery indices"),
    (dict(exclude=[[0]]), ValueError, "exclude must be 1-D"),
    (dict(exclude=np.array([2**64 - 1], np.uint64)), ValueError, "exclude has values above 2\\*\\*63 - 1"),
    (dict(queries=np.array([[1.8e19, 0, 0]], np.float32)), ValueError, "too large for float32"),
    (dict(queries=torch.eye(3)[:1].to_sparse()), TypeError, "queries must be a dense"),
]


@pytest.mark.parametrize("override,exc,match", SEARCH_BAD)
def test_nn_search_bad_input(override, exc, match):
    args = dict(queries=np.ones((1, 3), np.float32), gallery=np.eye(3, dtype=np.float32))
    args.update(override)
    with pytest.raises(exc, match=match):
        rgf.nn_search(**args)


def test_non_contiguous_and_other_dtypes_are_copied_not_misread():
    q, g = random_problem(13, 20, 60, 10)
    ref = rgf.nn_search(q, g)
    q_strided = np.repeat(q, 2, axis=0)[::2]  # a strided view
    g_fortran = np.asfortranarray(g)
    for a, b in [(q_strided, g_fortran), (q.astype(np.float64), g.astype(np.float16).astype(np.float32)),
                 (torch.from_numpy(q).t().contiguous().t(), torch.from_numpy(g))]:
        got = rgf.nn_search(a, b)
        if a is q_strided:
            for x, y in zip(got, ref):
                np.testing.assert_array_equal(to_numpy(x), y)
        else:
            assert to_numpy(got[0]).shape == (20,)


def test_numpy_and_cpu_tensors_mix_and_results_follow_the_main_argument():
    q, g = random_problem(14, 5, 9, 3)
    i1, d1, _, _ = rgf.nn_search(torch.from_numpy(q), g)
    assert isinstance(i1, torch.Tensor) and i1.dtype == torch.int64
    counts, sums = rgf.nn_vote(q, torch.from_numpy(g), np.arange(9) % 2, 2)
    assert isinstance(counts, np.ndarray) and isinstance(sums, np.ndarray)


@requires_cuda
def test_cuda_refuses_mixed_devices():
    q, g = random_problem(15, 5, 9, 3)
    with pytest.raises(ValueError, match="all arrays must be on one device"):
        rgf.nn_search(torch.from_numpy(q).cuda(), g)
    with pytest.raises(ValueError, match="all arrays must be on one device"):
        rgf.nn_vote(torch.from_numpy(q).cuda(), torch.from_numpy(g).cuda(), np.arange(9) % 2, 2)


@requires_cuda
def test_cuda_bad_rows_cast_no_vote_without_check():
    g = torch.eye(3, device="cuda")
    counts, _ = rgf.nn_vote(torch.tensor([[1.0, float("nan"), 0], [1.0, 0, 0]], device="cuda"), g,
                            torch.arange(3, device="cuda"), 3, check=False)
    assert int(counts.sum()) == 1  # the bad row cast no vote


@requires_cuda
@pytest.mark.parametrize("rows,gallery_rows,dim", [(1, 100_000, 128), (5000, 3001, 64), (64, 64, 16), (65, 129, 17)])
def test_cuda_matches_cpu(rows, gallery_rows, dim):
    q, g = random_problem(rows + dim, rows, gallery_rows, dim)
    labels = np.arange(gallery_rows) % 101
    cpu = rgf.nn_search(q, g)
    gpu = [to_numpy(a) for a in rgf.nn_search(torch.from_numpy(q).cuda(), torch.from_numpy(g).cuda())]
    # Both backends compute the same keys bit for bit (fixed-order float32 dots, norms summed in
    # the same order), so indices, distances, votes and sums are equal, not merely close.
    for c, gp in zip(cpu, gpu):
        np.testing.assert_array_equal(gp, c)
    c_cpu, s_cpu = rgf.nn_vote(q, g, labels, 101)
    c_gpu, s_gpu = rgf.nn_vote(torch.from_numpy(q).cuda(), torch.from_numpy(g).cuda(), torch.from_numpy(labels).cuda(), 101)
    np.testing.assert_array_equal(to_numpy(c_gpu), c_cpu)
    np.testing.assert_array_equal(to_numpy(s_gpu), s_cpu)
