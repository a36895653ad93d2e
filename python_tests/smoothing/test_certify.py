import math

import numpy as np
import pytest
import torch
from scipy import stats

from retrievalguard_fast.smoothing.certificates import soft_radii
from retrievalguard_fast.smoothing import Gallery
from retrievalguard_fast.report import summarize
from retrievalguard_fast.smoothing import SmoothedRetriever
from retrievalguard_fast.smoothing.stats import mean_embedding_deviation
from conftest import requires_cuda


class SignModel(torch.nn.Module):
    """1-d embedding sign(w.x + b): with the gallery {+1 (label 0), -1 (label 1)} both smoothed
    models predict label 0 exactly when w.x + b > 0, so the true robust radius is |w.x + b|/|w|."""

    def __init__(self, w, b):
        super().__init__()
        self.w = torch.nn.Parameter(torch.as_tensor(w, dtype=torch.float32), requires_grad=False)
        self.b = float(b)

    def forward(self, x):
        return torch.sign(x.flatten(1) @ self.w + self.b)[:, None]


def sign_setup(true_radius, sigma, seed=0):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(4)
    b = 0.3
    direction = w / np.linalg.norm(w)
    x0 = -b * direction / np.linalg.norm(w)  # on the boundary
    x = (x0 + true_radius * direction).astype(np.float32)[None, :]
    gallery = Gallery(np.array([[1.0], [-1.0]], np.float32), np.array([0, 1]))
    return SignModel(w, b), gallery, x


def test_exact_answer_is_approached_from_below_with_many_samples():
    sigma, true_radius = 0.5, 1.0  # two sigma from the boundary: p_A = Phi(2)
    model, gallery, x = sign_setup(true_radius, sigma)
    retriever = SmoothedRetriever(model, gallery, sigma, batch_size=100_000, seed=1)
    (c,) = retriever.certify(x, [0], n0=100, n=1_000_000, alpha=0.001)
    assert c.clean_prediction == c.vote_prediction == c.soft_prediction == 0
    assert 0.97 * true_radius <= c.vote_radius <= true_radius
    assert 0.95 * true_radius <= c.soft_gaussian_radius <= true_radius
    assert c.soft_lipschitz_radius < 0.7 * true_radius  # strictly (and much) smaller
    # The Lipschitz radius is exactly sigma sqrt(pi/2) (2 p_hat - 1 - t) here.
    p_hat = c.vote_count / c.vote_n
    assert c.soft_lipschitz_radius == pytest.approx(sigma * math.sqrt(math.pi / 2) * (2 * p_hat - 1 - c.soft_deviation), abs=5e-3)


def test_certified_radii_exceed_the_truth_at_most_alpha_of_the_time():
    sigma, true_radius, alpha, seeds = 0.5, 0.5, 0.05, 300
    model, gallery, x = sign_setup(true_radius, sigma)
    over_vote = over_gauss = over_lip = 0
    for seed in range(seeds):
        (c,) = SmoothedRetriever(model, gallery, sigma, batch_size=500, seed=seed).certify(x, [0], n0=10, n=200, alpha=alpha)
        over_vote += (c.vote_radius or 0) > true_radius
        over_gauss += (c.soft_gaussian_radius or 0) > true_radius
        over_lip += (c.soft_lipschitz_radius or 0) > true_radius
    print(f"\nradius above the truth in {over_vote}/{seeds} (vote), {over_gauss}/{seeds} (gaussian), "
          f"{over_lip}/{seeds} (lipschitz) runs; alpha = {alpha}")
    assert over_vote <= alpha * seeds and over_gauss <= alpha * seeds and over_lip <= alpha * seeds


def random_unit(rng, rows, dim):
    v = rng.standard_normal((rows, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_soft_radii_invariants_on_random_galleries():
    rng = np.random.default_rng(3)
    for trial in range(30):
        g = random_unit(rng, 60, 8)
        labels = rng.integers(0, 5, 60)
        anchor = g[rng.integers(0, 60)]
        f = 0.9 * anchor + 0.05 * random_unit(rng, 1, 8)[0]
        label = labels[np.argmin(((g - f) ** 2).sum(1))]
        n2 = (g**2).sum(1)
        radii = [soft_radii(f, mean_embedding_deviation(n, 0.001, 8), g, n2, labels, label, 0.25, ks=(1, 3))
                 for n in (1000, 10_000, 100_000, 1_000_000)]
        for r in radii:
            assert r.gaussian >= r.lipschitz - 1e-12
            assert r.gaussian_at_k[1] == r.gaussian
            assert r.gaussian_at_k[3] >= r.gaussian_at_k[1]  # Recall@3 is easier to keep
        assert all(a.gaussian <= b.gaussian and a.lipschitz <= b.lipschitz for a, b in zip(radii, radii[1:]))


def test_tau_of_exactly_minus_one_is_not_an_infinite_radius():
    """Rows [2,0,0,0] (label 1) and [0,0,0,0] (label 0), F = e_1: F is equidistant from both,
    tau = -1 for the pair (p = zero row, b = [2,0,0,0]); nothing may be certified for label 0."""
    g = np.array([[2.0, 0, 0, 0], [0.0, 0, 0, 0]])
    r = soft_radii(np.array([1.0, 0, 0, 0]), 0.0, g, (g**2).sum(1), np.array([1, 0]), 0, 0.5, ks=(1,))
    assert not r.gaussian > 0 and not r.lipschitz > 0
    # A tau clearly below -1 (the pair holds for every F) is still +inf.
    g = np.array([[3.0, 0, 0, 0], [0.0, 0, 0, 0]])  # tau = -9 / 6 = -1.5
    r = soft_radii(np.array([0.2, 0, 0, 0]), 0.01, g, (g**2).sum(1), np.array([1, 0]), 0, 0.5)
    assert r.gaussian == math.inf


def test_large_norm_near_duplicates_are_not_overstated():
    """An un-normalised gallery of large norms with a close pair: compare with exact differences."""
    rng = np.random.default_rng(12)
    base = rng.standard_normal(64) * 1e4 / 8
    g = np.stack([base, base + rng.standard_normal(64) * 1e-3, base + rng.standard_normal(64) * 5.0])
    labels = np.array([0, 1, 1])
    f = random_unit(rng, 1, 64)[0] * 0.9
    r = soft_radii(f, 0.0, g, (g**2).sum(1), labels, 0, 1.0)
    ref_g, ref_l = reference_soft_radii(f, 0.0, g, labels, 0, 1.0)
    assert r.gaussian <= ref_g + 1e-12 and r.lipschitz <= ref_l + 1e-12


def test_soft_radii_exclusion_and_degenerate_galleries():
    g = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    n2 = (g**2).sum(1)
    f = np.array([0.9, 0.1])
    # Row 2 duplicates row 0 with another label: the pair can never be separated.
    r = soft_radii(f, 0.01, g, n2, np.array([0, 1, 2]), 0, 0.5)
    assert r.gaussian == -math.inf
    # Excluding the duplicate restores a positive radius.
    r = soft_radii(f, 0.01, g, n2, np.array([0, 1, 2]), 0, 0.5, exclude=2)
    assert r.gaussian > 0
    # Only positives left: certified everywhere.
    assert soft_radii(f, 0.01, g, n2, np.array([0, 1, 0]), 0, 0.5, exclude=1).gaussian == math.inf
    # No positive: never certified.
    assert soft_radii(f, 0.01, g, n2, np.array([1, 1, 1]), 0, 0.5).gaussian == -math.inf


@pytest.fixture(scope="module")
def digits_setup():
    from retrievalguard_fast.demo.digits import DigitsEmbeddingNet, load_digits_split
    from retrievalguard_fast.demo.training import train_embedding_model

    torch.manual_seed(0)
    data = load_digits_split(seed=0)
    model = train_embedding_model(DigitsEmbeddingNet(), data.gallery_x, data.gallery_y, sigma=0.25, epochs=15, seed=0)
    gallery = Gallery.from_model(model, data.gallery_x, data.gallery_y)
    return model, gallery, data


def test_batch_size_never_changes_a_result(digits_setup):
    model, gallery, data = digits_setup
    q, y = data.query_x[:4], data.query_y[:4]
    results = []
    for batch_size in (97, 1000, 4100):
        certs = SmoothedRetriever(model, gallery, 0.25, batch_size=batch_size, seed=7).certify(q, y, n0=50, n=1000, ks=(1, 5))
        results.append([{k: v for k, v in c.to_dict().items() if k != "seconds"} for c in certs])
    assert results[0] == results[1] == results[2]


def test_screened_nearest_neighbour_search_never_changes_a_result(digits_setup):
    """nn_precision tf32/bf16 screen with tensor-core precision but verify exactly: same certificates."""
    model, gallery, data = digits_setup
    q, y = data.query_x[:4], data.query_y[:4]
    results = []
    for nn_precision in ("exact", "tf32", "bf16"):
        certs = SmoothedRetriever(model, gallery, 0.25, batch_size=700, seed=7, nn_precision=nn_precision).certify(
            q, y, n0=50, n=1000, ks=(1, 5))
        results.append([{k: v for k, v in c.to_dict().items() if k != "seconds"} for c in certs])
    assert results[0] == results[1] == results[2]


def test_stream_indices_make_a_query_independent_of_its_neighbours(digits_setup):
    model, gallery, data = digits_setup
    r = SmoothedRetriever(model, gallery, 0.25, batch_size=300, seed=3)
    together = r.certify(data.query_x[:3], data.query_y[:3], n0=20, n=500)
    alone = r.certify(data.query_x[2:3], data.query_y[2:3], indices=[2], n0=20, n=500)
    strip = lambda c: {k: v for k, v in c.to_dict().items() if k != "seconds"}  # noqa: E731
    assert strip(together[2]) == strip(alone[0])


def test_leave_one_out_excludes_the_query_itself(digits_setup):
    model, gallery, data = digits_setup
    r = SmoothedRetriever(model, gallery, 0.25, batch_size=1000)
    x = data.gallery_x[:3]
    without = r.certify(x, data.gallery_y[:3], exclude=[0, 1, 2], n0=20, n=300)
    with_self = r.certify(x, data.gallery_y[:3], n0=20, n=300)
    # With itself in the gallery the clean query is its own nearest neighbour (distance 0)...
    assert [c.clean_prediction for c in with_self] == list(data.gallery_y[:3])
    # ...and the radii of the soft model cannot be larger once that row is excluded.
    for a, b in zip(without, with_self):
        assert (a.soft_gaussian_radius or 0) <= (b.soft_gaussian_radius or 0) + 1e-12


def test_summary_of_a_digits_run(digits_setup):
    model, gallery, data = digits_setup
    certs = SmoothedRetriever(model, gallery, 0.25, batch_size=2000).certify(data.query_x[:30], data.query_y[:30], n0=50, n=2000)
    s = summarize(certs, [0.0, 0.25, 0.5], ks=(1,))
    assert s["num_queries"] == 30 and s["clean_recall_at_1"] > 0.8
    vote = s["certified_recall_at_1"]["vote"]
    assert vote["0.0"] >= vote["0.25"] >= vote["0.5"]
    assert vote["0.0"] > 0.7  # a noise-trained model certifies most queries at radius 0
    assert s["certified_recall_at_1"]["gaussian"]["0.0"] >= s["certified_recall_at_1"]["lipschitz"]["0.25"]
    assert s["samples"] == 30 * 2050 and s["samples_per_second"] > 0
    for c in certs:  # abstention is reported as -1 / None, consistently
        assert (c.vote_prediction == -1) == (c.vote_radius is None)
        assert (c.soft_prediction == -1) == (c.soft_gaussian_radius is None)
        if c.soft_gaussian_radius is not None:
            assert c.soft_gaussian_radius >= c.soft_lipschitz_radius


class BadModel(torch.nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def forward(self, x):
        if self.mode == "shape":
            return torch.ones(x.shape[0], 3, 2)
        if self.mode == "dim":
            return torch.ones(x.shape[0], 5)
        e = torch.ones(x.shape[0], 1)
        if self.mode == "nan":
            e[-1] = float("nan")
        return e


GALLERY_1D = Gallery(np.array([[1.0], [-1.0]], np.float32), np.array([0, 1]))


@pytest.mark.parametrize(
    "model,kwargs,exc,match",
    [
        (BadModel("shape"), {}, ValueError, r"must return \(batch, k\) embeddings"),
        (BadModel("dim"), {}, ValueError, "dimension 5 but the gallery has 1"),
        (BadModel("nan"), {}, ValueError, "model output is unusable"),
        (SignModel(np.ones(4), 0.0), dict(queries=np.zeros((2, 5), np.float32)), ValueError, "the model failed on inputs of shape"),
        (SignModel(np.ones(4), 0.0), dict(n0=0), ValueError, r"n0 must be in \[1,"),
        (SignModel(np.ones(4), 0.0), dict(n=0), ValueError, r"n must be in \[1,"),
        (SignModel(np.ones(4), 0.0), dict(alpha=0.0), ValueError, r"alpha must be a number in \(0, 1\)"),
        (SignModel(np.ones(4), 0.0), dict(alpha=1.5), ValueError, r"alpha must be a number in \(0, 1\)"),
        (SignModel(np.ones(4), 0.0), dict(exclude=[2, 0]), ValueError, r"exclude must be in \[-1, 1\]"),
        (SignModel(np.ones(4), 0.0), dict(exclude=[0]), ValueError, "exclude must be 2 integers"),
        (SignModel(np.ones(4), 0.0), dict(labels=[0, -1]), ValueError, r"labels must be in \[0,"),
        (SignModel(np.ones(4), 0.0), dict(queries=np.full((2, 4), np.nan, np.float32)), ValueError, "queries contain non-finite"),
        (SignModel(np.ones(4), 0.0), dict(queries=np.zeros((2, 4), np.int64)), TypeError, "queries must have a floating dtype"),
        (SignModel(np.ones(4), 0.0), dict(ks=[3]), ValueError, r"ks must be in \[1, 2\]"),  # K above the gallery size
        (SignModel(np.ones(4), 0.0), dict(ks=[0]), ValueError, r"ks must be in \[1,"),
        (SignModel(np.ones(4), 0.0), dict(mode="adaptive"), ValueError, "mode must be one of"),
        (SignModel(np.ones(4), 0.0), dict(soft_bound="hoeffding"), ValueError, "soft_bound must be one of"),
        (SignModel(np.ones(4), 0.0), dict(nn=5), TypeError, "unknown setting"),
    ],
)
def test_certify_bad_input(model, kwargs, exc, match):
    args = dict(queries=np.zeros((2, 4), np.float32), labels=[0, 1], n0=5, n=10)
    args.update(kwargs)
    retriever = SmoothedRetriever(model, GALLERY_1D, 0.5, batch_size=8)
    with pytest.raises(exc, match=match):
        retriever.certify(args.pop("queries"), args.pop("labels"), **args)


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: SmoothedRetriever(SignModel(np.ones(4), 0.0), GALLERY_1D, 0.0), ValueError, "sigma must be a finite number > 0"),
        (lambda: SmoothedRetriever(SignModel(np.ones(4), 0.0), GALLERY_1D, -1.0), ValueError, "sigma must be"),
        (lambda: SmoothedRetriever(SignModel(np.ones(4), 0.0), GALLERY_1D, 0.5, batch_size=0), ValueError, "batch_size"),
        (lambda: SmoothedRetriever(lambda x: x, GALLERY_1D, 0.5), TypeError, "model must be a torch.nn.Module"),
        (lambda: SmoothedRetriever(SignModel(np.ones(4), 0.0), GALLERY_1D, 0.5, nn_precision="fp16"), ValueError,
         "nn_precision must be one of"),
        (lambda: Gallery(np.ones((2, 3)), np.array([0, 1, 2])), ValueError, "one label per row"),
        (lambda: Gallery(np.ones((2, 3)), np.array([0, -1])), ValueError, "labels must be >= 0"),
        (lambda: Gallery(np.ones((2, 3)), np.array([0.0, 1.0])), TypeError, "labels must be integers"),
        (lambda: Gallery(np.array([[1.0, np.nan]]), np.array([0])), ValueError, "non-finite"),
        (lambda: Gallery(np.zeros((2, 3)), np.array([0, 1])), ValueError, "is zero and cannot be normalised"),
        (lambda: Gallery(np.ones((0, 3)), np.zeros(0, np.int64)), ValueError, "non-empty 2-D"),
    ],
)
def test_construction_bad_input(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@requires_cuda
def test_cuda_and_cpu_certificates_agree(digits_setup):
    model, gallery, data = digits_setup
    q, y = data.query_x[:3], data.query_y[:3]
    cpu = SmoothedRetriever(model, gallery, 0.25, batch_size=1000, seed=4).certify(q, y, n0=50, n=2000)
    gpu = SmoothedRetriever(model, gallery.to("cuda"), 0.25, batch_size=1000, seed=4, device="cuda").certify(q, y, n0=50, n=2000)
    for a, b in zip(cpu, gpu):  # same noise bits; the model may round differently on the GPU
        assert abs(a.vote_count - b.vote_count) <= 20
        if a.vote_radius and b.vote_radius:
            assert a.vote_radius == pytest.approx(b.vote_radius, abs=0.02)


def reference_soft_radii(f, t, g, labels, label, sigma, exclude=-1, k=1):
    """Pair by pair, straight from docs/certification.md section 3 (scipy's norm.ppf, direct differences)."""
    pos = [i for i in range(len(g)) if labels[i] == label and i != exclude]
    neg = [j for j in range(len(g)) if labels[j] != label and j != exclude]
    best_g = best_l = -math.inf
    for p in pos:
        rg, rl = [], []
        for b in neg:
            d = g[p] - g[b]
            sep = np.linalg.norm(d)
            u = d / sep
            tau = d @ (g[p] + g[b]) / (2 * sep)  # no cancellation
            low = min(max(u @ f - t, -1.0), 1.0)
            rl.append(sigma * math.sqrt(math.pi / 2) * (low - tau))
            rg.append(math.inf if tau <= -1 else sigma * (stats.norm.ppf((1 + low) / 2) - stats.norm.ppf((1 + tau) / 2)))
        best_g = max(best_g, sorted(rg)[k - 1])
        best_l = max(best_l, sorted(rl)[k - 1])
    return best_g, best_l


def near_pair_case(seed):
    """A positive and a negative 1e-3 apart in 256 or 512 dims, F_hat along their difference with
    u.F_hat = 1 - 1e-6 (where Phi^-1 is steep), and negatives far away (tau < -1)."""
    rng = np.random.default_rng(seed)
    d, m = int(rng.choice([256, 512])), int(rng.choice([1, 3, 8]))
    gp = random_unit(rng, 1, d)[0]
    w = rng.standard_normal(d)
    w -= (w @ gp) * gp
    w /= np.linalg.norm(w)
    gb = gp + 1.0002e-3 * w
    g = np.vstack([gp, gb / np.linalg.norm(gb)]).astype(np.float32).astype(np.float64)
    f = (g[0] - g[1]) / np.linalg.norm(g[0] - g[1]) * (1 - 1e-6)
    g = np.vstack([g, g[0] - 20 * f[None, :] + 0.1 * rng.standard_normal((m, d))])
    return f, g, np.r_[0, np.ones(m + 1, int)]


@pytest.mark.parametrize("seed", [4378, 7297, 48908])
def test_gram_rounding_never_overstates_a_near_pair(seed):
    """Found by fuzzing (these seeds): the Gram expansion's rounding in 256-512 dims moved the
    separation of a pair 1e-3 apart by more than the fixed 1e-9 allowance, and with u.F near 1
    the Gaussian radius came out ~1e-5 above the exact one. Every radius must stay below the
    exact value, computed here in rational arithmetic."""
    from fractions import Fraction

    f, g, labels = near_pair_case(seed)
    r = soft_radii(f, 0.0, g, (g**2).sum(1), labels, 0, 1.0)
    gp, gb, ff = ([Fraction(float(x)) for x in v] for v in (g[0], g[1], f))
    diff = [a - b for a, b in zip(gp, gb)]
    sep = math.sqrt(float(sum(a * a for a in diff)))
    uf = float(sum(a * b for a, b in zip(diff, ff))) / sep
    tau = float(sum(a * (b + c) for a, b, c in zip(diff, gp, gb))) / (2 * sep)
    exact_gauss = stats.norm.ppf((1 + uf) / 2) - stats.norm.ppf((1 + tau) / 2)
    exact_lip = math.sqrt(math.pi / 2) * (uf - tau)
    assert r.gaussian <= exact_gauss and r.lipschitz <= exact_lip
    assert r.gaussian > 0.999 * exact_gauss  # and not by giving up


@pytest.mark.parametrize("kind", ["unit", "scaled", "clustered"])
def test_pruning_positives_never_changes_soft_radii(kind, monkeypatch):
    """soft_radii skips positives whose upper bounds cannot beat the best radius so far; the
    result must equal the unpruned computation (up to float64 rounding), for every K and both
    certificates."""
    from retrievalguard_fast.smoothing import certificates

    pairs = []  # size of every pair matrix computed
    real = certificates._pair_terms
    monkeypatch.setattr(certificates, "_pair_terms", lambda f, g, n2, proj, p, b, *a, **kw: (
        pairs.append(len(p) * len(b)), real(f, g, n2, proj, p, b, *a, **kw))[1])
    rng = np.random.default_rng({"unit": 11, "scaled": 12, "clustered": 13}[kind])
    work = {True: 0, False: 0}
    for trial in range(12):
        n, dim = 300, 8
        g = random_unit(rng, n, dim)
        if kind == "scaled":
            g = g * rng.uniform(0.3, 1.0, (n, 1))
        elif kind == "clustered":  # near-duplicates across labels: close pairs, tiny separations
            g = random_unit(rng, 30, dim)[rng.integers(0, 30, n)] + 1e-4 * rng.standard_normal((n, dim))
            g /= np.linalg.norm(g, axis=1, keepdims=True)
        g = g.astype(np.float32).astype(np.float64)
        labels = rng.integers(0, 4, n)
        f = 0.7 * g[trial] + 0.05 * random_unit(rng, 1, dim)[0]
        label, exclude = int(labels[trial]), int(rng.choice([-1, trial]))
        dev = float(rng.choice([0.0, 0.01, 0.2]))
        args = (f, dev, g, (g**2).sum(1), labels, label, 0.4)
        for prune in (True, False):
            pairs.clear()
            result = soft_radii(*args, exclude=exclude, ks=(1, 3, 5), chunk=16, prune=prune)
            work[prune] += sum(pairs)
            if prune:
                pruned = result
        # The same up to float64 rounding of the Gram entries (BLAS rounds by matrix shape).
        for k in (1, 3, 5):
            for a, b in ((pruned.gaussian_at_k[k], result.gaussian_at_k[k]),
                         (pruned.lipschitz_at_k[k], result.lipschitz_at_k[k])):
                assert a == b or a == pytest.approx(b, rel=1e-9, abs=1e-12)
    assert work[True] < 0.5 * work[False]  # the pruning really skipped most of the work


@pytest.mark.parametrize("unit", [True, False])
def test_soft_radii_match_a_pairwise_reference(unit):
    rng = np.random.default_rng(8 if unit else 9)
    for trial in range(8):
        g = random_unit(rng, 25, 6) * (1.0 if unit else rng.uniform(0.5, 1.0, (25, 1)))
        if unit:  # as the Gallery stores it: float32 values, so tau is ~1e-7 rather than 0
            g = g.astype(np.float32).astype(np.float64)
        labels = rng.integers(0, 3, 25)
        f = 0.8 * g[trial] + 0.02 * random_unit(rng, 1, 6)[0]
        label = int(labels[trial])
        exclude = int(rng.integers(-1, 25))
        for k in (1, 2, 4):
            r = soft_radii(f, 0.01, g, (g**2).sum(1), labels, label, 0.3, exclude=exclude, ks=(1, k))
            ref_g, ref_l = reference_soft_radii(f, 0.01, g, labels, label, 0.3, exclude, k)
            assert r.lipschitz_at_k[k] <= ref_l + 1e-12
            assert r.lipschitz_at_k[k] == pytest.approx(ref_l, rel=1e-7, abs=1e-8)
            assert r.gaussian_at_k[k] <= ref_g + 1e-12  # the 1e-9 rounding allowance: never above
            assert r.gaussian_at_k[k] == pytest.approx(ref_g, rel=1e-7, abs=1e-8)
