"""The benchmark entry points run (tiny sizes; figures come from real runs, see benchmarks/RESULTS.md)."""

import json
import subprocess
import sys

import pytest


def bench(tmp_path, *args):
    proc = subprocess.run([sys.executable, "-m", "retrievalguard_fast", "bench", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def test_bench_kernels_small(tmp_path):
    out = bench(tmp_path, "kernels", "--device", "cpu", "--rows", "300", "--gallery", "700", "--dim", "16",
                "--classes", "10", "--noise-samples", "200", "--repeat", "1", "--json", str(tmp_path / "k.json"))
    assert "nn_vote CPU" in out and "gaussian_noise CPU" in out and "GFLOP/s" in out
    report = json.loads((tmp_path / "k.json").read_text())
    modes = next(b for b in report["benchmarks"] if b["kernel"] == "nn_vote modes")["modes"]
    ours = [m for m in modes if m["mode"].startswith("ours")]
    assert len(ours) == 3 and all(m["differs"] == 0.0 for m in ours)  # screened modes are exact


def test_bench_certify_small(tmp_path):
    out = bench(tmp_path, "certify", "--queries", "3", "--n", "500", "--batch-size", "400", "--repeat", "1")
    assert "speed-up over plain torch" in out


def test_bench_sequential_small(tmp_path):
    out = bench(tmp_path, "sequential", "--queries", "4", "--n", "4000", "--batch-size", "1000")
    assert "fewer model evaluations" in out and "plain torch loop" in out


@pytest.mark.slow
def test_bench_model_stage_small(tmp_path):
    out = bench(tmp_path, "model-stage", "--queries", "3", "--n", "500", "--configs", "baseline", "bf16 autocast",
                "channels-last", "batch x4")
    assert "bf16 autocast" in out


def test_bench_data_small(tmp_path):
    out = bench(tmp_path, "data", "--root", str(tmp_path / "images"), "--image-size", "64x48", "--images", "40",
                "--workers", "2", "--batch-size", "8", "--batches", "1", "--memory", "10,30",
                "--json", str(tmp_path / "d.json"))
    assert "images decoded/s" in out and "model samples/s" in out and "peak RSS" in out
    report = json.loads((tmp_path / "d.json").read_text())
    assert set(report["decoded_per_s"]) == {"0", "2"} and [m["gallery"] for m in report["memory"]] == [10, 30]


def test_options_without_a_name_go_to_all(monkeypatch):
    """`bench --device cpu` runs every benchmark of `all` with those options (it used to exit 2)."""
    import retrievalguard_fast.bench as bench_package
    from retrievalguard_fast import cli

    calls = []
    monkeypatch.setattr(bench_package, "run", lambda name, argv: calls.append((name, list(argv))))
    assert cli.main(["bench", "--device", "cpu"]) == 0
    assert calls == [("kernels", ["--device", "cpu"]), ("certify", ["--device", "cpu"])]
    calls.clear()
    assert cli.main(["bench", "sequential", "--queries", "2"]) == 0
    assert calls == [("sequential", ["--queries", "2"])]
    assert cli.main(["bench", "nope"]) == 2
