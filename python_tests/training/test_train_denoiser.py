"""``train --denoiser-objective stability``: the stability loss against an independent computation,
the DnCNN, a run that trains a denoiser for a frozen encoder whose export certifies at its sigma
(and whose reported validation an independent 1-NN reproduces), an exact resume after SIGKILL,
and bad input (one line naming the argument, the folder left as it was)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from retrievalguard_fast.cli import main
from retrievalguard_fast.kernels import gaussian_noise
from retrievalguard_fast.training.denoiser import DnCNN, stability_loss
from retrievalguard_fast.training.objective import noise_seed
from retrievalguard_fast.training.run import KILL_AFTER_EPOCH
from retrievalguard_fast.training.tasks import VALIDATION_NOISE_START

from conftest import cli, cli_env
from training.test_train import _refused, digits_npz  # noqa: F401 - the fixture

ENCODER = "retrievalguard_fast.demo.digits:load_default_model"


def test_stability_loss_is_the_squared_distance_of_the_unit_embeddings_and_trains_only_the_denoiser():
    torch.manual_seed(0)
    encoder, denoiser = torch.nn.Linear(12, 5), torch.nn.Linear(12, 12)
    for p in encoder.parameters():
        p.requires_grad_(False)
    clean, noisy = torch.rand(7, 12), torch.rand(7, 12)
    loss = stability_loss(encoder, denoiser, clean, noisy)
    W, b = encoder.weight.numpy().astype(np.float64), encoder.bias.numpy().astype(np.float64)
    D, c = denoiser.weight.detach().numpy().astype(np.float64), denoiser.bias.detach().numpy().astype(np.float64)
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    a = unit((noisy.numpy() @ D.T + c) @ W.T + b)
    e = unit(clean.numpy() @ W.T + b)
    np.testing.assert_allclose(loss.detach().numpy(), ((a - e) ** 2).sum(axis=1), rtol=1e-5, atol=1e-6)
    loss.mean().backward()
    assert denoiser.weight.grad is not None and denoiser.weight.grad.abs().sum() > 0
    assert encoder.weight.grad is None
    # A denoiser that returns the clean image exactly scores 0.
    assert torch.allclose(stability_loss(encoder, lambda x: clean, clean, noisy), torch.zeros(7), atol=1e-6)


def test_dncnn_keeps_the_shape_and_is_the_identity_when_its_residual_is_zero():
    torch.manual_seed(0)
    model = DnCNN(channels=3, depth=4, width=8)
    x = torch.rand(2, 3, 9, 7)
    assert model(x).shape == x.shape and not torch.equal(model(x), x)
    last = model.body[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    assert torch.equal(model(x), x)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 4


def _denoiser_args(npz, out, *extra):
    return ["train", "--data", str(npz), "--sigma", "0.5", "--denoiser-objective", "stability", "--encoder", ENCODER,
            "--backbone", "dncnn-3x8", "--epochs", "3", "--batch-size", "32", "--lr", "3e-3", "--seed", "1",
            "--device", "cpu", "--quiet", "--out", str(out), *extra]


def _noisy_recall(embed, x, labels, sigma, seed):
    """Independent of the package's validation: one noisy copy of each image (its validation
    sample), embedded by ``embed``; the 1-NN among the clean embeddings of the others (numpy)."""
    from retrievalguard_fast.demo import load_default_model

    encoder = load_default_model().eval()
    with torch.no_grad():
        clean = encoder(torch.from_numpy(x)).numpy().astype(np.float64)
        noisy_x = torch.stack([gaussian_noise(torch.from_numpy(x[i]), sigma, 1, seed=noise_seed(seed), stream=i,
                                              start=VALIDATION_NOISE_START)[0] for i in range(len(x))])
        noisy = embed(encoder, noisy_x).numpy().astype(np.float64)
    clean /= np.linalg.norm(clean, axis=1, keepdims=True)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    d = ((noisy[:, None, :] - clean[None, :, :]) ** 2).sum(axis=2)
    np.fill_diagonal(d, np.inf)
    return float(np.mean(labels[d.argmin(axis=1)] == labels))


def test_a_denoiser_trains_for_a_frozen_encoder_and_certifies_at_its_sigma(digits_npz, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "den"
    assert main(_denoiser_args(digits_npz, out)) == 0
    assert "trained a denoiser for " + ENCODER in capsys.readouterr().out
    record = json.loads((out / "train.json").read_text())
    params, history = record["parameters"], record["history"]
    assert record["complete"] and record["output"] == "denoiser.pt" and (out / "denoiser.pt").exists()
    assert not (out / "model.pt").exists()
    assert params["denoiser_objective"] == "stability" and "encoder" not in params  # identified by content:
    assert params["encoder_id"].startswith("factory:" + ENCODER + ":sha256:")
    assert not {"loss", "per_class", "consistency", "noise_copies", "embedding_dim", "loss_lr"} & set(params)
    losses = [e["loss"] for e in history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    # The reported validation, reproduced from the exported file by an independent 1-NN.
    data = np.load(digits_npz)
    x, labels = data["x"], data["labels"]
    denoiser = torch.jit.load(str(out / "denoiser.pt")).eval()
    assert history[-1]["noisy_recall_at_1"] == _noisy_recall(lambda e, v: e(denoiser(v)), x, labels, 0.5, 1)
    assert history[-1]["noisy_recall_at_1_encoder_alone"] == _noisy_recall(lambda e, v: e(v), x, labels, 0.5, 1)
    assert history[-1]["noisy_recall_at_1"] > history[-1]["noisy_recall_at_1_encoder_alone"]

    # certify --denoiser checks the denoiser's sigma (the encoder's is not the one the noise meets).
    run = ["certify", "--model", ENCODER, "--denoiser", str(out / "denoiser.pt"), "--queries", str(digits_npz),
           "--gallery", str(digits_npz), "--max-queries", "4", "--n", "100", "--n0", "10", "--quiet"]
    assert main([*run, "--sigma", "0.5", "--out", str(tmp_path / "c")]) == 0
    recorded = json.loads((tmp_path / "c" / "run.json").read_text())
    assert recorded["denoiser_training_sigma"] == 0.5 and recorded["sigma"] == 0.5
    capsys.readouterr()
    assert main([*run, "--sigma", "0.25", "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --sigma 0.25: the denoiser {out / 'denoiser.pt'} was trained at sigma 0.5; use --sigma 0.5, "
                   "or pass --allow-sigma-mismatch to smooth it at another sigma anyway")
    assert not (tmp_path / "refused").exists()


def test_a_denoiser_run_resumes_after_sigkill_with_the_weights_of_an_uninterrupted_run(digits_npz, tmp_path):  # noqa: F811
    cli(*_denoiser_args(digits_npz, tmp_path / "whole"), cwd=tmp_path)
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-m", "retrievalguard_fast", *_denoiser_args(digits_npz, killed)],
                          cwd=tmp_path, env=dict(cli_env(), **{KILL_AFTER_EPOCH: "2"}), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert not (killed / "denoiser.pt").exists()
    cli(*_denoiser_args(digits_npz, killed, "--resume"), cwd=tmp_path)
    load = lambda p: torch.jit.load(str(p)).state_dict()  # noqa: E731
    whole, resumed = load(tmp_path / "whole" / "denoiser.pt"), load(killed / "denoiser.pt")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(json.loads((killed / "train.json").read_text())["history"]) == \
        strip(json.loads((tmp_path / "whole" / "train.json").read_text())["history"])


@pytest.mark.parametrize("extra,expected", [
    (["--encoder", ENCODER], "--encoder is the frozen model of a denoiser run"),
    (["--denoiser-objective", "stability"], "--denoiser-objective needs --encoder MODEL"),
    (["--denoiser-objective", "stability", "--encoder", ENCODER, "--consistency", "5"],
     "--consistency: a setting of an embedding model's training"),
    (["--denoiser-objective", "stability", "--encoder", ENCODER, "--loss", "contrastive"],
     "--loss: a setting of an embedding model's training"),
    (["--denoiser-objective", "stability", "--encoder", "missing.pt"], "--encoder missing.pt: no such file"),
    (["--denoiser-objective", "stability", "--encoder", "train_backbones:wrong_shape"],
     "--encoder train_backbones:wrong_shape: returns (2, 4, 2)"),
    (["--denoiser-objective", "stability", "--encoder", ENCODER, "--backbone", "train_backbones:wrong_shape"],
     "the denoiser returns (2, 4, 2) for images of shape (2, 1, 8, 8)"),
    (["--denoiser-objective", "stability", "--encoder", ENCODER, "--backbone", "dncnn-1x8"],
     "--backbone dncnn-1x8: a DnCNN needs at least 2 layers"),
    (["--denoiser-objective", "stability", "--encoder", ENCODER, "--backbone", "dncnn-3x8", "--weights", "missing.pt"],
     "--weights missing.pt: no such file"),
])
def test_bad_denoiser_input_is_one_line_naming_the_argument(digits_npz, tmp_path, capsys, extra, expected):  # noqa: F811
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # train_backbones
    err = _refused(tmp_path, capsys, tmp_path / "out", "--data", str(digits_npz), "--sigma", "0.5", "--epochs", "1",
                   "--device", "cpu", *extra)
    assert expected in err, err


def test_a_denoiser_for_no_noise_is_refused(digits_npz, tmp_path, capsys):  # noqa: F811
    err = _refused(tmp_path, capsys, tmp_path / "out", "--data", str(digits_npz), "--sigma", "0",
                   "--denoiser-objective", "stability", "--encoder", ENCODER)
    assert "--sigma 0.0: a denoiser is trained for noise of sigma > 0" in err
