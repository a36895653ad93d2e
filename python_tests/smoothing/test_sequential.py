"""Sequential certification: validity by simulation with a known p_A, agreement with fixed n,
independence of batch size."""

import numpy as np
import pytest
from scipy import stats

from retrievalguard_fast.smoothing.certificates import vote_radius
from retrievalguard_fast.smoothing import Gallery
from retrievalguard_fast.smoothing.sequential import doubling_schedule, fixed_schedule, vote_decided
from retrievalguard_fast.smoothing import SmoothedRetriever
from test_certify import sign_setup


def test_doubling_schedule():
    s = doubling_schedule(100_000, 0.001, [0.5, 0.25])
    assert s.checkpoints == (1563, 3125, 6250, 12500, 25000, 50000, 100000)
    assert s.level == pytest.approx(0.001 / 7) and s.radii == (0.25, 0.5) and s.cap == 100_000
    assert doubling_schedule(500, 0.01, [0.1]).checkpoints == (500,)
    assert fixed_schedule(1000, 0.01).checkpoints == (1000,)
    with pytest.raises(ValueError, match="needs the radii"):
        doubling_schedule(1000, 0.01, [])
    with pytest.raises(ValueError, match="radii must be finite"):
        doubling_schedule(1000, 0.01, [-1.0])


def simulate_vote(p_top, sigma, schedule, n0, rng):
    """Cohen's CERTIFY with sequential stopping on a Bernoulli base 'model' whose top label has
    probability p_top (label 0) and the other label 1 - p_top. Returns (selected, radius, n used)."""
    sel_top = rng.binomial(n0, p_top)
    selected = 0 if sel_top >= n0 - sel_top else 1
    p = p_top if selected == 0 else 1 - p_top
    count, drawn = 0, 0
    for n_j in schedule.checkpoints:
        count += rng.binomial(n_j - drawn, p)
        drawn = n_j
        if vote_decided(count, n_j, schedule, sigma):
            break
    return selected, vote_radius(count, drawn, schedule.level, sigma)[1], drawn


@pytest.mark.parametrize("p_top", [0.55, 0.8, 0.95, 0.995, 0.9999])
def test_sequential_vote_radius_exceeds_the_truth_at_most_alpha(p_top):
    sigma, alpha, runs = 0.25, 0.05, 3000
    true_radius = sigma * stats.norm.ppf(p_top)
    schedule = doubling_schedule(20_000, alpha, [0.0, 0.1, 0.25, 0.5, 0.75])
    rng = np.random.default_rng(int(p_top * 1e4))
    failures, used = 0, []
    for _ in range(runs):
        selected, radius, drawn = simulate_vote(p_top, sigma, schedule, 100, rng)
        used.append(drawn)
        # A failure: a radius reported for the wrong label, or one above the true radius.
        failures += radius is not None and (selected != 0 or radius > true_radius)
    print(f"\np_A={p_top}: radius above the truth in {failures}/{runs} runs (alpha {alpha}); "
          f"mean samples {np.mean(used):.0f} of cap {schedule.cap} ({schedule.cap / np.mean(used):.1f}x fewer)")
    assert failures <= alpha * runs


def test_sequential_radii_on_the_exact_answer_model():
    """The sign model has a known true radius for both smoothed models (test_certify.py)."""
    sigma, true_radius, alpha, seeds = 0.5, 0.5, 0.05, 60
    model, gallery, x = sign_setup(true_radius, sigma)
    over, used = 0, []
    for seed in range(seeds):
        (c,) = SmoothedRetriever(model, gallery, sigma, batch_size=4096, seed=seed).certify(
            x, [0], n0=20, n=8000, alpha=alpha, mode="sequential", radii=[0.1, 0.3, 0.7], first_checkpoint=250)
        assert c.mode == "sequential"
        used.append(c.samples)
        over += any((r or 0) > true_radius for r in (c.vote_radius, c.soft_gaussian_radius, c.soft_lipschitz_radius))
    print(f"\nsequential, true radius {true_radius}: a radius above it in {over}/{seeds} runs; "
          f"mean samples {np.mean(used):.0f} of cap 8020")
    assert over <= alpha * seeds
    assert np.mean(used) < 8020 / 2  # everything decided long before the cap


def test_sequential_agrees_with_fixed_n_far_from_the_thresholds(digits):
    model, gallery, data = digits
    radii = [0.25, 0.5]
    q, y = data.query_x[:24], data.query_y[:24]
    r = SmoothedRetriever(model, gallery, 0.25, batch_size=4000, seed=2)
    fixed = r.certify(q, y, n0=100, n=20_000, alpha=0.001)
    seq = r.certify(q, y, n0=100, n=20_000, alpha=0.001, mode="sequential", radii=radii)
    compared = 0
    for a, b in zip(fixed, seq):
        ra = a.vote_radius or 0.0
        if all(abs(ra - t) > 0.05 for t in radii) and a.vote_prediction == a.label:
            compared += 1
            for t in radii:
                assert (ra >= t) == ((b.vote_radius or 0.0) >= t), (a, b)
        assert b.samples <= a.samples
    assert compared >= 15
    total_fixed = sum(c.samples for c in fixed)
    total_seq = sum(c.samples for c in seq)
    print(f"\nsequential used {total_seq} samples, fixed n {total_fixed} ({total_fixed / total_seq:.1f}x fewer)")
    assert total_seq < total_fixed / 2


def test_sequential_stopping_is_independent_of_batch_size(digits):
    model, gallery, data = digits
    q, y = data.query_x[:5], data.query_y[:5]
    out = []
    for bs in (97, 1500, 9000):
        certs = SmoothedRetriever(model, gallery, 0.25, batch_size=bs, seed=1).certify(
            q, y, n0=50, n=8000, mode="sequential", radii=[0.25, 0.5], first_checkpoint=500)
        out.append([{k: v for k, v in c.to_dict().items() if k != "seconds"} for c in certs])
    assert out[0] == out[1] == out[2]


def test_sequential_needs_radii(digits):
    model, gallery, data = digits
    with pytest.raises(ValueError, match="mode 'sequential' needs radii"):
        SmoothedRetriever(model, gallery, 0.25).certify(data.query_x[:1], n=1000, mode="sequential", radii=())
