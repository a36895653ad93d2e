"""The attack (retrievalguard_fast.attack): PGD with expectation over the noise against the soft,
vote and base models, and the soundness alarm.

- A closed-form half-space model, whose smoothed models' true robust radius is the distance to
  the plane: the attack breaks the query at 1.1x that radius and never at 0.9x.
- Digits: empirical robust Recall@1 >= certified Recall@1 at every radius, no certified query
  broken inside its radius (at grid radii, and each claim at its own radius), and fakes that
  inflate the radii are caught (the 10% fake on the half-space is in test_claims.py).
- The pieces: the break tests, the surrogate's gradient far from the boundary, the projection.
"""

import math

import numpy as np
import pytest
import torch

from half_space import half_space_queries
from retrievalguard_fast.attack import (AttackConfig, Attacker, empirical_recall, soft_break_margin, soundness_alarm,
                                        vote_break_test)
from retrievalguard_fast.attack.losses import vote_surrogate_loss
from retrievalguard_fast.demo.digits import DigitsEmbeddingNet, load_digits_split
from retrievalguard_fast.smoothing import Gallery
from retrievalguard_fast.report import certified_accuracy
from retrievalguard_fast.smoothing import SmoothedRetriever

# ---------------------------------------------------------------------- the half-space model


@pytest.mark.parametrize("model", ["vote", "soft"])
def test_half_space_is_broken_just_beyond_its_true_radius_and_never_inside(model):
    true_radius, sigma = 1.0, 0.25
    net, gallery, x = half_space_queries(distance=true_radius)
    retriever = SmoothedRetriever(net, gallery, sigma, batch_size=4000, seed=3)
    config = AttackConfig(radii=(0.9 * true_radius, 1.1 * true_radius), models=(model, "base"), steps=10, eot=16,
                          restarts=2, clip=(-10.0, 10.0), n0=1000, n=10_000, alpha=0.001, seed=7)
    attacker = Attacker(retriever, config)
    for i in range(len(x)):
        rec = attacker.attack_query(x[i], i, label=0)
        for name in (model, "base"):
            r = rec[name]
            assert r["reference"] == 0
            inside, beyond = r["tests"][0], r["tests"][1]
            assert not inside["broken"]  # never at 0.9x: impossible, and the test is at level alpha
            assert inside["norm"] <= 0.9 * true_radius and beyond["norm"] <= 1.1 * true_radius
            assert beyond["broken"], (name, rec)  # always at 1.1x
            assert r["break_radius"] == pytest.approx(1.1 * true_radius)
            # PGD went straight across the plane: the break is at the ball's edge, not short of it.
            assert beyond["norm"] > 1.1 * true_radius * (1 - 1e-3)
        if model == "vote":
            assert rec["vote"]["tests"][1]["rival"] == 1
        else:
            assert rec["soft"]["tests"][1]["prediction"] == 1


# ---------------------------------------------------------------------- the pieces


def test_vote_break_test_is_a_sign_test_against_the_strongest_rival():
    sel = np.array([50, 10, 40, 0])
    # the rival is chosen by the selection votes (label 2), never the reference
    r = vote_break_test(sel, np.array([400, 0, 600, 0]), 0, 0.001)
    assert r["rival"] == 2 and r["broken"] and r["rival_share_lower"] > 0.5
    # p_ref < 1/2 is not enough: the reference may still be the most voted label
    r = vote_break_test(sel, np.array([400, 300, 300, 0]), 0, 0.001)
    assert not r["broken"]
    # a near tie is not significant
    assert not vote_break_test(sel, np.array([495, 0, 505, 0]), 0, 0.001)["broken"]
    # the screen only excludes points whose rival is surely weaker
    assert vote_break_test(sel, np.array([55, 0, 45, 0]), 0, 0.01, bound="upper")["broken"]
    assert not vote_break_test(sel, np.array([90, 0, 10, 0]), 0, 0.01, bound="upper")["broken"]


def test_soft_break_margin_on_two_rows():
    g = Gallery(np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([0, 1]))
    # F = (-0.2, 0): u = (1, 0), tau = 0, so tau - u.F = 0.2; broken iff t < 0.2
    assert soft_break_margin(np.array([-0.2, 0.0]), 0.1, g, 0) == pytest.approx(0.1 - 1e-9)
    assert soft_break_margin(np.array([-0.2, 0.0]), 0.3, g, 0) < 0
    assert soft_break_margin(np.array([0.2, 0.0]), 0.0, g, 0) < 0
    assert soft_break_margin(np.array([-0.2, 0.0]), 0.0, g, 0, exclude=1) == -math.inf  # no negative left
    assert soft_break_margin(np.array([-0.2, 0.0]), 0.0, g, 2) == math.inf  # the label has no row


def test_vote_surrogate_has_a_gradient_far_from_the_boundary():
    """Every draw votes the reference with probability 1 - 1e-40 (beyond float32), yet the loss
    is finite and its gradient points towards the other label."""
    g = Gallery(np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]), np.array([0, 1, 1]))
    e = torch.tensor([[[1.0, 0.0], [0.99, 0.141]]], requires_grad=True)
    loss = vote_surrogate_loss(e, g, 0, -1, temperature=0.02)
    assert torch.isfinite(loss).all() and float(loss.detach()) < -50
    (grad,) = torch.autograd.grad(loss.sum(), e)
    assert torch.isfinite(grad).all() and float(grad[0, :, 0].sum()) < 0  # away from g_0


def test_projection_respects_the_ball_and_the_clip():
    net, gallery, x = half_space_queries(dim=8, count=1)
    x = np.clip(x, 0.0, 1.0)  # a query inside the bounds
    retriever = SmoothedRetriever(net, gallery, 0.25, batch_size=256)
    attacker = Attacker(retriever, AttackConfig(radii=(0.5, 3.0), models=("base",), steps=5, restarts=3,
                                                clip=(0.0, 1.0), seed=1))
    xt = torch.from_numpy(x[0])
    points, rows = attacker.pgd("base", xt, 0, -1, torch.Generator().manual_seed(0), attacker.radii, rivals=[1])
    # radii x (restarts + one against all rivals + one targeted pass) x (steps + the final pass)
    assert rows == 2 * (3 + 1 + 1) * (5 + 1)
    for p, radius in zip(points, (0.5, 3.0)):
        assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0
        assert attacker.checked_norm(xt, p, radius) <= radius
    with pytest.raises(RuntimeError, match="left its constraints"):
        attacker.checked_norm(xt, xt + 1.0, 0.5)


# ---------------------------------------------------------------------- digits


SIGMA = 0.25
RADII = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5)


@pytest.fixture(scope="module")
def digits_certified():
    """A small noise-trained digits model's retriever, 12 queries, their labels and certificates."""
    from retrievalguard_fast.demo.training import train_embedding_model

    torch.manual_seed(0)
    data = load_digits_split(seed=1)
    model = train_embedding_model(DigitsEmbeddingNet(), data.gallery_x, data.gallery_y, sigma=SIGMA, epochs=15, seed=1)
    gallery = Gallery.from_model(model, data.gallery_x, data.gallery_y)
    q, y = data.query_x[:12], data.query_y[:12]
    retriever = SmoothedRetriever(model, gallery, SIGMA, batch_size=2000, seed=5)
    return retriever, q, y, retriever.certify(q, y, n0=100, n=5000, alpha=0.001)


@pytest.fixture(scope="module")
def digits_run(digits_certified):
    """The attack of the 12 queries at the grid RADII."""
    retriever, q, y, certs = digits_certified
    config = AttackConfig(radii=RADII, steps=10, eot=16, restarts=1, n0=500, n=4000, alpha=0.001, seed=11)
    attacker = Attacker(retriever, config)
    records = [attacker.attack_query(q[i], i, int(y[i])) for i in range(len(q))]
    return certs, records, y


@pytest.mark.slow
def test_digits_attack_brackets_the_certificates_from_above(digits_run):
    certs, records, y = digits_run
    certified = {c.index: c.to_dict() for c in certs}
    for model, pred, radius in (("vote", "vote_prediction", "vote_radius"), ("soft", "soft_prediction", "soft_gaussian_radius")):
        empirical = empirical_recall(records, model, RADII)
        lower = certified_accuracy(np.array([getattr(c, pred) for c in certs]), [getattr(c, radius) for c in certs], y, RADII)
        print(f"\n{model}: certified {np.round(lower, 3)}, empirical {[round(v, 3) for v in empirical.values()]}")
        for r, lo in zip(RADII, lower):
            assert empirical[str(float(r))] >= lo, (model, r)
    alarm = soundness_alarm(records, certified)
    assert alarm["broken_inside_radius"] == 0, alarm["cases"]
    assert alarm["by_model"]["vote"]["certified"] >= 9 and alarm["by_model"]["soft"]["certified"] >= 9
    # The zero above is not for want of an attack: it breaks most queries by radius 1.5.
    for model in ("vote", "soft", "base"):
        broken = sum(r[model]["break_radius"] is not None for r in records)
        print(f"{model}: {broken}/{len(records)} queries broken")
        assert broken >= len(records) // 2


def with_radii_scaled(certs, factor, fields):
    fake = {}
    for c in certs:
        d = c.to_dict()
        for field in fields:
            if d[field] is not None:
                d[field] *= factor
        fake[c.index] = d
    return fake


@pytest.mark.slow
def test_an_over_certifying_fake_is_caught(digits_run):
    """The same certificates with every radius doubled: the attack breaks some of them inside
    the doubled radius, and the alarm names them."""
    certs, records, _ = digits_run
    alarm = soundness_alarm(records, with_radii_scaled(certs, 2.0, ("vote_radius", "soft_gaussian_radius")))
    print(f"\nfake with doubled radii: {alarm['by_model']}")
    assert alarm["broken_inside_radius"] >= 1
    assert alarm["by_model"]["vote"]["broken_inside_radius"] >= 1
    for case in alarm["cases"]:
        assert case["break_norm"] < case["certified_radius"]
    # The soft certificate is far below what the attack reaches on digits (radii under 0.1
    # certified, breaks from 0.5 on), so doubling it is not a lie the attack can see; a claim of
    # radius 1 for every soft certificate is, and the alarm catches it on the soft model too.
    soft_radii = [c.soft_gaussian_radius for c in certs if c.soft_gaussian_radius is not None]
    print(f"soft certified radii: max {max(soft_radii):.3f}")
    alarm = soundness_alarm(records, with_radii_scaled(certs, 1.0 / max(soft_radii), ("soft_gaussian_radius",)))
    print(f"fake with soft radii scaled to a maximum of 1: {alarm['by_model']}")
    assert alarm["by_model"]["soft"]["broken_inside_radius"] >= 1
    assert alarm["by_model"]["vote"]["broken_inside_radius"] == 0


@pytest.mark.slow
def test_each_certified_claim_is_attacked_at_its_own_radius(digits_certified):
    """The claims of the honest certificates, attacked at their own radii, are never broken; the
    same claims with the vote radius 1.5x and the soft radii scaled to a maximum of 1 are."""
    retriever, q, y, certs = digits_certified
    attacker = Attacker(retriever, AttackConfig(radii=(), steps=10, eot=16, restarts=1, n0=500, n=4000, seed=13))
    honest = {c.index: c.to_dict() for c in certs}
    records = [attacker.attack_query(q[i], i, int(y[i]), certified=honest[i]) for i in honest]
    alarm = soundness_alarm(records, honest)
    print(f"\nhonest claims: {alarm['by_claim']}")
    assert alarm["broken_inside_radius"] == 0, alarm["cases"]
    assert alarm["by_claim"]["vote"]["tested"] >= 9 and alarm["by_claim"]["gaussian"]["tested"] >= 9
    soft_max = max(c.soft_gaussian_radius for c in certs if c.soft_gaussian_radius is not None)
    fake = with_radii_scaled(certs, 1.5, ("vote_radius",))
    for index, d in fake.items():
        if d["soft_gaussian_radius"] is not None:
            d["soft_gaussian_radius"] /= soft_max
    records = [attacker.attack_query(q[i], i, int(y[i]), certified=fake[i]) for i in fake]
    alarm = soundness_alarm(records, fake)
    print(f"inflated claims: {alarm['by_claim']}")
    assert alarm["by_claim"]["vote"]["broken_inside_radius"] >= 1
    assert alarm["by_claim"]["gaussian"]["broken_inside_radius"] >= 1
    assert all(c["break_norm"] < c["certified_radius"] for c in alarm["cases"])
