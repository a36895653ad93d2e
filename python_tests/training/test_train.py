"""``train``: the per-class sampler, the noise and the spread penalty, training on every data
source certify reads (then certifying the model), an exact resume after SIGKILL, and bad input
(one line naming the argument, the folder left as it was)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from retrievalguard_fast.cli import main
from retrievalguard_fast.data import load_run_data, load_train_data
from retrievalguard_fast.kernels import gaussian_noise
from retrievalguard_fast.training.objective import noise_seed, noisy_copies, spread
from retrievalguard_fast.training.run import KILL_AFTER_EPOCH
from retrievalguard_fast.training.sampler import epoch_batches

from conftest import cli, cli_env
from data.test_datasets import write_items

# A tiny, fast recipe: 16x16 images, the built-in CNN, one epoch.
SMALL = ["--resize", "16", "--crop", "16", "--workers", "0"]
TINY = ["--backbone", "cnn", "--embedding-dim", "8", "--epochs", "1", "--batch-size", "8", "--lr", "1e-3", "--quiet"]
CERTIFY = ["--sigma", "0.25", "--n", "100", "--n0", "10", "--batch-size", "50", "--quiet"]


# ---------------------------------------------------------------------- pieces


@pytest.mark.parametrize("counts,per_class,batch", [([5, 2, 3, 7], 2, 6), ([2] * 10, 2, 4), ([9, 4, 6], 3, 9),
                                                    ([1, 1, 1], 1, 2)])
def test_an_epoch_visits_every_image_once_in_groups_of_at_least_per_class(counts, per_class, batch):
    labels = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(1)
    labels = labels[rng.permutation(len(labels))]  # classes interleaved in the source
    for epoch in range(3):
        batches = epoch_batches(labels, per_class, batch, seed=4, epoch=epoch)
        assert sorted(np.concatenate(batches).tolist()) == list(range(len(labels)))
        assert all(len(b) <= batch for b in batches)
        for b in batches:
            _, in_batch = np.unique(labels[b], return_counts=True)
            assert in_batch.min() >= per_class
        again = epoch_batches(labels, per_class, batch, seed=4, epoch=epoch)
        assert all(np.array_equal(a, b) for a, b in zip(batches, again)) and len(again) == len(batches)
    first, second = (np.concatenate(epoch_batches(labels, per_class, batch, 4, e)) for e in (0, 1))
    assert not np.array_equal(first, second)  # each epoch its own order


def test_spread_is_one_minus_the_squared_norm_of_the_mean_embedding():
    e = torch.nn.functional.normalize(torch.randn(3 * 5, 7, generator=torch.Generator().manual_seed(0)), dim=1)
    mean = e.reshape(3, 5, 7).mean(dim=0)
    assert torch.allclose(spread(e, 3), 1 - mean.pow(2).sum(dim=1), atol=1e-6)


def test_training_noise_is_the_kernels_stream_of_each_image_whatever_the_batch():
    x = torch.rand(4, 1, 3, 3)
    both = noisy_copies(x, [7, 2, 9, 4], 0.5, 2, seed=3, epoch=5)  # copy-major: rows j*4 + b
    for b, i in enumerate([7, 2, 9, 4]):
        alone = gaussian_noise(x[b], 0.5, 2, seed=noise_seed(3), stream=i, start=10)
        assert torch.equal(both[[b, 4 + b]], alone)
    assert torch.equal(noisy_copies(x[1:3], [2, 9], 0.5, 2, seed=3, epoch=5)[0], both[1])
    assert noise_seed(0) != 0  # never certify's default key


# ---------------------------------------------------------------------- every source trains, and certifies


def _train_layouts(root):
    """The benchmarks' training splits in their published layouts (two classes, two or three
    images each), beside test splits the certify step reads."""
    from data.test_datasets import make_cars, make_cub, make_inshop, make_sop

    make_sop(root / "sop")
    items = [(f"cls{c}_final/{c}_t{k}.png", c) for c in (1, 2, 3) for k in range(3)]
    write_items(root / "sop", items, seed=1)
    with open(root / "sop" / "Ebay_train.txt", "w") as f:
        f.write("image_id class_id super_class_id path\n")
        f.writelines(f"{i} {c} 1 {rel}\n" for i, (rel, c) in enumerate(items, 1))
    make_cub(root / "cub")  # classes 99 and 100 train, 101-103 test
    make_cars(root / "cars")  # classes 97 and 98 train
    make_inshop(root / "inshop")
    rows = [(f"img/MEN/Tees/id_{item:08d}/1{k}_front.png", item) for item in (20, 21) for k in range(2)]
    rows += [(f"img/WOMEN/Dresses/id_{item:08d}/09_9_back.png", item) for item in (2, 7, 12)]  # a 2nd train image
    write_items(root / "inshop", rows, seed=2)
    with open(root / "inshop" / "list_eval_partition.txt", "a") as f:
        f.writelines(f"{rel} id_{item:08d} train\n" for rel, item in rows)


@pytest.mark.parametrize("name", ["sop", "cub", "cars", "inshop"])
def test_each_published_layout_trains_an_epoch_and_the_model_certifies(name, tmp_path):
    _train_layouts(tmp_path)
    out = tmp_path / "model"
    cli("train", "--dataset", f"{name}:{tmp_path / name}", "--sigma", "0.25", *SMALL, *TINY, "--out", str(out),
        cwd=tmp_path)
    record = json.loads((out / "train.json").read_text())
    assert record["complete"] and len(record["history"]) == 1
    assert record["parameters"]["data"]["split"] == "train" and record["parameters"]["validation"]["split"] == "test"
    assert 0 <= record["history"][0]["recall_at_1"] <= 1
    train_split = {"sop": 9, "cub": 6, "cars": 6, "inshop": 10}[name]
    assert record["parameters"]["num_images"] == train_split
    cert = tmp_path / "cert"
    cli("certify", "--model", str(out / "model.pt"), "--dataset", f"{name}:{tmp_path / name}", *SMALL, *CERTIFY,
        "--out", str(cert), cwd=tmp_path)
    run = json.loads((cert / "run.json").read_text())
    assert run["sigma"] == 0.25 and run["model_training_sigma"] == 0.25


def test_train_and_certify_read_the_same_images_from_each_source(tmp_path):
    items = [(f"{c}/{k}.png", c) for c in ("a", "b") for k in range(3)]
    write_items(tmp_path / "d", [(rel, 0) for rel, _ in items])
    with open(tmp_path / "list.csv", "w") as f:
        f.write("path,label\n")
        f.writelines(f"d/{rel},{['a', 'b'].index(c)}\n" for rel, c in items)
    for spec in (f"folder:{tmp_path / 'd'}", f"list:{tmp_path / 'list.csv'}"):
        train = load_train_data(data=spec, dataset=None, resize=16, crop=16)
        run = load_run_data(queries=spec, gallery=spec, dataset=None, resize=16, crop=16, workers=0)
        assert np.array_equal(train.labels, run.labels) and train.images.paths == run.queries.images.paths
        assert train.identity["sha256"] == run.identity["queries_sha256"]
        decoded = next(train.batches([np.arange(len(train))]))
        assert torch.equal(decoded, torch.cat([x for _, x in run.queries.iter_chunks(np.arange(len(train)))]))


# ---------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    from retrievalguard_fast.demo import load_digits_split

    d = load_digits_split()
    path = tmp_path_factory.mktemp("digits") / "train.npz"
    keep = np.arange(0, len(d.gallery_y), 5)  # 288 images: an epoch in a fraction of a second
    np.savez(path, x=d.gallery_x[keep], labels=d.gallery_y[keep])
    return path


def _train_args(npz, out, *extra):
    return ["train", "--data", str(npz), "--sigma", "0.5", "--backbone", "mlp", "--embedding-dim", "16",
            "--epochs", "3", "--batch-size", "32", "--lr", "1e-3", "--consistency", "5", "--noise-copies", "2",
            "--seed", "3", "--device", "cpu", "--quiet", "--out", str(out), *extra]


def _weights(path):
    return {k: v.clone() for k, v in torch.jit.load(str(path)).state_dict().items()}


def test_resume_after_sigkill_gives_the_weights_of_an_uninterrupted_run(digits_npz, tmp_path):
    cli(*_train_args(digits_npz, tmp_path / "whole"), cwd=tmp_path)
    killed = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-m", "retrievalguard_fast", *_train_args(digits_npz, killed)], cwd=tmp_path,
                          env=dict(cli_env(), **{KILL_AFTER_EPOCH: "2"}), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    assert not (killed / "model.pt").exists()
    assert [e["epoch"] for e in json.loads((killed / "train.json").read_text())["history"]] == [1, 2]
    refused = cli(*_train_args(digits_npz, killed), cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr
    cli(*_train_args(digits_npz, killed, "--resume"), cwd=tmp_path)
    whole, resumed = _weights(tmp_path / "whole" / "model.pt"), _weights(killed / "model.pt")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)
    strip = lambda h: [{k: v for k, v in e.items() if k != "seconds"} for e in h]  # noqa: E731
    assert strip(json.loads((killed / "train.json").read_text())["history"]) == \
        strip(json.loads((tmp_path / "whole" / "train.json").read_text())["history"])
    other = cli(*_train_args(digits_npz, killed, "--resume", "--lr", "2e-3"), cwd=tmp_path, check=False)
    assert other.returncode == 2 and "lr differ" in other.stderr


# ---------------------------------------------------------------------- bad input


def _listing(folder):
    """Every file's name and bytes, but the lock's: a run refused after taking the folder's lock
    (a folder of another run) has rewritten who holds it, and nothing else."""
    if not os.path.exists(folder):
        return None
    return sorted((p, open(os.path.join(r, p), "rb").read()) for r, _, fs in os.walk(folder) for p in fs if p != ".lock")


def _refused(tmp_path, capsys, out, *args):
    before = _listing(out)
    assert main(["train", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert _listing(out) == before
    return err


def test_bad_input_is_one_line_naming_the_argument_and_leaves_the_folder_as_it_was(digits_npz, tmp_path, capsys):
    out = tmp_path / "out"
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((4, 1, 2, 2), np.float32))
    assert "labels" in _refused(tmp_path, capsys, out, "--data", str(tmp_path / "nolabels.npz"), "--sigma", "0.25")
    np.savez(tmp_path / "single.npz", x=np.zeros((5, 1, 2, 2), np.float32), labels=np.array([0, 0, 1, 1, 2]))
    err = _refused(tmp_path, capsys, out, "--data", str(tmp_path / "single.npz"), "--sigma", "0.25", "--per-class", "2")
    assert "--per-class 2" in err and "2 (1 image)" in err
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    err = _refused(tmp_path, capsys, out, "--data", str(digits_npz), "--sigma", "0.25", "--backbone",
                   "train_backbones:wrong_shape")
    assert "--backbone train_backbones:wrong_shape" in err and "(2, 4, 2)" in err
    err = _refused(tmp_path, capsys, out, "--data", str(digits_npz), "--sigma", "0.25", "--backbone", "mlp",
                   "--weights", str(tmp_path / "missing.pt"))
    assert f"--weights {tmp_path / 'missing.pt'}: no such file" in err
    err = _refused(tmp_path, capsys, out, "--data", str(digits_npz), "--sigma", "0.25", "--backbone", "torchvision:resnet50")
    assert "--backbone torchvision:resnet50" in err and ("--weights" in err or "does not import" in err)
    err = _refused(tmp_path, capsys, out, "--data", str(digits_npz), "--sigma", "0.25", "--consistency", "5")
    assert "--consistency needs --noise-copies >= 2" in err
    # A folder that holds another run is left as it was too.
    cli(*_train_args(digits_npz, out, "--epochs", "1"), cwd=tmp_path)
    err = _refused(tmp_path, capsys, out, *_train_args(digits_npz, out, "--epochs", "2")[1:-2])
    assert "epochs differ" in err


# ---------------------------------------------------------------------- the training sigma travels with the model


def test_a_model_certified_at_another_sigma_than_it_was_trained_at_is_refused(digits_npz, tmp_path, capsys):
    model = tmp_path / "m"
    cli(*_train_args(digits_npz, model, "--epochs", "1"), cwd=tmp_path)  # trained at sigma 0.5
    data = ["--model", str(model / "model.pt"), "--queries", str(digits_npz), "--gallery", str(digits_npz),
            "--max-queries", "4", "--n0", "10", "--quiet"]
    for command, extra in (("certify", ["--n", "100"]), ("attack", ["--n", "50", "--steps", "1", "--eot", "1",
                                                                    "--restarts", "1", "--radii", "0.25"])):
        out = tmp_path / command
        assert main([command, *data, *extra, "--sigma", "0.25", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"error: --sigma 0.25: the model {model / 'model.pt'} was trained at sigma 0.5; use --sigma 0.5, "
                       "or pass --allow-sigma-mismatch to smooth it at another sigma anyway")
        assert not out.exists()
        assert main([command, *data, *extra, "--sigma", "0.25", "--allow-sigma-mismatch", "--out", str(out)]) in (0, 1)
        run = json.loads((out / "run.json").read_text())
        assert run["sigma"] == 0.25 and run["model_training_sigma"] == 0.5
    capsys.readouterr()
    assert main(["certify", *data, "--n", "100", "--sigma", "0.5", "--out", str(tmp_path / "same")]) == 0
    assert json.loads((tmp_path / "same" / "run.json").read_text())["model_training_sigma"] == 0.5


# ---------------------------------------------------------------------- losses, frozen BatchNorm


@pytest.mark.parametrize("loss", ["margin", "multi-similarity", "contrastive"])
def test_each_loss_trains_and_exports_normalised_embeddings(loss, tmp_path, capsys):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 4)
    x = (rng.uniform(0, 1, (16, 3, 6, 6)) * 0.5 + labels[:, None, None, None] / 8).astype(np.float32)
    np.savez(tmp_path / "t.npz", x=x, labels=labels)
    out = tmp_path / loss
    assert main(["train", "--data", str(tmp_path / "t.npz"), "--sigma", "0.1", "--loss", loss, "--backbone", "cnn",
                 "--freeze-bn", "--embedding-dim", "5", "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    history = json.loads((out / "train.json").read_text())["history"]
    assert len(history) == 2 and all(np.isfinite(e["loss"]) for e in history)
    model = torch.jit.load(str(out / "model.pt"))
    e = model(torch.from_numpy(x[:3]))
    assert e.shape == (3, 5) and torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)


def test_frozen_batchnorm_keeps_its_running_statistics():
    from retrievalguard_fast.training.tasks import set_train_mode as _set_train_mode

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2))
    before = model[1].running_mean.clone()
    _set_train_mode(model, freeze_bn=True)
    assert model[0].training and not model[1].training
    model(torch.randn(4, 1, 3, 3) + 5)
    assert torch.equal(model[1].running_mean, before)
    _set_train_mode(model, freeze_bn=False)
    model(torch.randn(4, 1, 3, 3) + 5)
    assert not torch.equal(model[1].running_mean, before)
