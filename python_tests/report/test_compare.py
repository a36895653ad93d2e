"""``compare``: two digits runs (the shipped sigma-0.25 model certified at 0.25 and, mismatched,
at 0.5) in one plot and in terminal, Markdown and LaTeX tables, with each query's noisy Recall@1
from the true label's count in the records (record format 2)."""

import json

import numpy as np
import pytest

from retrievalguard_fast import SmoothedRetriever, certify_to_folder
from retrievalguard_fast.cli import main

from conftest import read_results

RADII = (0.0, 0.25, 0.5)


@pytest.fixture(scope="module")
def two_runs(digits, tmp_path_factory):
    model, gallery, data = digits
    root = tmp_path_factory.mktemp("compare")
    for sigma in (0.25, 0.5):
        retriever = SmoothedRetriever(model, gallery, sigma, batch_size=500, seed=1)
        certify_to_folder(str(root / f"sigma{sigma}"), retriever, data.query_x[:16], data.query_y[:16],
                          identity={"model": "digits-mlp", "model_training_sigma": 0.25, "data": "test"}, n0=20, n=400,
                          mode="fixed-n", radii=RADII, quiet=True)
    return root


def test_records_carry_the_true_labels_count_and_the_mean_norm(two_runs):
    for r in read_results(two_runs / "sigma0.25"):
        assert 0 <= r["label_count"] <= r["vote_n"] == 400
        if r["vote_selected"] == r["label"]:
            assert r["label_count"] == r["vote_count"]
        assert 0 < r["soft_mean_norm"] <= 1 + 1e-9


def test_compare_two_runs_writes_the_plot_and_the_tables(two_runs, tmp_path, capsys):
    a, b = two_runs / "sigma0.25", two_runs / "sigma0.5"
    out = tmp_path / "cmp"
    assert main(["compare", str(a), str(b), "--out", str(out), "--radii", "0,0.25,0.5"]) == 0
    printed = capsys.readouterr().out
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md, tex = (out / "compare.md").read_text(), (out / "compare.tex").read_text()
    assert md.count("\n") == 2 + 4 and "| sigma0.5 | 0.5 (trained 0.25) | soft |" in md
    assert tex.startswith("\\begin{tabular}") and tex.count("\\\\") == 1 + 4
    assert "0.5 (trained 0.25)" in printed and printed.count("sigma0.25  ") == 2
    comparison = json.loads((out / "summary.json").read_text())
    for row, folder in zip(comparison["runs"], (a, b)):
        own = json.loads((folder / "summary.json").read_text())
        for key in ("vote", "gaussian"):
            assert row["certified_recall_at_1"][key] == {str(r): own["certified_recall_at_1"][key][str(r)] for r in RADII}
            assert row["average_certified_radius"][key] == pytest.approx(own["average_certified_radius"][key])
        records = read_results(folder)
        expected = np.array([r["label_count"] / r["vote_n"] for r in records])
        assert row["noisy_recall_at_1"]["values"] == pytest.approx(expected.tolist())
        assert row["noisy_recall_at_1"]["quantiles"]["0.5"] == pytest.approx(np.median(expected))
    # The mismatched sigma retrieves the true label less often under noise.
    assert comparison["runs"][1]["noisy_recall_at_1"]["mean"] < comparison["runs"][0]["noisy_recall_at_1"]["mean"]


def test_compare_refuses_a_folder_that_is_not_certifys(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "expected a results folder of certify" in err
    assert not (tmp_path / "o").exists()
