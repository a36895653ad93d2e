import math

import numpy as np
import pytest
from scipy import stats

from retrievalguard_fast.smoothing.certificates import vote_radius
from retrievalguard_fast.smoothing.stats import MCDIARMID, clopper_pearson_lower, clopper_pearson_upper, mean_embedding_deviation


def test_clopper_pearson_matches_scipy_binomtest():
    rng = np.random.default_rng(0)
    triples = [(0, 10, 0.05), (10, 10, 0.05), (1, 1, 0.5), (5000, 10000, 0.001), (99990, 100000, 0.001)]
    triples += [(int(k), int(n), float(a)) for n, a in zip(rng.integers(1, 5000, 200), rng.choice([0.1, 0.01, 0.001], 200))
                for k in [rng.integers(0, n + 1)]]
    for k, n, alpha in triples:
        lo = stats.binomtest(k, n, alternative="greater").proportion_ci(confidence_level=1 - alpha, method="exact").low
        hi = stats.binomtest(k, n, alternative="less").proportion_ci(confidence_level=1 - alpha, method="exact").high
        assert clopper_pearson_lower(k, n, alpha) == pytest.approx(lo, abs=1e-12), (k, n, alpha)
        assert clopper_pearson_upper(k, n, alpha) == pytest.approx(hi, abs=1e-12), (k, n, alpha)


def test_clopper_pearson_coverage_by_simulation():
    rng = np.random.default_rng(1)
    p, n, alpha = 0.83, 200, 0.05
    k = rng.binomial(n, p, size=20000)
    failures = np.mean(clopper_pearson_lower(k, np.full_like(k, n), alpha) > p)
    assert failures <= alpha  # exact CP is conservative


@pytest.mark.parametrize("k,n,alpha", [(-1, 10, 0.1), (11, 10, 0.1), (1, 0, 0.1), (1, 10, 0.0), (1, 10, 1.0)])
def test_clopper_pearson_bad_input(k, n, alpha):
    with pytest.raises(ValueError):
        clopper_pearson_lower(k, n, alpha)


def test_vote_radius_abstains_when_split_evenly_and_grows_with_n():
    assert vote_radius(500, 1000, 0.001, 0.5)[1] is None
    assert vote_radius(0, 1000, 0.001, 0.5) == (0.0, None)
    radii = [vote_radius(int(0.9 * n), n, 0.001, 0.5)[1] for n in (100, 1000, 10000, 100000)]
    assert all(a < b for a, b in zip(radii, radii[1:]))
    assert radii[-1] < 0.5 * stats.norm.ppf(0.9)  # never beyond the true radius sigma Phi^-1(p)


def test_mean_embedding_deviation_formula_and_coverage():
    n, alpha = 400, 0.05
    assert mean_embedding_deviation(n, alpha, bound=MCDIARMID) == pytest.approx((1 + math.sqrt(2 * math.log(1 / alpha))) / math.sqrt(n))
    # Unit vectors concentrated around a direction (von Mises-Fisher-like), in 16-d: known mean
    # from a huge sample; the bound must fail in well under alpha of the trials.
    rng = np.random.default_rng(2)
    dim = 16
    mu = np.zeros(dim)
    mu[0] = 2.0

    def draw(size):
        v = rng.standard_normal((size, dim)) + mu
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    true_mean = draw(2_000_000).mean(0)
    t = mean_embedding_deviation(n, alpha, dim)
    trials = 2000
    failures = sum(np.linalg.norm(draw(n).mean(0) - true_mean) > t for _ in range(trials))
    assert failures / trials <= alpha
    with pytest.raises(ValueError):
        mean_embedding_deviation(0, 0.1)
