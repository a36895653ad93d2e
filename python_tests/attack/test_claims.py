"""The soundness alarm at each certified radius (retrievalguard_fast.attack.claims): every claim
of a certify record is attacked at its own radius, against its own label.

- On a half-space whose certificates are nearly tight, a certifier that inflates the vote and
  the soft Gaussian radii by only 10% is caught on every query; the honest one never.
- Claims are read from the registry (abstentions, +inf and duplicate Recall@1 left out); the
  Recall@K break test; a base-only attack draws no smoothing samples; the package's base-model
  attack is at least as strong as an independent l2 PGD (python_tests/reference.py).
"""

import math

import numpy as np
import pytest
import torch

import reference
from half_space import half_space_queries
from retrievalguard_fast.attack import AttackConfig, Attacker, soft_break_margin, soundness_alarm
from retrievalguard_fast.attack.claims import Claim, certified_claims
from retrievalguard_fast.attack.losses import margin_loss, nearest_rivals
from retrievalguard_fast.smoothing import Gallery, SmoothedRetriever

SIGMA = 0.25


def inflated(records, factor):
    fake = {}
    for index, record in records.items():
        d = dict(record)
        for field in ("vote_radius", "soft_gaussian_radius"):
            if d[field] is not None:
                d[field] *= factor
        d["soft_recall_at_k"] = {k: {c: (None if r is None else r * factor) for c, r in v.items()}
                                 for k, v in d["soft_recall_at_k"].items()}
        fake[index] = d
    return fake


@pytest.fixture(scope="module")
def half_space_certified():
    """Three points 1.5 sigma from the plane of a steep half-space (scale 256: f's first
    coordinate is nearly the sign, so the soft certificate is nearly as tight as the vote's:
    both certify about 0.96 of the true radius with n = 10,000)."""
    distance = 1.5 * SIGMA
    net, gallery, x = half_space_queries(distance=distance, count=3, scale=256.0)
    retriever = SmoothedRetriever(net, gallery, SIGMA, batch_size=4000, seed=3)
    certs = retriever.certify(x, np.zeros(len(x), int), n0=1000, n=10_000, alpha=0.001)
    for c in certs:
        assert 0.9 * distance < c.vote_radius < distance and 0.9 * distance < c.soft_gaussian_radius < distance
    config = AttackConfig(radii=(), models=("vote", "soft"), steps=10, eot=16, restarts=1, targets=1,
                          clip=(-10.0, 10.0), n0=1000, n=10_000, alpha=0.001, seed=7)
    return Attacker(retriever, config), x, {c.index: c.to_dict() for c in certs}


def attack_claims(attacker, x, certified):
    return [attacker.attack_query(x[i], i, 0, certified=certified[i]) for i in range(len(x))]


@pytest.mark.slow
def test_a_ten_percent_over_certification_is_caught_on_the_half_space(half_space_certified):
    attacker, x, honest = half_space_certified
    alarm = soundness_alarm(attack_claims(attacker, x, honest), honest)
    assert alarm["broken_inside_radius"] == 0, alarm["cases"]
    assert alarm["by_claim"]["vote"]["tested"] == 3 and alarm["by_claim"]["gaussian"]["tested"] == 3
    fake = inflated(honest, 1.1)
    records = attack_claims(attacker, x, fake)
    alarm = soundness_alarm(records, fake)
    print(f"\n10% inflated: {alarm['by_claim']}")
    assert alarm["by_claim"]["vote"]["broken_inside_radius"] == 3
    assert alarm["by_claim"]["gaussian"]["broken_inside_radius"] == 3
    assert alarm["broken_inside_radius"] == 3
    for case in alarm["cases"]:
        assert case["via"] == "certified radius" and case["break_norm"] < case["certified_radius"]
        # broken just past the plane: between the true radius and the inflated claim
        assert 1.5 * SIGMA < case["break_norm"]


def test_claims_come_from_the_registry():
    record = {"label": 3, "vote_prediction": 3, "vote_radius": 0.4, "soft_prediction": 5, "soft_gaussian_radius": 0.1,
              "soft_lipschitz_radius": 0.08,
              "soft_recall_at_k": {"1": {"gaussian": 0.05, "lipschitz": 0.04}, "5": {"gaussian": math.inf, "lipschitz": 1.0},
                                   "10": {"gaussian": 0.3, "lipschitz": 0.2}}}
    claims = certified_claims(record, ("vote", "soft", "base"))
    # the soft claim is for its own (wrong) prediction 5; Recall@K claims are for the true label;
    # +inf (fewer than K other rows) has no ball to attack
    assert claims == [Claim("vote", "vote", 3, 0.4), Claim("gaussian", "soft", 5, 0.1),
                      Claim("gaussian@1", "soft", 3, 0.05), Claim("gaussian@10", "soft", 3, 0.3, 10)]
    assert certified_claims(record, ("base",)) == []
    assert [c.certificate for c in certified_claims(record, ("vote",))] == ["vote"]
    # Recall@1 equal to the 1-NN claim is attacked once; abstentions and None radii not at all
    same = dict(record, soft_prediction=3, soft_gaussian_radius=0.05, vote_prediction=-1, vote_radius=None)
    assert [c.certificate for c in certified_claims(same, ("vote", "soft"))] == ["gaussian", "gaussian@10"]
    assert certified_claims(None, ("vote",)) == []


def test_recall_at_k_break_margin_and_loss():
    # label 0 at (1, 0); three rows of other labels around (-1, 0)
    g = Gallery(np.array([[1.0, 0.0], [-1.0, 0.0], [-0.8, 0.6], [-0.8, -0.6]]), np.array([0, 1, 2, 1]))
    f = np.array([-0.5, 0.0])  # nearer to all three negatives than to the positive
    assert soft_break_margin(f, 0.0, g, 0, k=1) > 0
    assert soft_break_margin(f, 0.0, g, 0, k=3) > 0
    assert soft_break_margin(f, 0.0, g, 0, k=4) == -math.inf  # only three rows of other labels
    # F = (0.05, 0.5): nearer to (-0.8, 0.6) than to (1, 0), but not to (-0.8, -0.6)
    f = np.array([0.05, 0.5])
    assert soft_break_margin(f, 0.0, g, 0, k=1) > 0 and soft_break_margin(f, 0.0, g, 0, k=2) < 0
    # the k-margin of the loss has the same sign as the exact distances
    e = torch.tensor([[0.05, 0.5]])
    assert float(margin_loss(e, g, 0, -1, k=1)) > 0 > float(margin_loss(e, g, 0, -1, k=2))
    assert nearest_rivals(torch.tensor([0.05, 0.5]), g, 0, -1, 5) == [2, 1]


def test_a_base_only_attack_draws_no_smoothing_samples(monkeypatch):
    import retrievalguard_fast.attack.pgd as pgd

    def no_samples(*args, **kwargs):
        raise AssertionError("a base-only attack drew smoothing samples")

    monkeypatch.setattr(pgd, "smoothed_evidence", no_samples)
    net, gallery, x = half_space_queries(distance=1.0)
    attacker = Attacker(SmoothedRetriever(net, gallery, SIGMA, batch_size=256),
                        AttackConfig(radii=(0.9, 1.1), models=("base",), steps=10, clip=(-10.0, 10.0)))
    record = attacker.attack_query(x[0], 0, 0)
    assert record["test_samples"] == 0 and record["base"]["break_radius"] == pytest.approx(1.1)


@pytest.mark.slow
def test_the_base_attack_is_as_strong_as_an_independent_pgd(digits):
    """On 24 digits queries at radii 0.5 and 0.75 with the same budget (20 steps, 2 restarts, 2
    targeted passes), the package breaks every query the independent PGD breaks, bar one."""
    model, gallery, data = digits
    config = AttackConfig(radii=(0.5, 0.75), models=("base",), steps=20, restarts=2, targets=2, seed=3)
    attacker = Attacker(SmoothedRetriever(model, gallery, SIGMA, batch_size=2000), config)
    ours, theirs = np.zeros(2, int), np.zeros(2, int)
    missed = 0
    for i in range(24):
        x = data.query_x[i]
        rec = attacker.attack_query(x, i, int(data.query_y[i]))["base"]
        ref = rec["reference"]
        with torch.no_grad():
            e = torch.nn.functional.normalize(model(torch.as_tensor(x)[None]), dim=-1)[0]
        rivals = nearest_rivals(e, gallery, ref, -1, 2)
        for j, radius in enumerate((0.5, 0.75)):
            broken, _ = reference.independent_l2_pgd(model, x, gallery.embeddings64, gallery.labels_np, ref, radius,
                                                     steps=20, restarts=2, targeted=rivals, seed=i)
            mine = rec["break_radius"] is not None and rec["break_radius"] <= radius
            ours[j] += mine
            theirs[j] += broken
            missed += broken and not mine
    print(f"\nbroken at r = 0.5, 0.75: package {ours.tolist()}, independent PGD {theirs.tolist()}")
    assert missed <= 1 and (ours >= theirs - 1).all()
    assert theirs[1] >= 8  # the comparison has something to compare
