"""The command line: demo, certify on files made here, resume after a real kill, bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import retrievalguard_fast as rgf
from retrievalguard_fast.demo.digits import load_default_model, load_digits_split
from conftest import PAUSING_MODEL, cli, cli_env, read_results, strip_timing

REQUIRED_FIELDS = {"index", "label", "clean_prediction", "vote_prediction", "vote_count", "vote_pA_lower", "vote_radius",
                   "soft_prediction", "soft_gaussian_radius", "soft_lipschitz_radius"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A TorchScript model and query/gallery .npz files, the way a user would make them."""
    d = tmp_path_factory.mktemp("inputs")
    data = load_digits_split()
    model = load_default_model(0.25)
    torch.jit.script(model).save(str(d / "model.pt"))
    np.savez(d / "queries.npz", x=data.query_x[:40], labels=data.query_y[:40])
    np.savez(d / "gallery_x.npz", x=data.gallery_x, labels=data.gallery_y)
    with torch.inference_mode():
        emb = model(torch.from_numpy(data.gallery_x)).numpy()
    np.savez(d / "gallery_emb.npz", embeddings=emb, labels=data.gallery_y)
    # leave-one-out: queries taken from the gallery itself
    np.savez(d / "queries_loo.npz", x=data.gallery_x[:6], labels=data.gallery_y[:6], exclude=np.arange(6))
    return d


def test_demo_writes_the_report(tmp_path):
    proc = cli("demo", "--queries", "12", "--n", "500", "--n0", "20", cwd=tmp_path)
    out = tmp_path / "retrievalguard-demo"
    assert "certified Recall@1" in proc.stdout and "vote (Cohen)" in proc.stdout
    records = read_results(out)
    assert len(records) == 12 and REQUIRED_FIELDS <= set(records[0])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_queries"] == 12
    assert set(summary["certified_recall_at_1"]) == {"vote", "gaussian", "lipschitz"}
    assert 0 <= summary["clean_recall_at_1"] <= 1 and summary["parameters"]["mode"] == "sequential"
    assert all(r["mode"] == "sequential" for r in records)
    assert "torch" in summary["versions"] and summary["device"].startswith("cpu")
    assert (out / "summary.csv").read_text().startswith("model,metric,radius,value")
    png = (out / "certified_recall.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # Running it again re-reports the same run instead of failing or recomputing.
    again = cli("demo", "--queries", "12", "--n", "500", "--n0", "20", cwd=tmp_path)
    assert "already certified" in again.stdout and read_results(out) == records
    other = cli("demo", "--queries", "12", "--n", "600", "--n0", "20", cwd=tmp_path, check=False)
    assert other.returncode == 2 and "other parameters" in other.stderr


@pytest.mark.parametrize("gallery", ["gallery_x.npz", "gallery_emb.npz"])
def test_certify_on_user_files(files, tmp_path, gallery):
    out = tmp_path / "out"
    proc = cli("certify", "--model", str(files / "model.pt"), "--queries", str(files / "queries.npz"),
               "--gallery", str(files / gallery), "--sigma", "0.25", "--n", "400", "--n0", "20",
               "--recall-k", "1,5", "--radii", "0,0.1,0.5", "--out", str(out), cwd=tmp_path)
    records = read_results(out)
    assert sorted(r["index"] for r in records) == list(range(40))
    for r in records:  # abstention: prediction -1 and radius null
        assert (r["vote_prediction"] == -1) == (r["vote_radius"] is None)
        assert (r["soft_prediction"] == -1) == (r["soft_gaussian_radius"] is None)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["certified_recall_at_k"]) == {"1", "5"}
    assert summary["clean_recall_at_1"] > 0.8
    assert "Recall@5" in proc.stdout


def test_certify_leave_one_out(files, tmp_path):
    cli("certify", "--model", str(files / "model.pt"), "--queries", str(files / "queries_loo.npz"),
        "--gallery", str(files / "gallery_emb.npz"), "--sigma", "0.25", "--n", "300", "--n0", "20",
        "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert len(read_results(tmp_path / "o")) == 6
    # The screened search (--nn-precision) gives the same records.
    cli("certify", "--model", str(files / "model.pt"), "--queries", str(files / "queries_loo.npz"),
        "--gallery", str(files / "gallery_emb.npz"), "--sigma", "0.25", "--n", "300", "--n0", "20",
        "--nn-precision", "bf16", "--out", str(tmp_path / "bf16"), cwd=tmp_path)
    assert strip_timing(read_results(tmp_path / "bf16")) == strip_timing(read_results(tmp_path / "o"))


def test_the_same_folder_refuses_other_parameters_and_needs_resume(files, tmp_path):
    base = ["certify", "--model", str(files / "model.pt"), "--queries", str(files / "queries.npz"),
            "--gallery", str(files / "gallery_emb.npz"), "--n", "200", "--n0", "10", "--out", str(tmp_path / "o")]
    cli(*base, "--sigma", "0.25", cwd=tmp_path)
    before = (tmp_path / "o" / "results.jsonl").read_bytes()
    proc = cli(*base, "--sigma", "0.5", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "other parameters (sigma differ)" in proc.stderr
    proc = cli(*base, "--sigma", "0.25", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--resume" in proc.stderr
    assert (tmp_path / "o" / "results.jsonl").read_bytes() == before  # nothing lost or mixed
    proc = cli(*base, "--sigma", "0.25", "--resume", "--batch-size", "77", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "batch_size differ" in proc.stderr
    # --resume on a finished run certifies nothing again and rewrites the same summary
    proc = cli(*base, "--sigma", "0.25", "--resume", cwd=tmp_path)
    assert (tmp_path / "o" / "results.jsonl").read_bytes() == before
    assert "0 queries certified" in proc.stdout


def _start_paused(args, cwd, results, lines):
    """Start a CLI run whose model pauses once ``results`` has ``lines`` lines; return it when
    it is paused there (it cannot finish before the test signals it: no race)."""
    # SIGINT back to its default in the child: a test runner started in the background (CI, nohup,
    # `cmd &`) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
    proc = subprocess.Popen([sys.executable, "-m", "retrievalguard_fast", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(f"{results}:{lines}"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    paused = f"{results}.paused"
    deadline = time.monotonic() + 600  # a generous bound for a busy machine; normally seconds
    while not os.path.exists(paused):
        if proc.poll() is not None:
            raise AssertionError(f"run ended before it paused: exit {proc.returncode}, {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the run did not reach its pause point")
        time.sleep(0.02)
    os.remove(paused)
    return proc


def _interruption_args(files, mode):
    return ["certify", "--model", PAUSING_MODEL, "--queries", str(files / "queries.npz"),
            "--gallery", str(files / "gallery_x.npz"), "--sigma", "0.25", "--n", "3000", "--n0", "50",
            "--batch-size", "1500", "--seed", "3", "--quiet", "--mode", mode, "--radii", "0.25,0.5,0.75"]


@pytest.fixture(scope="module")
def uninterrupted(files, tmp_path_factory):
    """Reference results of the interruption tests' runs, one per mode."""
    runs = {}
    for mode in ("fixed-n", "sequential"):
        out = tmp_path_factory.mktemp("full") / mode
        cli(*_interruption_args(files, mode), "--out", str(out), cwd=out.parent)
        runs[mode] = read_results(out)
    return runs


@pytest.mark.parametrize("how,mode", [("SIGKILL", "fixed-n"), ("SIGINT", "fixed-n"), ("SIGKILL", "sequential")])
def test_resume_after_a_real_interruption_matches_an_uninterrupted_run(files, tmp_path, uninterrupted, how, mode):
    base = _interruption_args(files, mode)
    out = tmp_path / "cut"
    proc = _start_paused([*base, "--out", str(out)], tmp_path, out / "results.jsonl", 5)
    proc.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if how == "SIGINT":
        assert proc.returncode == 130 and "--resume" in err and re.search(r"\d+ of 40 queries are saved", err), err
    else:
        assert proc.returncode == -signal.SIGKILL
    partial = read_results(out)
    assert 5 <= len(partial) < 40  # paused inside the model once five records were written
    # A kill can land mid-write: simulate the torn last line explicitly.
    with open(out / "results.jsonl", "a") as f:
        f.write('{"index": 39, "label": 7, "clean_predi')
    cli(*base, "--out", str(out), "--resume", cwd=tmp_path)
    resumed = read_results(out)
    assert len(resumed) == 40 and len({r["index"] for r in resumed}) == 40  # none lost, none twice
    assert strip_timing(resumed) == strip_timing(uninterrupted[mode])  # identical to the uninterrupted run
    assert all(r["mode"] == mode for r in resumed)
    assert json.loads((out / "run.json").read_text())["mode"] == mode


def test_a_second_run_into_a_folder_in_use_is_refused_and_changes_nothing(files, tmp_path, uninterrupted):
    base = _interruption_args(files, "fixed-n")
    out = tmp_path / "busy"
    first = _start_paused([*base, "--out", str(out)], tmp_path, out / "results.jsonl", 3)
    try:
        before = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
        second = cli(*base, "--out", str(out), "--resume", cwd=tmp_path, check=False)
        assert second.returncode == 2, second
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "is in use by another run" in lines[0] and f"pid {first.pid}" in lines[0], lines
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"} == before
    finally:
        first.kill()
        first.communicate(timeout=120)
    # The lock dies with its holder: the folder can be resumed, and the run completes exactly.
    cli(*base, "--out", str(out), "--resume", cwd=tmp_path)
    assert strip_timing(read_results(out)) == strip_timing(uninterrupted["fixed-n"])


def test_a_damaged_run_json_is_named_on_resume(files, tmp_path):
    base = ["certify", "--model", str(files / "model.pt"), "--queries", str(files / "queries.npz"), "--gallery",
            str(files / "gallery_emb.npz"), "--sigma", "0.25", "--n", "100", "--n0", "10", "--out", str(tmp_path / "o")]
    cli(*base, cwd=tmp_path)
    run_json = tmp_path / "o" / "run.json"
    run_json.write_text(run_json.read_text()[:20])
    results = (tmp_path / "o" / "results.jsonl").read_bytes()
    line = _bad(tmp_path, files, *base, "--resume")
    assert str(run_json) in line and "damaged" in line and "choose a new --out" in line, line
    assert (tmp_path / "o" / "results.jsonl").read_bytes() == results


def test_running_out_of_memory_is_one_line_naming_what_to_lower(files, tmp_path):
    line = _bad(tmp_path, files, "certify", "--model", str(files / "model.pt"), "--queries", str(files / "queries.npz"),
                "--gallery", str(files / "gallery_emb.npz"), "--sigma", "0.25", "--n", "100",
                "--batch-size", "500000000", "--out", str(tmp_path / "o"))
    assert "out of host memory while certifying" in line and "--batch-size" in line, line


def _bad(tmp_path, files, *args):
    proc = cli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


class _WrongShape(torch.nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :3, None]


def test_bad_input_gets_one_clear_line(files, tmp_path):
    d = tmp_path
    np.savez(d / "noarr.npz", y=np.zeros(3))
    np.savez(d / "nan.npz", x=np.full((2, 1, 8, 8), np.nan, np.float32), labels=np.array([0, 1]))
    np.savez(d / "badlen.npz", x=np.zeros((3, 1, 8, 8), np.float32), labels=np.array([0, 1]))
    np.savez(d / "shape.npz", x=np.zeros((3, 5, 5), np.float32), labels=np.array([0, 1, 2]))
    np.savez(d / "otherclasses.npz", x=np.zeros((2, 1, 8, 8), np.float32), labels=np.array([50, 51]))
    np.savez(d / "floatlabels.npz", x=np.zeros((2, 1, 8, 8), np.float32), labels=np.array([0.0, 1.0]))
    (d / "notnpz.npz").write_text("hello")
    (d / "notmodel.pt").write_text("hello")
    torch.jit.script(_WrongShape()).save(str(d / "wrongshape.pt"))
    model, queries, gallery = str(files / "model.pt"), str(files / "queries.npz"), str(files / "gallery_emb.npz")

    def certify(**over):
        args = {"--model": model, "--queries": queries, "--gallery": gallery, "--sigma": "0.25", "--n": "50",
                "--out": str(d / "o")}
        args.update(over)
        return ["certify"] + [t for k, v in args.items() for t in (k, v)]

    cases = [
        (certify(**{"--queries": str(d / "missing.npz")}), "no such file"),
        (certify(**{"--queries": str(d / "notnpz.npz")}), "not a readable .npz"),
        (certify(**{"--queries": str(d / "noarr.npz")}), "missing array 'x'"),
        (certify(**{"--queries": str(d / "nan.npz")}), "non-finite"),
        (certify(**{"--queries": str(d / "badlen.npz")}), "labels must have shape (3,)"),
        (certify(**{"--queries": str(d / "floatlabels.npz")}), "labels must be integers"),
        (certify(**{"--queries": str(d / "shape.npz")}), "the model failed on inputs of shape"),
        (certify(**{"--queries": str(d / "otherclasses.npz")}), "share no class"),
        (certify(**{"--gallery": str(d / "noarr.npz")}), "missing array 'labels'"),
        (certify(**{"--model": str(d / "notmodel.pt")}), "not a loadable TorchScript file"),
        (certify(**{"--model": "no_such_module_xyz:make"}), "could not build the model"),
        (certify(**{"--model": "nothing-here"}), "no such file"),
        (certify(**{"--model": str(d / "wrongshape.pt"), "--gallery": str(files / "gallery_x.npz")}), "(batch, k) embeddings"),
        (certify(**{"--sigma": "0"}), "--sigma: expected a finite number > 0"),
        (certify(**{"--sigma": "abc"}), "--sigma: expected a number"),
        (certify(**{"--n": "0"}), "--n: expected an integer >= 1"),
        (certify(**{"--alpha": "1.5"}), "--alpha: expected a number in (0, 1)"),
        (certify(**{"--recall-k": "0,1"}), "--recall-k"),
        (certify(**{"--radii": "-1"}), "--radii"),
        (certify(**{"--recall-k": "5000"}), "exceeds the gallery size"),
    ]
    if not rgf.has_cuda():
        cases.append((certify(**{"--device": "cuda"}), "no CUDA GPU is available"))
    for args, expected in cases:
        line = _bad(tmp_path, files, *args)
        assert expected in line, (args, line)
    assert not (d / "o" / "results.jsonl").exists() or not (d / "o" / "results.jsonl").read_text()


def test_debug_shows_the_traceback(files, tmp_path):
    proc = cli("certify", "--model", "nothing-here", "--queries", str(files / "queries.npz"), "--gallery",
               str(files / "gallery_emb.npz"), "--sigma", "0.25", "--out", str(tmp_path / "o"), "--debug",
               cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def _attack_args(files, out, *extra):
    return ("attack", "--model", str(files / "model.pt"), "--queries", str(files / "queries3.npz"),
            "--gallery", str(files / "gallery_x.npz"), "--sigma", "0.25", "--radii", "0,0.25,1.5", "--steps", "6",
            "--eot", "8", "--restarts", "1", "--n0", "200", "--n", "1000", "--out", str(out), *extra)


@pytest.mark.slow
def test_attack_records_resume_and_the_soundness_alarm(files, tmp_path, capsys):
    from retrievalguard_fast.cli import main

    data = np.load(files / "queries.npz")
    np.savez(files / "queries3.npz", x=data["x"][:3], labels=data["labels"][:3])
    cert = tmp_path / "cert"
    cli("certify", "--model", str(files / "model.pt"), "--queries", str(files / "queries3.npz"),
        "--gallery", str(files / "gallery_x.npz"), "--sigma", "0.25", "--n", "2000", "--out", str(cert), cwd=tmp_path)
    out = tmp_path / "attack"
    proc = cli(*_attack_args(files, out, "--certified", str(cert)), cwd=tmp_path)
    assert "vote, attack (upper)" in proc.stdout and "soft, Gaussian, certified" in proc.stdout and "vote (Cohen), certified" in proc.stdout
    assert "soundness: 0 certified queries broken" in proc.stdout
    records = read_results(out)
    assert sorted(r["index"] for r in records) == [0, 1, 2]
    for r in records:
        for model in ("vote", "soft", "base"):
            assert {"reference", "break_radius", "break_norm", "tests"} <= set(r[model])
            assert all(t["norm"] <= t["radius"] for t in r[model]["tests"])
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "attack" and run["seed"] == 0 and run["radii"] == [0.25, 1.5] and run["clip"] == [0.0, 1.0]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["empirical_robust_recall_at_1"]) == {"vote", "soft", "base"}
    assert summary["certified"]["alarm"]["broken_inside_radius"] == 0
    assert (out / "attack_vs_certified.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Every certified claim was attacked at its own radius.
    assert all({t["certificate"] for t in r["certified"]} >= {"vote", "gaussian"} for r in records)
    assert all(t["norm"] < t["radius"] and not t["broken"] for r in records for t in r["certified"])
    # The folder holds this run: again without --resume is refused; a resume after losing the
    # last two records redoes exactly them, identically (each query's randomness is its own).
    certified = ("--certified", str(cert))
    assert main(list(_attack_args(files, out, *certified))) == 2 and "--resume" in capsys.readouterr().err
    lines = (out / "results.jsonl").read_text().splitlines(keepends=True)
    (out / "results.jsonl").write_text(lines[0] + lines[1][:20])  # a torn second line
    cli(*_attack_args(files, out, "--resume", "--quiet", *certified), cwd=tmp_path)
    assert strip_timing(read_results(out)) == strip_timing(records)
    # The records hold the claims' attacks: a resume against other certificates (or none) is refused.
    assert main(list(_attack_args(files, out, "--resume"))) == 2
    assert "certified_digest" in capsys.readouterr().err
    # An over-certifying fake (every vote radius x100): the alarm, exit status 1.
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "run.json").write_text((cert / "run.json").read_text())
    with open(fake / "results.jsonl", "w") as f:
        for r in read_results(cert):
            r["vote_radius"] = None if r["vote_radius"] is None else 100 * r["vote_radius"]
            f.write(json.dumps(r) + "\n")
    faked = tmp_path / "attack-fake"
    alarm = cli(*_attack_args(files, faked, "--certified", str(fake)), cwd=tmp_path, check=False)
    assert alarm.returncode == 1 and "SOUNDNESS ALARM" in alarm.stdout, alarm.stdout + alarm.stderr
    found = json.loads((faked / "summary.json").read_text())["certified"]["alarm"]
    assert found["by_claim"]["vote"]["broken_inside_radius"] >= 1 and found["by_model"]["vote"]["broken_inside_radius"] >= 1
    # Bad input (in this process: each check ends before any attack): one line, status 2, the
    # records untouched.
    before = (out / "results.jsonl").read_bytes()
    capsys.readouterr()
    other_sigma = [a if a != "0.25" else "0.3" for a in _attack_args(files, tmp_path / "o2", "--certified", str(cert))]
    for argv, message in ((_attack_args(files, out, "--resume", "--clip", "0.5,1", *certified), "outside --clip"),
                          (_attack_args(files, out, "--resume", "--certified", str(tmp_path / "missing")), "--certified"),
                          (_attack_args(files, out, "--resume", "--certified", str(out)), "not a folder of certify"),
                          (other_sigma, "sigma")):
        assert main(list(argv)) == 2
        err = capsys.readouterr().err
        # one error line, the last (after, at most, the gallery's progress line), no traceback
        lines = err.strip().splitlines()
        assert [line for line in lines if line.startswith("error:")] == lines[-1:] and message in lines[-1], (argv, err)
        assert len(lines) <= 2 and "Traceback" not in err, (argv, err)
    for extra, message in ((("--clip", "1,0"), "low < high"), (("--models", "vote,nope"), "subset of vote,soft,base")):
        with pytest.raises(SystemExit) as exit_:
            main(list(_attack_args(files, out, "--resume", *extra)))
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert (out / "results.jsonl").read_bytes() == before


FACTORY = '''
import os
import torch
from retrievalguard_fast.demo import load_default_model


def build():
    model = load_default_model(0.25)
    with torch.no_grad():
        model.net[-1].bias.add_(float(os.environ.get("RETRAINED_SHIFT", "0")))  # "retrained" weights
    return model
'''


def test_a_retrained_factory_model_is_another_model(files, tmp_path):
    """A factory is identified by its module's state, not its name: retrained weights behind the
    same `module:factory` into the same folder are refused (resume) and embed their own gallery,
    never reusing the old model's embeddings or records."""
    (tmp_path / "mymodel.py").write_text(FACTORY)
    args = ["certify", "--model", "mymodel:build", "--queries", str(files / "queries.npz"), "--gallery",
            str(files / "gallery_x.npz"), "--sigma", "0.25", "--n", "200", "--n0", "10", "--max-queries", "4",
            "--out", str(tmp_path / "o")]

    def run(shift, *extra, check=True):
        env = dict(cli_env(), RETRAINED_SHIFT=shift, PYTHONPATH=os.pathsep.join([str(tmp_path), cli_env()["PYTHONPATH"]]))
        proc = subprocess.run([sys.executable, "-m", "retrievalguard_fast", *args, *extra], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300, env=env)
        assert not check or proc.returncode == 0, proc.stderr
        return proc

    run("0")
    first = json.loads((tmp_path / "o" / "run.json").read_text())["model"]
    assert first.startswith("factory:mymodel:build:sha256:")
    before = (tmp_path / "o" / "results.jsonl").read_bytes()
    proc = run("0.25", "--resume", check=False)
    assert proc.returncode == 2 and "other parameters (model differ)" in proc.stderr, proc.stderr
    assert (tmp_path / "o" / "results.jsonl").read_bytes() == before
    assert len(list((tmp_path / "o").glob("gallery-*.npz"))) == 2  # its own embeddings, the old ones kept
    # The same weights again are the same model: the run resumes (nothing to redo).
    assert "0 queries certified" in run("0", "--resume").stdout
