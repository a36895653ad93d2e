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


def test_a_rank_started_with_another_sigma_stops_the_group_before_any_step(tmp_path):
    """Two launchers (nodes) whose ranks differ in --sigma are not one training run: the rank that
    differs names the parameter with both values, rank 0 names the rank, and nothing is trained
    or written: --out is not created."""
    from retrievalguard_fast.demo import load_digits_split

    from runs.test_distributed import _free_port

    d = load_digits_split()
    keep = np.arange(0, len(d.gallery_y), 8)
    np.savez(tmp_path / "train.npz", x=d.gallery_x[keep], labels=d.gallery_y[keep])
    out, digests = tmp_path / "out", tmp_path / "digests"
    endpoint = f"127.0.0.1:{_free_port()}"
    launched = []
    for node, sigma in enumerate(["0.25", "0.5"]):
        args = ["train", "--data", str(tmp_path / "train.npz"), "--sigma", sigma, "--backbone", "mlp",
                "--embedding-dim", "8", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--quiet",
                "--out", str(out)]
        launched.append(_torchrun(["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                                   f"--rdzv-endpoint={endpoint}", "--rdzv-id=trainsigma", f"--node-rank={node}"],
                                  args, tmp_path, env=dict(cli_env(), **{STEP_DIGESTS: str(digests)})))
    results = [_finish(proc, timeout=120) for proc in launched]
    assert all(code != 0 for code, _, _ in results), results
    err0, err1 = results[0][2], results[1][2]
    assert "error: rank 1: started with other run parameters than rank 0 (sigma 0.5 here, 0.25 on rank 0)" in err1, err1
    assert "error: rank 0: rank 1 was started with other run parameters than rank 0 (sigma differ)" in err0, err0
    assert not list(tmp_path.glob("digests.rank*"))  # no step was taken
    assert not out.exists()  # checked before rank 0 opens --out
