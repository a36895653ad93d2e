"""CertifyConfig (the settings of a certification, checked once) and the record format: the
registry of certificates that every report reads, and the record's round trip."""

import dataclasses

import numpy as np
import pytest

from retrievalguard_fast.report import summarize
from retrievalguard_fast.smoothing import (ABSTAIN, CERTIFICATES, FIXED, RECORD_FORMAT, SEQUENTIAL, CertifyConfig,
                                           QueryCertificate)
from retrievalguard_fast.smoothing.record import RECALL_AT_K_CERTIFICATES, certificate, is_certify_record


def test_defaults_normalisation_and_replacement():
    c = CertifyConfig()
    assert (c.n0, c.n, c.alpha, c.ks, c.mode, c.soft_bound) == (100, 10_000, 0.001, (1,), FIXED, "bennett")
    d = CertifyConfig(ks=[5, 1, 5], radii=[0.5, 0.0, 0.5, 0.25], mode=SEQUENTIAL, alpha=1e-3)
    assert d.ks == (1, 5) and d.radii == (0.0, 0.25, 0.5)
    e = CertifyConfig.of(d, n=500, first_checkpoint=2000)
    assert (e.n, e.ks, e.mode) == (500, (1, 5), SEQUENTIAL) and d.n == 10_000  # frozen: a new object
    assert CertifyConfig.of(None) == CertifyConfig() and CertifyConfig.of(d) is d
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.n = 3


def test_schedule_and_first_round():
    seq = CertifyConfig(n0=10, n=8000, mode=SEQUENTIAL, radii=(0.25,), first_checkpoint=1000, alpha=0.01)
    sch = seq.schedule()
    assert sch.checkpoints == (1000, 2000, 4000, 8000) and sch.level == pytest.approx(0.01 / 4)
    assert seq.first_round_samples() == 10 + 1000
    # a first checkpoint above the cap is the cap: one checkpoint
    assert CertifyConfig(n=500, mode=SEQUENTIAL, first_checkpoint=2000).schedule().checkpoints == (500,)
    fixed = CertifyConfig(n0=10, n=700)
    assert fixed.schedule().checkpoints == (700,) and fixed.first_round_samples() == 710


def test_run_json_form():
    assert CertifyConfig(n0=5, n=50, ks=(5, 1)).to_dict() == {"n0": 5, "n": 50, "alpha": 0.001, "recall_k": [1, 5],
                                                               "mode": FIXED, "soft_bound": "bennett"}
    seq = CertifyConfig(mode=SEQUENTIAL, radii=(0.5, 0.1), first_checkpoint=300).to_dict()
    assert seq["radii"] == [0.1, 0.5] and seq["first_checkpoint"] == 300  # the stopping rule's inputs


@pytest.mark.parametrize("settings,exc,match", [
    (dict(n0=0), ValueError, r"n0 must be in \[1,"),
    (dict(n=2.5), TypeError, "n must be an integer"),
    (dict(alpha=0.0), ValueError, r"alpha must be a number in \(0, 1\)"),
    (dict(alpha=True), ValueError, "alpha must be a number"),
    (dict(ks=(0,)), ValueError, r"ks must be in \[1,"),
    (dict(mode="adaptive"), ValueError, "mode must be one of sequential, fixed-n"),
    (dict(radii=(-0.1,)), ValueError, "radii must be finite and >= 0"),
    (dict(radii=(float("inf"),)), ValueError, "radii must be finite and >= 0"),
    (dict(mode=SEQUENTIAL, radii=()), ValueError, "needs radii"),
    (dict(first_checkpoint=0), ValueError, r"first_checkpoint must be in \[1,"),
    (dict(soft_bound="hoeffding"), ValueError, "soft_bound must be one of bennett, mcdiarmid"),
])
def test_bad_settings_name_the_setting(settings, exc, match):
    with pytest.raises(exc, match=match):
        CertifyConfig(**settings)


def test_unknown_setting_and_wrong_config_type():
    with pytest.raises(TypeError, match="unknown setting.*sequential"):
        CertifyConfig.of(sequential=True)
    with pytest.raises(TypeError, match="config must be a CertifyConfig"):
        CertifyConfig.of({"n": 5})


def _cert(index, label, vote, vote_r, soft, gauss, lip, recall=None):
    return QueryCertificate(index=index, label=label, clean_prediction=label, vote_prediction=vote, vote_selected=vote,
                            vote_count=90, vote_n=100, vote_pA_lower=0.9, vote_radius=vote_r, soft_prediction=soft,
                            soft_gaussian_radius=gauss, soft_lipschitz_radius=lip, soft_deviation=0.01,
                            soft_recall_at_k=recall or {}, samples=200, seconds=0.5)


def test_registry_names_each_record_field_once_and_drives_the_summary():
    keys = [c.key for c in CERTIFICATES]
    assert keys == ["vote", "gaussian", "lipschitz"] and len(set(c.colour for c in CERTIFICATES)) == 3
    fields = {f.name for f in dataclasses.fields(QueryCertificate)}
    for c in CERTIFICATES:
        assert {c.prediction_field, c.radius_field} <= fields
        assert certificate(c.key) is c
    assert [c.key for c in RECALL_AT_K_CERTIFICATES] == ["gaussian", "lipschitz"]
    with pytest.raises(KeyError, match="no certificate 'cohen'"):
        certificate("cohen")
    # the attack tests the vote and the larger soft radius
    assert {c.attacked_as: c.key for c in CERTIFICATES if c.attacked_as} == {"vote": "vote", "soft": "gaussian"}
    certs = [_cert(0, 1, 1, 0.5, 1, 0.3, 0.2, {5: {"gaussian": 0.4, "lipschitz": 0.3}}),
             _cert(1, 2, ABSTAIN, None, 0, None, None, {5: {"gaussian": None, "lipschitz": None}})]
    s = summarize(certs, [0.0, 0.25], ks=(5,))
    assert set(s["certified_recall_at_1"]) == set(keys) and set(s["average_certified_radius"]) == set(keys)
    assert s["certified_recall_at_1"]["vote"] == {"0.0": 0.5, "0.25": 0.5}
    assert s["certified_recall_at_1"]["lipschitz"] == {"0.0": 0.5, "0.25": 0.0}
    assert s["abstention_rate"] == {"vote": 0.5, "soft": 0.0}
    assert s["certified_recall_at_k"]["5"]["gaussian"] == {"0.0": 0.5, "0.25": 0.5}
    assert s["average_certified_radius"] == pytest.approx({"vote": 0.25, "gaussian": 0.15, "lipschitz": 0.1})


def test_record_round_trip_and_recognition():
    c = _cert(7, 3, 3, 0.5, 3, 0.3, 0.2, {1: {"gaussian": 0.3, "lipschitz": 0.2}})
    record = c.to_dict()
    assert record["soft_recall_at_k"] == {"1": {"gaussian": 0.3, "lipschitz": 0.2}}  # JSON keys
    assert QueryCertificate.from_dict({**record, "a_field_from_later": 1}) == c
    assert is_certify_record(record) and not is_certify_record({"index": 7, "vote": {}}) and not is_certify_record([])
    assert RECORD_FORMAT == 2
    assert np.isclose(c.radius(certificate("gaussian")), 0.3) and c.prediction(certificate("vote")) == 3
