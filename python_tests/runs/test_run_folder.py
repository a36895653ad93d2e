"""The run store as a library: certify into a folder from Python, resume it, refuse a folder in use."""

import json

import pytest
from conftest import read_results, strip_timing

from retrievalguard_fast.errors import InputError
from retrievalguard_fast.runs import RESULTS, RunFolder, certify_to_folder
from retrievalguard_fast.smoothing import SmoothedRetriever


@pytest.fixture(scope="module")
def setup(digits):
    model, gallery, data = digits
    retriever = SmoothedRetriever(model, gallery, 0.25, batch_size=500, seed=5)
    return retriever, data.query_x[:12], data.query_y[:12]


def run(folder, setup, radii=(0.1, 0.25), **kw):
    retriever, x, y = setup
    return certify_to_folder(str(folder), retriever, x, y, identity={"model": "digits-mlp", "data": "test"}, n0=20,
                             n=600, mode=kw.pop("mode", "sequential"), radii=radii, first_checkpoint=150, quiet=True,
                             **kw)


def test_certify_into_a_folder_and_resume_it_from_python(setup, tmp_path):
    full = run(tmp_path / "full", setup)
    assert full["num_queries"] == 12 and full["this_session"]["queries"] == 12
    # Keep the first five records, as a run stopped there would have left them.
    (tmp_path / "cut").mkdir()
    run(tmp_path / "cut", setup)
    lines = (tmp_path / "cut" / RESULTS).read_text().splitlines(keepends=True)
    (tmp_path / "cut" / RESULTS).write_text("".join(lines[:5]))
    with pytest.raises(InputError, match=r"pass resume=True"):
        run(tmp_path / "cut", setup)
    resumed = run(tmp_path / "cut", setup, resume=True)
    assert resumed["this_session"]["queries"] == 7
    assert strip_timing(read_results(tmp_path / "cut")) == strip_timing(read_results(tmp_path / "full"))
    assert resumed["certified_recall_at_1"] == full["certified_recall_at_1"]
    assert "lower bound" in resumed["average_certified_radius_is"]
    retriever, x, y = setup
    with pytest.raises(InputError, match=r"other parameters \(n differ\)"):
        certify_to_folder(str(tmp_path / "cut"), retriever, x, y, identity={"model": "digits-mlp", "data": "test"},
                          n0=20, n=700, mode="sequential", radii=(0.1, 0.25), first_checkpoint=150, quiet=True,
                          resume=True)


def test_a_folder_is_held_by_one_run_at_a_time(tmp_path):
    first = RunFolder(str(tmp_path))
    try:
        with pytest.raises(InputError, match=r"is in use by another run \(pid \d+ on .*, since "):
            RunFolder(str(tmp_path))
    finally:
        first.close()
    RunFolder(str(tmp_path)).close()  # released with its holder


def test_the_summary_curve_agrees_with_the_table(setup, tmp_path):
    summary = run(tmp_path / "o", setup, radii=(0.0, 0.1), mode="fixed-n")
    curve = summary["certified_recall_curve"]
    assert curve["radius"][0] == 0.0 and len(curve["radius"]) == 201
    for name in ("vote", "gaussian", "lipschitz"):
        assert curve[name][0] == summary["certified_recall_at_1"][name]["0.0"]
        assert all(a >= b for a, b in zip(curve[name], curve[name][1:]))  # non-increasing in the radius
    assert summary["average_certified_radius_is"].startswith("exact")


def test_run_json_records_the_record_format_and_refuses_another(setup, tmp_path):
    run(tmp_path / "a", setup)
    params = json.loads((tmp_path / "a" / "run.json").read_text())
    assert params["record_format"] == 2
    assert run(tmp_path / "a", setup, resume=True)["this_session"]["queries"] == 0
    # A folder from before the number was written is format 1: its records lack format 2's
    # fields, so it is refused by name, in the library's words (out, not --out).
    del params["record_format"]
    (tmp_path / "a" / "run.json").write_text(json.dumps(params))
    with pytest.raises(InputError, match=r"^out .* holds records of format 1, this version writes format 2"):
        run(tmp_path / "a", setup, resume=True)
    params["record_format"] = 3
    (tmp_path / "a" / "run.json").write_text(json.dumps(params))
    with pytest.raises(InputError, match=r"^out .* holds records of format 3, this version writes format 2") as err:
        run(tmp_path / "a", setup, resume=True)
    assert "choose a new --out" in err.value.for_cli()
    assert isinstance(err.value, ValueError)
