"""``certify --denoiser`` / ``attack --denoiser``: the base model is the encoder applied to the
denoised noisy sample; run.json records the denoiser's identity; an identity denoiser gives the
records of no denoiser, bit for bit."""

import json

import numpy as np
import pytest

from retrievalguard_fast.cli import main

from conftest import PAUSING_MODEL, read_results, strip_timing


@pytest.fixture(scope="module")
def npz(digits, tmp_path_factory):
    _, _, data = digits
    d = tmp_path_factory.mktemp("denoiser")
    np.savez(d / "q.npz", x=data.query_x[:6], labels=data.query_y[:6])
    np.savez(d / "g.npz", x=data.gallery_x, labels=data.gallery_y)
    return d


def _certify(npz, out, *extra):
    return main(["certify", "--model", PAUSING_MODEL, "--queries", str(npz / "q.npz"), "--gallery", str(npz / "g.npz"),
                 "--sigma", "0.5", "--n", "300", "--n0", "20", "--batch-size", "100", "--quiet", "--out", str(out),
                 *extra])


def test_the_denoiser_is_applied_to_noisy_samples_and_recorded(npz, tmp_path, capsys):
    assert _certify(npz, tmp_path / "plain") == 0
    assert _certify(npz, tmp_path / "identity", "--denoiser", "denoisers:identity") == 0
    assert _certify(npz, tmp_path / "clamp", "--denoiser", "denoisers:clamp") == 0
    runs = {k: json.loads((tmp_path / k / "run.json").read_text()) for k in ("plain", "identity", "clamp")}
    assert "denoiser" not in runs["plain"]
    assert runs["identity"]["denoiser"].startswith("factory:denoisers:identity:sha256:")
    assert runs["clamp"]["denoiser"].startswith("factory:denoisers:clamp:sha256:")
    assert runs["identity"]["model"] == runs["plain"]["model"]
    plain, same = (strip_timing(read_results(tmp_path / k)) for k in ("plain", "identity"))
    assert plain == same
    clamped = strip_timing(read_results(tmp_path / "clamp"))
    assert [r["soft_mean_norm"] for r in clamped] != [r["soft_mean_norm"] for r in plain]
    # The gallery is the encoder's alone: one cache key, whatever the denoiser.
    assert sorted(p.name for p in (tmp_path / "plain").glob("gallery-*.npz")) == \
        sorted(p.name for p in (tmp_path / "clamp").glob("gallery-*.npz"))
    capsys.readouterr()
    assert _certify(npz, tmp_path / "bad", "--denoiser", "no_such_module:make") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --denoiser no_such_module:make: could not build the model") and "\n" not in err


def test_attack_records_the_denoiser(npz, tmp_path):
    code = main(["attack", "--model", PAUSING_MODEL, "--denoiser", "denoisers:clamp", "--queries", str(npz / "q.npz"),
                 "--gallery", str(npz / "g.npz"), "--sigma", "0.5", "--n", "50", "--n0", "20", "--steps", "1", "--eot",
                 "1", "--restarts", "1", "--radii", "0.25", "--quiet", "--out", str(tmp_path / "a")])
    assert code in (0, 1)
    assert json.loads((tmp_path / "a" / "run.json").read_text())["denoiser"].startswith("factory:denoisers:clamp:")
