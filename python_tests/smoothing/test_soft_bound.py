"""The soft certificate's Monte-Carlo bound on |F_hat - F| (docs/certification.md, section 3).

Three kinds of check, because a bound that is too small would overstate every soft radius:
- against an independent reference: Pinelis' tail written out as in the paper, and the largest
  fixed point of the variance bound found by brute force (these pin every constant, so they catch
  a wrong one that coverage simulations, conservative by nature, would not);
- by coverage simulation: exact i.i.d. draws from finite laws with a known mean, in fixed-n and
  sequential mode (against the worst stopping rule), at alpha = 0.1 and 0.2;
- on closed-form models, through the certify step: no soft radius above the exact one more often
  than alpha, and the tightness the bound was built for.
"""

import math

import numpy as np
import pytest
from scipy.stats import norm

from retrievalguard_fast.smoothing import stats
from retrievalguard_fast.smoothing.certificates import soft_radii
from retrievalguard_fast.smoothing.certify import Evidence, certify_step
from retrievalguard_fast.smoothing import Gallery
from retrievalguard_fast.smoothing.sequential import doubling_schedule, fixed_schedule
from retrievalguard_fast.smoothing.stats import (BENNETT, MCDIARMID, bennett_deviation, mcdiarmid_deviation,
                                       mean_embedding_deviation)

# ---------------------------------------------------------------------- independent reference


def pinelis_tail(r, a, b2):
    """Pinelis (1994), Theorem 3.4 for a Hilbert space (D = 1), as printed there:
    P[|S_n| >= r] <= 2 exp(r/a - (r/a + b^2/a^2) ln(1 + r a / b^2))."""
    return 2.0 * math.exp(r / a - (r / a + b2 / a**2) * math.log(1.0 + r * a / b2))


def reference_radius(n, alpha, v, a):
    """The smallest s with pinelis_tail(n s, a, n v) <= alpha, by plain bisection."""
    lo, hi = 0.0, 10.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if pinelis_tail(n * mid, a, n * v) <= alpha else (mid, hi)
    return hi


def reference_largest_fixed_point(n, alpha, mean_norm):
    """Largest s with s <= g(s), g(s) = radius(variance 1 - (|F_hat| - s)_+^2, step min(2, 1 + |F_hat| + s)),
    found by scanning down from the worst case, then refined by bisection."""
    g = lambda s: reference_radius(n, alpha, 1.0 - max(0.0, mean_norm - s) ** 2, min(2.0, 1.0 + mean_norm + s))  # noqa: E731
    top = reference_radius(n, alpha, 1.0, 2.0)
    grid = np.linspace(top, 0.0, 400)
    above = next(s for s in grid if s <= g(s))  # the first point from the top inside the set
    lo, hi = above, min(top, above + top / 399)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mid <= g(mid) else (lo, mid)
    return lo


GRID = [(n, alpha, v, a) for n in (50, 300, 10_000, 1_000_000) for alpha in (0.2, 1e-3, 1e-6)
        for v in (1.0, 0.3, 0.02) for a in (1.0, 1.6, 2.0)]


def pinelis_violations(radius_fn):
    """Cases where ``radius_fn(n, alpha, v, a)`` leaves a tail above alpha, or is not tight."""
    bad = []
    for n, alpha, v, a in GRID:
        s = radius_fn(n, alpha, v, a)
        if pinelis_tail(n * s, a, n * v) > alpha * (1 + 1e-9) or pinelis_tail(n * s * (1 - 1e-6), a, n * v) <= alpha:
            bad.append((n, alpha, v, a, s))
    return bad


def test_bennett_radius_solves_pinelis_inequality_and_is_tight():
    assert pinelis_violations(bennett_deviation) == []


def test_a_wrong_constant_is_caught(monkeypatch):
    """Dropping Pinelis' factor 2 (ln(1/alpha) for ln(2/alpha)) shrinks every radius by a few per
    cent: the reference check above must see it."""
    real_log = math.log

    def one_sided(n, alpha, v, a):
        with monkeypatch.context() as m:
            m.setattr(stats.math, "log", lambda x: real_log(x / 2) if abs(x * alpha - 2) < 1e-9 else real_log(x))
            return bennett_deviation(n, alpha, v, a)

    assert len(pinelis_violations(one_sided)) == len(GRID)
    assert len(pinelis_violations(lambda n, alpha, v, a: 0.99 * bennett_deviation(n, alpha, v, a))) == len(GRID)


@pytest.mark.parametrize("n,alpha", [(200, 0.1), (2_000, 1e-3), (10_100, 1e-3 / 7), (100_100, 1e-3)])
@pytest.mark.parametrize("mean_norm", [0.0, 0.3, 0.89, 0.99, 1.0])
def test_variance_is_the_largest_fixed_point(n, alpha, mean_norm):
    """The reported radius is the largest fixed point (up to 1e-6 relative, and never below it):
    a plug-in variance 1 - |F_hat|^2, which is not valid, would be below it."""
    t = mean_embedding_deviation(n, alpha, mean_norm=mean_norm)
    ref = reference_largest_fixed_point(n, alpha, mean_norm)
    assert ref * (1 - 1e-9) <= t <= ref * (1 + 1e-6) + 1e-15
    if 0.0 < mean_norm < 1.0:
        assert reference_radius(n, alpha, 1.0 - mean_norm**2, 1.0 + mean_norm) < ref * (1 - 1e-6)


def test_never_looser_than_mcdiarmid():
    for n in (1, 2, 5, 10, 20, 40, 60, 100, 1_000, 10**5, 10**7):
        for alpha in (0.5, 0.2, 1e-3, 1e-9):
            for mean_norm in (None, 0.0, 0.5, 1.0):
                for dim in (0, 128):
                    t = mean_embedding_deviation(n, alpha, dim, mean_norm=mean_norm)
                    t_m = mean_embedding_deviation(n, alpha, dim, bound=MCDIARMID)
                    assert t <= t_m, (n, alpha, mean_norm, dim)
    # McDiarmid's form is the published one, and is used by the default where Bennett's worst case is larger.
    assert mean_embedding_deviation(400, 0.05, bound=MCDIARMID) == pytest.approx(
        (1 + math.sqrt(2 * math.log(1 / 0.05))) / math.sqrt(400), rel=1e-15)
    assert mean_embedding_deviation(10, 1e-3, mean_norm=0.99) == mcdiarmid_deviation(10, 1e-3)
    assert mean_embedding_deviation(10**5, 1e-3, mean_norm=0.9) < 0.45 * mcdiarmid_deviation(10**5, 1e-3)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="soft bound must be one of bennett, mcdiarmid"):
        mean_embedding_deviation(100, 0.1, bound="hoeffding")
    with pytest.raises(ValueError, match="samples must be >= 1"):
        mean_embedding_deviation(0, 0.1)


def test_bennett_radius_is_never_below_the_high_precision_root():
    """The float64 radius against the root of Pinelis' equation in 60-digit arithmetic, with no
    downward tolerance at all, including extreme alpha, n and variance."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60

    def root(n, alpha, v, a):
        n, alpha, v, a = (mpmath.mpf(x) for x in (n, alpha, v, a))
        e = lambda s: n * v / a**2 * ((1 + a * s / v) * mpmath.log1p(a * s / v) - a * s / v) - mpmath.log(2 / alpha)  # noqa: E731
        lo, hi = mpmath.mpf(0), mpmath.mpf(10)
        for _ in range(190):  # bisection: the root is in (lo, hi], hi - lo = 10 / 2^190
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if e(mid) >= 0 else (mid, hi)
        return hi

    cases = [(n, alpha, v, a) for n in (40, 10**4, 10**9) for alpha in (0.2, 1e-3, 1e-12)
             for v in (1.0, 0.2, 1e-6, 1e-12) for a in (1.0, 1.9, 2.0)]
    for case in cases:
        assert bennett_deviation(*case) >= root(*case), case


def test_bennett_radius_grows_with_variance_and_step_and_stays_below_bernstein():
    """Monotone in the variance and the step (what the fixed point relies on), and never above
    the Bernstein form of the same theorem (Smale & Zhou 2007, Lemma 2, with the centred step:
    s <= 2 a ln(2/alpha) / (3n) + sqrt(2 v ln(2/alpha) / n))."""
    for n in (50, 10**4, 10**7):
        for alpha in (0.1, 1e-3, 1e-9):
            variances = [0.0, 1e-9, 1e-4, 0.01, 0.1, 0.5, 1.0]
            for a in (1.0, 1.5, 2.0):
                r = [bennett_deviation(n, alpha, v, a) for v in variances]
                assert r == sorted(r) and r[0] == 0.0
            for v in variances[1:]:
                r = [bennett_deviation(n, alpha, v, a) for a in (1.0, 1.2, 1.6, 2.0)]
                assert r == sorted(r)
                L = math.log(2 / alpha)
                assert r[-1] <= 2 * 2.0 * L / (3 * n) + math.sqrt(2 * v * L / n)
    assert bennett_deviation(100, 0.1, 1e-310, 2.0) > 0  # a tiny variance does not overflow


def test_a_mean_norm_beyond_one_is_refused():
    with pytest.raises(ValueError, match="mean_norm must be in"):
        mean_embedding_deviation(10**4, 1e-3, 0, mean_norm=1.01)
    assert mean_embedding_deviation(10**4, 1e-3, 4, mean_norm=1.0 + 2.0**-33) > 0  # rounding allowed


def plug_in_deviation(n, alpha, mean_norm):
    """NOT valid: the variance of F_hat's own law, 1 - |F_hat|^2, used as if it were the truth."""
    return bennett_deviation(n, alpha, max(0.0, 1.0 - mean_norm**2), 1.0 + mean_norm)


def exact_two_point_failure(n, p, alpha, deviation):
    """Exact P[|F_hat - F| > t(F_hat)] for +e1 / -e1 with probability p / 1 - p (a binomial sum)."""
    from scipy.stats import binom

    k = np.arange(n + 1)
    f_hat, f = (2.0 * k - n) / n, 2.0 * p - 1.0
    fails = np.array([abs(fh - f) > deviation(n, alpha, abs(fh)) for fh in f_hat])
    return float(binom.pmf(k, n, p)[fails].sum())


@pytest.mark.parametrize("p", [0.95, 0.99, 0.995, 0.999])
def test_exact_coverage_on_two_point_laws(p):
    """No simulation error: the exact failure probability of the bound on +-e1 laws near |F| = 1,
    where the variance is smallest and the bound's fixed point matters most, is at most alpha;
    the plug-in shortcut, invalid, exceeds alpha at p = 0.995 (so this test can see it)."""
    n, alpha = 300, 0.1
    ours = exact_two_point_failure(n, p, alpha, lambda n, a, m: mean_embedding_deviation(n, a, 1, mean_norm=m))
    assert ours <= alpha, ours
    if p == 0.995:
        assert exact_two_point_failure(n, p, alpha, plug_in_deviation) > alpha


def test_the_stopping_rule_lower_bound_is_below_the_caps_bound():
    """deviation_at_least (the cap's bound as the stopping rule foresees it) never exceeds what
    the cap then reports, on simulated streams (it only decides how many samples are drawn)."""
    rng = np.random.default_rng(17)
    for kind in ("clustered", "spread", "two-point"):
        vectors, p = finite_law(kind, rng)
        level, n_j, n_cap = 1e-3 / 4, 500, 4000
        for _ in range(200):
            first = rng.multinomial(n_j, p)
            f_j = first @ vectors / n_j
            norm_j = float(np.linalg.norm(f_j))
            t_j = mean_embedding_deviation(n_j, level, vectors.shape[1], mean_norm=norm_j)
            f_cap = (first + rng.multinomial(n_cap - n_j, p)) @ vectors / n_cap
            t_cap = mean_embedding_deviation(n_cap, level, vectors.shape[1], mean_norm=float(np.linalg.norm(f_cap)))
            foreseen = stats.deviation_at_least(n_cap, level, vectors.shape[1], norm_of_mean_at_most=norm_j + t_j,
                                                norm_of_mean_at_least=norm_j - t_j)
            assert foreseen <= t_cap


# ---------------------------------------------------------------------- coverage by simulation


def finite_law(kind, rng):
    """(vectors (K, d) of norm <= 1, probabilities (K,)): an exact law with a known mean."""
    if kind == "clustered":  # |F| about 0.9, total variance about 0.2
        v = rng.standard_normal((256, 16)) * 0.12
        v[:, 0] += 1.0
    elif kind == "spread":  # symmetric, F = 0, total variance 1
        v = rng.standard_normal((128, 16))
        v = np.concatenate([v, -v])
    elif kind == "128-d":  # |F| about 0.6
        v = rng.standard_normal((512, 128)) * 0.1
        v[:, :4] += 0.5
    else:  # "two-point": +e1 / -e1 with p = 0.95 (a Bernoulli, where the tails are heaviest)
        return np.array([[1.0], [-1.0]]), np.array([0.95, 0.05])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v, np.full(len(v), 1.0 / len(v))


def allowed_failures(alpha, runs):
    return alpha * runs + 3 * math.sqrt(alpha * (1 - alpha) * runs)


@pytest.mark.parametrize("kind", ["clustered", "spread", "128-d", "two-point"])
@pytest.mark.parametrize("alpha", [0.1, 0.2])
@pytest.mark.parametrize("bound", [BENNETT, MCDIARMID])
def test_coverage_fixed_n(kind, alpha, bound):
    rng = np.random.default_rng(11)
    vectors, p = finite_law(kind, rng)
    mean = p @ vectors
    runs, n = 4000, 300
    failures = 0
    for counts in rng.multinomial(n, p, size=runs):
        f_hat = counts @ vectors / n
        t = mean_embedding_deviation(n, alpha, vectors.shape[1], mean_norm=float(np.linalg.norm(f_hat)), bound=bound)
        failures += np.linalg.norm(f_hat - mean) > t
    print(f"\n{kind}, alpha {alpha}, {bound}: |F_hat - F| > t in {failures}/{runs} runs (|F| = {np.linalg.norm(mean):.2f})")
    assert failures <= allowed_failures(alpha, runs)


@pytest.mark.parametrize("kind", ["clustered", "spread", "128-d", "two-point"])
@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_coverage_sequential_against_the_worst_stopping_rule(kind, alpha):
    """A failure is any checkpoint where |F_hat_j - F| > t_j (so whatever checkpoint a stopping
    rule reports, it is covered); bounds at alpha / J."""
    rng = np.random.default_rng(12)
    vectors, p = finite_law(kind, rng)
    mean = p @ vectors
    n0, schedule = 20, doubling_schedule(800, alpha, [0.1], first=100)
    level, runs, failures = schedule.level, 2000, 0
    for _ in range(runs):
        counts, drawn = rng.multinomial(n0, p), 0
        for point in schedule.checkpoints:
            counts = counts + rng.multinomial(point - drawn, p)
            drawn = point
            f_hat = counts @ vectors / (n0 + point)
            t = mean_embedding_deviation(n0 + point, level, vectors.shape[1], mean_norm=float(np.linalg.norm(f_hat)))
            if np.linalg.norm(f_hat - mean) > t:
                failures += 1
                break
    print(f"\nsequential {kind}, alpha {alpha}: some checkpoint failed in {failures}/{runs} runs")
    assert failures <= allowed_failures(alpha, runs)


# ---------------------------------------------------------------------- closed-form models


def half_space(distance, sigma, g_negative):
    """The sign model: embedding +1 with probability p = Phi(distance / sigma), else -1 (the noisy
    query on either side of a half-space), gallery {+1 (label 0), g_negative (label 1)}.

    The smoothed soft model keeps label 0 while F = 2p - 1 stays above tau = (1 + g_negative)/2,
    so its exact radius is distance - sigma Phi^-1((1 + tau)/2)."""
    gallery = Gallery(np.array([[1.0], [g_negative]], np.float32), np.array([0, 1]), normalize=False)
    tau = (1.0 + g_negative) / 2.0
    exact = distance - sigma * norm.ppf((1 + tau) / 2) if tau > -1 else math.inf
    return gallery, norm.cdf(distance / sigma), exact


def simulate_certify(gallery, p, sigma, schedule, rng, soft_bound=BENNETT, n0=100):
    """The certify step fed by exact draws of the sign model (what the sampler would count):
    +1 samples vote label 0, -1 samples vote for the gallery row nearest to -1."""
    minus_label = int(gallery.labels_np[np.argmin(np.abs(gallery.embeddings64[:, 0] + 1.0))])

    def votes(plus, total):
        v = np.zeros(2, np.int64)
        v[0] += plus
        v[minus_label] += total - plus
        return v

    sel_plus = rng.binomial(n0, p)
    plus, drawn = sel_plus, 0
    for j, point in enumerate(schedule.checkpoints):
        cert_plus = rng.binomial(point - drawn, p)
        plus += cert_plus
        drawn = point
        ev = Evidence(index=0, label=0, exclude=-1, clean_prediction=0, selection_votes=votes(sel_plus, n0),
                      votes=votes(plus - sel_plus, point), n0=n0, n=point,
                      embedding_sum=np.array([2.0 * plus - (n0 + point)]), final=j == len(schedule.checkpoints) - 1)
        cert = certify_step(ev, gallery, sigma, schedule, (1,), soft_bound)
        if cert is not None:
            return cert
    raise AssertionError("the last checkpoint must certify")


@pytest.mark.parametrize("alpha", [0.1, 0.2])
@pytest.mark.parametrize("sequential", [False, True])
@pytest.mark.parametrize("g_negative", [-1.0, 0.55])
def test_soft_radius_above_exact_at_most_alpha(alpha, sequential, g_negative):
    sigma, distance, runs = 0.5, 0.8, 2000
    gallery, p, exact = half_space(distance, sigma, g_negative)
    rng = np.random.default_rng(13)
    schedule = doubling_schedule(1600, alpha, [0.1, 0.2], first=100) if sequential else fixed_schedule(400, alpha)
    over = sum((simulate_certify(gallery, p, sigma, schedule, rng).soft_gaussian_radius or 0) > exact
               for _ in range(runs))
    print(f"\nhalf-space, tau {(1 + g_negative) / 2}: soft radius above exact {exact:.3f} in {over}/{runs} runs")
    assert over <= allowed_failures(alpha, runs)


@pytest.mark.parametrize("n,target", [(10_000, 0.75), (100_000, 0.90)])
def test_tightness_on_the_closed_form_model(n, target):
    """sigma 0.5, query 0.8 from the plane, tau 0.775 (exact soft radius 0.193), alpha 0.001: the
    median soft Gaussian radius over 20 queries is at least ``target`` of the exact one, and the
    McDiarmid form reaches far less."""
    gallery, p, exact = half_space(0.8, 0.5, 0.55)
    schedule = fixed_schedule(n, 0.001)
    rng = np.random.default_rng(14)
    ratio = {bound: np.median([simulate_certify(gallery, p, 0.5, schedule, rng, bound).soft_gaussian_radius / exact
                               for _ in range(20)]) for bound in (BENNETT, MCDIARMID)}
    print(f"\nn = {n}: soft Gaussian radius / exact = {ratio[BENNETT]:.3f} (bennett), {ratio[MCDIARMID]:.3f} (mcdiarmid)")
    assert target <= ratio[BENNETT] < 1.0
    assert ratio[MCDIARMID] < ratio[BENNETT] - 0.05


def test_radius_is_the_formula_with_the_reference_bound():
    """Every constant between the samples and the radius, pinned: the certify step's Gaussian and
    Lipschitz radii equal the closed forms evaluated with the independently computed bound."""
    sigma, n0, n = 0.5, 100, 50_000
    gallery, p, exact = half_space(0.8, sigma, 0.55)
    cert = simulate_certify(gallery, p, sigma, fixed_schedule(n, 0.001), np.random.default_rng(15), n0=n0)
    # The same draws again (simulate_certify takes the selection, then the certification count).
    rng = np.random.default_rng(15)
    sel_plus = rng.binomial(n0, p)
    plus = sel_plus + rng.binomial(n, p)
    f_hat = (2.0 * plus - (n0 + n)) / (n0 + n)
    t_ref = reference_largest_fixed_point(n0 + n, 0.001, abs(f_hat)) + 2.0**-32  # + the rounding term, dim 1
    assert cert.soft_deviation == pytest.approx(t_ref, rel=1e-6)
    tau = 0.775
    gauss = sigma * (norm.ppf((1 + f_hat - t_ref) / 2) - norm.ppf((1 + tau) / 2))
    lip = sigma * math.sqrt(math.pi / 2) * (f_hat - t_ref - tau)
    assert cert.soft_gaussian_radius == pytest.approx(gauss, rel=1e-6)
    assert cert.soft_lipschitz_radius == pytest.approx(lip, rel=1e-6)
    assert cert.soft_gaussian_radius < exact


def test_tau_beyond_one_in_magnitude():
    """A non-normalised gallery {0.2 (label 0), -2.5 (label 1)}: tau = -1.15 < -1, every F in
    [-1, 1] is nearer row 0, so label 0's exact radius is infinite, which the Gaussian certificate
    finds with any bound (the Lipschitz one is finite by construction), and label 1 can never be
    certified."""
    g = np.array([[0.2], [-2.5]])
    for f in (-1.0, -0.3, 0.9):
        for t in (mean_embedding_deviation(1000, 1e-3, 1, mean_norm=abs(f)), 0.0):
            r0 = soft_radii(np.array([f]), t, g, (g**2).sum(1), np.array([0, 1]), 0, 0.5)
            r1 = soft_radii(np.array([f]), t, g, (g**2).sum(1), np.array([0, 1]), 1, 0.5)
            assert r0.gaussian == math.inf and 0 < r0.lipschitz < math.inf
            assert not r1.gaussian > 0 and not r1.lipschitz > 0


def test_two_valued_embeddings_never_above_exact():
    """Embeddings e1 (probability p) or e2 (at 60 degrees), gallery {e1 (label 0), e2 (label 1)}:
    the smoothed soft model predicts label 0 exactly when p > 1/2, i.e. its exact radius is the
    query's distance to the half-space. The certificate (range [-1, 1] assumed) stays below it."""
    sigma, distance, alpha, runs = 0.5, 0.6, 0.1, 2000
    e1, e2 = np.array([1.0, 0.0]), np.array([0.5, math.sqrt(3) / 2])
    g = np.stack([e1, e2])
    p = norm.cdf(distance / sigma)
    rng = np.random.default_rng(16)
    over = 0
    for plus in rng.binomial(2000, p, size=runs):
        f_hat = (plus * e1 + (2000 - plus) * e2) / 2000
        t = mean_embedding_deviation(2000, alpha, 2, mean_norm=float(np.linalg.norm(f_hat)))
        r = soft_radii(f_hat, t, g, (g**2).sum(1), np.array([0, 1]), 0, sigma)
        over += r.gaussian > distance
    assert over <= allowed_failures(alpha, runs)


# ---------------------------------------------------------------------- recorded in the run


def test_the_bound_is_recorded_and_a_resume_with_another_is_refused(tmp_path, digits):
    import json

    from retrievalguard_fast.cli import build_parser
    from retrievalguard_fast.errors import InputError
    from retrievalguard_fast.runs import certify_to_folder
    from retrievalguard_fast.smoothing import SmoothedRetriever

    model, gallery, data = digits
    retriever = SmoothedRetriever(model, gallery, 0.25, batch_size=500)
    run = dict(identity={"model": "digits"}, n0=20, n=400, mode="fixed-n", quiet=True)
    summaries = {}
    for bound in (MCDIARMID, BENNETT):
        out = tmp_path / bound
        summaries[bound] = certify_to_folder(str(out), retriever, data.query_x[:6], data.query_y[:6], soft_bound=bound, **run)
        assert json.loads((out / "run.json").read_text())["soft_bound"] == bound
        assert json.loads((out / "summary.json").read_text())["soft_bound"] == bound
        assert f"soft,soft_bound,,{bound}" in (out / "summary.csv").read_text()
    # Same samples, tighter bound: every soft deviation smaller, no soft radius smaller.
    recs = {b: [json.loads(line) for line in (tmp_path / b / "results.jsonl").read_text().splitlines()] for b in summaries}
    for m, b in zip(sorted(recs[MCDIARMID], key=lambda r: r["index"]), sorted(recs[BENNETT], key=lambda r: r["index"])):
        assert b["soft_deviation"] < m["soft_deviation"]
        assert (b["soft_gaussian_radius"] or 0) >= (m["soft_gaussian_radius"] or 0)
        assert b["vote_radius"] == m["vote_radius"]
    with pytest.raises(InputError, match=r"other parameters \(soft_bound differ"):
        certify_to_folder(str(tmp_path / MCDIARMID), retriever, data.query_x[:6], data.query_y[:6], resume=True, **run)
    # A folder written before the option existed (no soft_bound in run.json) was McDiarmid's.
    params = json.loads((tmp_path / MCDIARMID / "run.json").read_text())
    del params["soft_bound"]
    (tmp_path / MCDIARMID / "run.json").write_text(json.dumps(params))
    again = certify_to_folder(str(tmp_path / MCDIARMID), retriever, data.query_x[:6], data.query_y[:6],
                              soft_bound=MCDIARMID, resume=True, **run)
    assert again["certified_recall_at_1"] == summaries[MCDIARMID]["certified_recall_at_1"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--soft-bound", "hoeffding"])
