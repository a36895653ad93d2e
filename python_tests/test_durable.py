"""The one durable-write helper: a whole file replaced atomically, or appended line by line."""

import os

import pytest

from retrievalguard_fast.durable import DurableAppender, atomic_write


def test_atomic_write_replaces_whole_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "summary.json"
    atomic_write(str(path), lambda f: f.write("old"))
    atomic_write(str(path), lambda f: f.write("new"))
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["summary.json"]
    atomic_write(str(tmp_path / "g.npz"), lambda f: f.write(b"\x00\x01"), binary=True)
    assert (tmp_path / "g.npz").read_bytes() == b"\x00\x01"


def test_a_failed_write_keeps_the_old_content(tmp_path):
    path = tmp_path / "run.json"
    atomic_write(str(path), lambda f: f.write("kept"))

    def fails(f):
        f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(path), fails)
    assert path.read_text() == "kept" and sorted(os.listdir(tmp_path)) == ["run.json"]


def test_appender_opens_at_the_first_line_and_appends(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"index": 0}\n')
    out = DurableAppender(str(path))
    out.close()  # before any line: nothing opened, nothing changed
    assert path.read_text() == '{"index": 0}\n'
    out.write_line('{"index": 1}')
    out.write_line('{"index": 2}')
    assert path.read_text().splitlines() == ['{"index": 0}', '{"index": 1}', '{"index": 2}']  # visible before close
    out.close()
