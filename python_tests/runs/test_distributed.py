"""One run across the ranks of torchrun (CPU ranks, gloo): identical records for any number of
ranks, launchers ("nodes") and restarts; resume with another rank count; failures stop the group.

Every multi-process test waits on files the runs write (python_tests/pausing_model.py), never on
time, and kills what it started. The problems are tiny: CI machines have two busy cores.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from retrievalguard_fast.cli import build_parser
from retrievalguard_fast.runs.distributed import block_schedule
from conftest import PAUSING_MODEL, cli, cli_env, read_results, strip_timing

QUERIES = 24


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from retrievalguard_fast.demo.digits import load_digits_split

    d = tmp_path_factory.mktemp("inputs")
    data = load_digits_split()
    np.savez(d / "queries.npz", x=data.query_x[:QUERIES], labels=data.query_y[:QUERIES])
    np.savez(d / "gallery_x.npz", x=data.gallery_x, labels=data.gallery_y)
    return d


def _args(files, *extra):
    # Sequential mode: queries stop at different sample counts, so ranks' blocks differ in cost.
    return ["certify", "--model", PAUSING_MODEL, "--queries", str(files / "queries.npz"), "--gallery",
            str(files / "gallery_x.npz"), "--sigma", "0.25", "--num-samples", "800", "--n0", "20",
            "--first-checkpoint", "200", "--batch-size", "200", "--seed", "5", "--radii", "0.25,0.5", *extra]


@pytest.fixture(scope="module")
def single(files, tmp_path_factory):
    """The records of the same run in one process, without torchrun."""
    out = tmp_path_factory.mktemp("single") / "out"
    cli(*_args(files, "--quiet", "--out", str(out)), cwd=out.parent)
    return strip_timing(read_results(out))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(launcher_args, args, cwd, env=None):
    """Start torchrun (its own session, so a test can stop it and its workers)."""
    env = dict(cli_env() if env is None else env, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *launcher_args,
                             "-m", "retrievalguard_fast", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc, timeout=240):
    """Wait for a torchrun launcher; on timeout (a hang) stop it and its workers and fail."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise AssertionError("torchrun did not finish: the group hung")
    return proc.returncode, out, err


def _stop(proc):
    """torchrun stops its workers on SIGTERM; SIGKILL the launcher if it does not end."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


@pytest.fixture
def launched():
    """Launchers a test started; stopped at teardown whatever happened."""
    procs = []
    yield procs
    for p in procs:
        _stop(p)


def _wait_for(paths, proc):
    deadline = time.monotonic() + 300  # a bound for a busy machine; normally seconds
    while not all(os.path.exists(p) for p in paths):
        if proc.poll() is not None:
            raise AssertionError(f"run ended before it paused: exit {proc.returncode}, {proc.communicate()}")
        assert time.monotonic() < deadline, "the ranks did not reach their pause point"
        time.sleep(0.05)


# ---------------------------------------------------------------------- without processes


@pytest.mark.parametrize("count,world,lo,hi", [(0, 2, 1, 8), (1, 3, 1, 8), (24, 2, 2, 256), (1000, 3, 4, 64),
                                              (1000, 1, 1, 1000), (7, 8, 3, 3)])
def test_block_schedule_covers_every_query_once_largest_first(count, world, lo, hi):
    blocks = block_schedule(count, world, lo, hi)
    assert [q for a, b in blocks for q in range(a, b)] == list(range(count))
    sizes = [b - a for a, b in blocks]
    assert all(lo <= s <= hi for s in sizes[:-1]) and all(s <= hi for s in sizes)
    assert sizes == sorted(sizes, reverse=True) or sizes[-1] < lo  # only the last may be cut short


def test_block_schedule_ends_in_small_blocks():
    # The last blocks bound how long a rank idles at the end: a quarter-share of little is small.
    sizes = [b - a for a, b in block_schedule(1000, 2, 2, 256)]
    assert sizes[0] == 125 and sizes[-2] == 2


def _all_option_strings():
    parser = build_parser()
    strings = set()
    for sub in parser._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            strings.update(s for s in action.option_strings if s.startswith("--"))
    return sorted(strings)


def test_every_option_passes_through_torchruns_parser():
    from torch.distributed.run import get_args_parser

    torchrun = get_args_parser()
    theirs = sorted(s for a in torchrun._actions for s in a.option_strings)
    ours = _all_option_strings()
    assert "--num-samples" in ours and "--n" in ours
    # torchrun reads abbreviations of its options anywhere on its line: none of ours (but the
    # --n alias, kept for use without torchrun) may be a prefix of one of its other options.
    clashes = sorted(o for o in ours if o != "--n" and any(t.startswith(o) and t != o for t in theirs))
    assert clashes == []
    for option in ours:
        if option == "--n":
            continue
        argv = ["certify", option, "1", "--num-samples", "2"]
        parsed = torchrun.parse_args(["--standalone", "--nproc-per-node", "2", "-m", "retrievalguard_fast", *argv])
        assert parsed.training_script_args == argv, option
    with pytest.raises(SystemExit):  # what the long name avoids (torchrun prints "ambiguous option")
        torchrun.parse_args(["--standalone", "-m", "retrievalguard_fast", "certify", "--n", "100"])


# ---------------------------------------------------------------------- torchrun


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_give_the_records_of_one_process(files, tmp_path, single, launched, ranks):
    out = tmp_path / "out"
    launched.append(_torchrun(["--standalone", f"--nproc-per-node={ranks}"], _args(files, "--out", str(out)), tmp_path))
    rc, stdout, err = _finish(launched[-1])
    assert rc == 0, err
    assert strip_timing(read_results(out)) == single
    assert sorted(p.name for p in out.glob("results*")) == ["results.jsonl"]  # rank files merged
    assert stdout.count("certified Recall@1") == 1  # rank 0 reports, once
    progress = [line for line in err.splitlines() if "queries," in line]
    assert progress and all(f"/{QUERIES} queries" in line for line in progress)
    assert progress[-1].split("]")[-1].strip().startswith(f"{QUERIES}/{QUERIES} queries")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_queries"] == QUERIES and summary["this_session"]["queries"] == QUERIES
    assert summary["this_session"]["ranks"] == ranks and 0 <= summary["this_session"]["rank_idle_fraction"] < 1


def test_two_launchers_as_two_nodes(files, tmp_path, single, launched):
    out = tmp_path / "out"
    endpoint = f"127.0.0.1:{_free_port()}"
    for node in range(2):
        launched.append(_torchrun(["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                                   f"--rdzv-endpoint={endpoint}", "--rdzv-id=twonodes", f"--node-rank={node}"],
                                  _args(files, "--quiet", "--out", str(out)), tmp_path))
    for proc in launched:
        rc, _, err = _finish(proc)
        assert rc == 0, err
    assert strip_timing(read_results(out)) == single


@pytest.mark.parametrize("node1,expected", [
    (["--alpha", "0.3"], "alpha 0.3 here, 0.001 on rank 0"),
    (["--num-samples", "1200"], "n 1200 here, 800 on rank 0"),
    (["--model", "retrievalguard_fast.demo.digits:load_default_model"], "model \"factory:retrievalguard_fast.demo.digits"),
])
def test_launchers_with_other_parameters_stop_the_group_before_any_record(files, tmp_path, launched, node1, expected):
    """Two nodes started with different options or models are one run only if every rank's run
    parameters are rank 0's: the node that differs stops the group with one line naming the
    parameter and both values, and no rank certifies a query."""
    out = tmp_path / "out"
    endpoint = f"127.0.0.1:{_free_port()}"
    for node in range(2):
        launched.append(_torchrun(["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                                   f"--rdzv-endpoint={endpoint}", "--rdzv-id=differ", f"--node-rank={node}"],
                                  _args(files, "--quiet", "--out", str(out), *(node1 if node else [])), tmp_path))
    results = [_finish(proc) for proc in launched]
    assert all(rc != 0 for rc, _, _ in results), results
    lines = [line for line in results[1][2].splitlines() if line.startswith("error: rank 1: ")]
    assert len(lines) == 1 and "started with other run parameters than rank 0" in lines[0] and expected in lines[0], lines
    assert "retrievalguard_fast/" not in results[1][2]  # one line, no traceback
    written = [p for p in out.glob("results*.jsonl") if p.stat().st_size > 0]
    assert written == [], written  # nothing certified, by either rank


def test_a_killed_rank_is_restarted_and_the_run_completes_identically(files, tmp_path, single, launched):
    out = tmp_path / "out"
    env = dict(cli_env(f"{out}/results.rank-*.jsonl:6"))
    proc = _torchrun(["--standalone", "--nproc-per-node=2", "--max-restarts=1"],
                     _args(files, "--quiet", "--out", str(out)), tmp_path, env=env)
    launched.append(proc)
    _wait_for([out / "paused.0", out / "paused.1"], proc)  # both ranks inside the model, mid-run
    # The folder is the group's: a second run into it is refused and changes nothing.
    second = cli(*_args(files, "--quiet", "--out", str(out), "--resume"), cwd=tmp_path, check=False)
    assert second.returncode == 2 and "in use by another run (rank 0 of a 2-rank torchrun group" in second.stderr
    os.kill(int((out / "paused.1").read_text()), signal.SIGKILL)
    rc, _, err = _finish(proc)
    assert rc == 0, err  # torchrun restarted the group (the markers stop a second pause)
    assert strip_timing(read_results(out)) == single  # none lost, none twice, each as in one process


def test_resume_a_three_rank_run_with_two(files, tmp_path, single, launched):
    out = tmp_path / "out"
    proc = _torchrun(["--standalone", "--nproc-per-node=3"], _args(files, "--quiet", "--out", str(out)), tmp_path,
                     env=cli_env(f"{out}/results.rank-*.jsonl:5"))
    launched.append(proc)
    markers = [out / f"paused.{r}" for r in range(3)]
    _wait_for(markers, proc)
    for marker in markers:  # the whole group dies at once (a lost node, a cancelled job)
        os.kill(int(marker.read_text()), signal.SIGKILL)
    rc, _, _ = _finish(proc)
    assert rc != 0
    partial = [r for p in out.glob("results.rank-*.jsonl") for r in map(json.loads, p.read_text().splitlines())]
    assert 5 <= len(partial) < QUERIES and not (out / "results.jsonl").exists()
    proc = _torchrun(["--standalone", "--nproc-per-node=2"], _args(files, "--quiet", "--out", str(out), "--resume"),
                     tmp_path)
    launched.append(proc)
    rc, _, err = _finish(proc)
    assert rc == 0, err
    resumed = read_results(out)
    assert strip_timing(resumed) == single
    assert {json.dumps(r, sort_keys=True) for r in partial} <= {json.dumps(r, sort_keys=True) for r in resumed}


def test_a_rank_that_raises_stops_the_group_with_its_message(files, tmp_path, launched):
    out = tmp_path / "out"
    # Rank 0 pauses after the group's first record, holding one block, so rank 1 is sure to claim
    # another and reach its (raising) forward pass; otherwise a fast rank 0 could certify every
    # query before rank 1 starts, and the run would succeed (seen once in 9 loaded rounds).
    env = dict(cli_env(pause_at=f"{out}/results.rank-*.jsonl:1"), RGF_TEST_RAISE_RANK="1")
    launched.append(_torchrun(["--standalone", "--nproc-per-node=2"], _args(files, "--quiet", "--out", str(out)),
                              tmp_path, env=env))
    rc, _, err = _finish(launched[-1])
    assert rc != 0
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    # The model's error, wrapped by the certifier: "the model failed on inputs of shape ...".
    failed = [line for line in lines if line.startswith("error: rank 1: ")]
    assert len(failed) == 1 and "test failure in the model on rank 1" in failed[0], lines
    # Rank 0 either saw the failure (and says whose) or was stopped by torchrun first.
    assert all(line == failed[0] or line.startswith("error: rank 0 stopped: rank 1 failed: ") for line in lines), lines
    assert "retrievalguard_fast/" not in err  # no rank's traceback (torchrun prints its own, of the launcher)


def test_ranks_without_work(files, tmp_path, single, launched):
    # Two queries make one block: two of the three ranks claim nothing and just finish.
    out = tmp_path / "out"
    launched.append(_torchrun(["--standalone", "--nproc-per-node=3"],
                              _args(files, "--quiet", "--max-queries", "2", "--out", str(out)), tmp_path))
    rc, _, err = _finish(launched[-1])
    assert rc == 0, err
    assert strip_timing(read_results(out)) == single[:2]


def test_a_rank_that_sees_another_folder_than_rank_0_is_refused(tmp_path):
    """--out not shared between machines: the other node's folder lacks rank 0's token, and that
    rank stops with one line instead of certifying every query again into files no merge reads."""
    import torch.distributed as dist

    from retrievalguard_fast.runs.distributed import Group
    from retrievalguard_fast.errors import InputError

    store = dist.HashStore()
    shared, other = tmp_path / "shared", tmp_path / "elsewhere"
    shared.mkdir()
    other.mkdir()
    leader = Group(store, 0, 2, 0, timeout=5.0, run_id="r", attempt=0)
    follower = Group(store, 1, 2, 1, timeout=5.0, run_id="r", attempt=0)
    leader.mark_folder(str(shared))
    follower.check_folder(str(shared))  # the same folder: accepted
    with pytest.raises(InputError, match="does not see the folder rank 0 locked"):
        follower.check_folder(str(other))
    # A stale token from an earlier attempt in a folder is not accepted either.
    (other / ".torchrun-group").write_text("r/0/1/1")
    with pytest.raises(InputError, match="file system they share"):
        follower.check_folder(str(other))
