"""``train`` under torchrun: two CPU ranks (gloo) keep identical weights after every step, while
each trains on batches of its own."""

import json

import numpy as np

from retrievalguard_fast.training.parallel import STEP_DIGESTS
from retrievalguard_fast.training.sampler import epoch_batches

from conftest import cli_env
from runs.test_distributed import _finish, _torchrun


def test_two_ranks_keep_identical_weights_after_every_step(tmp_path):
    from retrievalguard_fast.demo import load_digits_split

    d = load_digits_split()
    keep = np.arange(0, len(d.gallery_y), 4)
    np.savez(tmp_path / "train.npz", x=d.gallery_x[keep], labels=d.gallery_y[keep])
    digests = tmp_path / "digests"
    args = ["train", "--data", str(tmp_path / "train.npz"), "--sigma", "0.25", "--backbone", "mlp", "--embedding-dim",
            "16", "--epochs", "2", "--batch-size", "32", "--lr", "1e-3", "--consistency", "2", "--noise-copies", "2",
            "--device", "cpu", "--quiet", "--out", str(tmp_path / "out")]
    code, out, err = _finish(_torchrun(["--standalone", "--nproc-per-node=2"], args, tmp_path,
                                       env=dict(cli_env(), **{STEP_DIGESTS: str(digests)})))
    assert code == 0, err
    ranks = [(tmp_path / f"digests.rank{r}").read_text().split() for r in (0, 1)]
    # A step is two batches, one per rank: the epoch's batches, every image once.
    steps = sum(-(-len(epoch_batches(d.gallery_y[keep], 2, 32, 0, e)) // 2) for e in range(2))
    assert len(ranks[0]) == len(ranks[1]) == steps
    assert ranks[0] == ranks[1]  # identical weights on both ranks after every step
    assert len(set(ranks[0])) == steps  # and every step changed them
    record = json.loads((tmp_path / "out" / "train.json").read_text())
    assert record["complete"] and record["parameters"]["world_size"] == 2
    assert (tmp_path / "out" / "model.pt").exists()
    # A folder rank 0 refuses stops every rank with its line, instead of leaving them waiting.
    code, out, err = _finish(_torchrun(["--standalone", "--nproc-per-node=2"],
                                       [a if a != "2" or k != args.index("--epochs") + 1 else "3"
                                        for k, a in enumerate(args)], tmp_path), timeout=120)
    assert code != 0
    assert "error: rank 0: --out" in err and "other parameters (epochs differ)" in err
    assert "error: rank 1: rank 0 stopped the run: --out" in err
