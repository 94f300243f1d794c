"""utils/atomic.py: a file appears whole or not at all; a failed writer leaves the old file and no temp file."""

import json
import math

import numpy as np
import pytest

from utils import atomic
from utils.metrics import write_json as write_scores


def test_text_bytes_and_json_replace_the_file_and_leave_nothing_else(tmp_path):
    path = tmp_path / "new" / "a.json"  # the folder is created
    atomic.write_json(path, {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]} and path.read_text().endswith("}\n")
    atomic.write_text(path, "line\r\n")
    assert path.read_bytes() == b"line\r\n"  # as given: no newline translation
    atomic.write_bytes(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]


def test_a_failing_writer_keeps_the_old_file_and_removes_its_temp(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("old\n")
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert path.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_the_temp_is_hidden_beside_the_target_with_its_suffix(tmp_path):
    path = tmp_path / "raw.npz"
    with atomic.atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".raw.partial-") and tmp.suffix == ".npz"
        assert not path.exists()
        np.savez(tmp, x=np.arange(3))  # np.savez would append .npz to a name without it
    assert np.load(path)["x"].tolist() == [0, 1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["raw.npz"]


def test_a_given_temp_path_and_fsync(tmp_path):
    path, temp = tmp_path / "last.pth", tmp_path / ".last.pth.host.1.tmp"
    with atomic.atomic_path(path, temp=temp, fsync=True) as tmp:
        assert tmp == temp
        tmp.write_bytes(b"weights")
    assert path.read_bytes() == b"weights" and not temp.exists()


def test_scores_json_is_written_atomically_with_nan_as_null(tmp_path, monkeypatch):
    path = tmp_path / "scores.json"
    write_scores({"va": {"score": math.nan}, "total": 0.5}, path)
    assert json.loads(path.read_text()) == {"va": {"score": None}, "total": 0.5}

    def killed_before_the_rename(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "replace", killed_before_the_rename)
    with pytest.raises(KeyboardInterrupt):
        write_scores({"total": 1.0}, path)
    assert json.loads(path.read_text())["total"] == 0.5  # a plain write would have replaced it already
    assert [p.name for p in tmp_path.iterdir()] == ["scores.json"]
