"""utils.output_set: a run's files replace only their own kind, together, and only once complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.output_set import MANIFEST, OutputSet, OutputSetError, stale_staging

FAMILY = ["submission", "raw", "scores.json"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def old_output(out: Path) -> None:
    (out / "submission").mkdir(parents=True)
    (out / "submission" / "a.txt").write_text("old")
    (out / "raw").mkdir()
    (out / "raw" / "a.npz").write_text("old")
    (out / "scores.json").write_text("old")
    (out / "notes.txt").write_text("mine")
    (out / "db").mkdir()
    (out / "db" / "data.mdb").write_text("db")


def test_publish_replaces_the_family_and_nothing_else(tmp_path):
    out = tmp_path / "W"
    old_output(out)
    outputs = OutputSet(out, "split", FAMILY, {"--db": out / "db"})
    with outputs as staging:
        (staging / "submission").mkdir()
        (staging / "submission" / "b.txt").write_text("new")
        outputs.publish(["submission"])  # no raw/ and no scores.json this time
    assert sorted(p.name for p in out.iterdir()) == ["db", "notes.txt", "submission"]
    assert [p.name for p in (out / "submission").iterdir()] == ["b.txt"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "db" / "data.mdb").read_text() == "db"


def test_a_failure_before_publish_changes_nothing(tmp_path):
    out = tmp_path / "W"
    old_output(out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    with pytest.raises(RuntimeError), OutputSet(out, "split", FAMILY, {}) as staging:
        (staging / "scores.json").write_text("new")
        raise RuntimeError("scoring failed")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    assert (out / "scores.json").read_text() == "old"
    fresh = tmp_path / "new"
    with pytest.raises(RuntimeError), OutputSet(fresh, "split", FAMILY, {}):
        raise RuntimeError("boom")
    assert not fresh.exists()  # a folder this run created is not left behind empty


@pytest.mark.parametrize("inside", ["raw", "raw/db", "scores.json"])
def test_a_user_path_inside_a_member_is_refused(tmp_path, inside):
    out = tmp_path / "W"
    with pytest.raises(OutputSetError, match=r"--db .* is inside .*, which this run replaces"):
        OutputSet(out, "split", FAMILY, {"--db": out / inside})
    OutputSet(out, "split", FAMILY, {"--db": out / "db", "--out": out})  # elsewhere in --out: fine


def test_stale_staging_is_removed_or_completed_at_start(tmp_path):
    out = tmp_path / "W"
    old_output(out)
    pid = dead_pid()
    killed_early = out / f".split.partial-{pid}-aaaa1111"  # killed before its manifest: discarded
    (killed_early / "submission").mkdir(parents=True)
    killed_moving = out / f".split.partial-{pid}-bbbb2222"  # killed while moving: completed
    killed_moving.mkdir()
    (killed_moving / "scores.json").write_text("interrupted")
    (killed_moving / MANIFEST).write_text(json.dumps({"written": ["submission", "scores.json"], "family": FAMILY}))
    holds_db = out / f".split.partial-{pid}-cccc3333"  # holds the user's database: never removed
    (holds_db / "db").mkdir(parents=True)
    alive = out / f".split.partial-{os.getppid()}-dddd4444"  # another run still working
    alive.mkdir()
    other_tag = out / f".x.video.partial-{pid}-eeee5555"
    other_tag.mkdir()
    assert stale_staging(out, "split") == [killed_early, killed_moving, holds_db]
    outputs = OutputSet(out, "split", FAMILY, {"--db": holds_db / "db"})
    with outputs as staging:
        assert not killed_early.exists() and not killed_moving.exists()
        assert (out / "scores.json").read_text() == "interrupted"  # the interrupted set was completed ...
        assert (out / "submission" / "a.txt").exists() and not (out / "raw").exists()  # ... as it was written
        assert holds_db.exists() and alive.exists() and other_tag.exists()
        (staging / "raw").mkdir()
        outputs.publish(["raw"])
    assert not (out / "submission").exists() and (out / "raw").is_dir()


def test_legacy_temp_files_are_removed(tmp_path):
    out = tmp_path / "W"
    out.mkdir()
    (out / ".v.csv.partial").write_text("half")
    sibling = tmp_path / ".W.partial"
    (sibling / "submission").mkdir(parents=True)
    with OutputSet(out, "v.video", ["v.csv"], {}, legacy=[out / ".v.csv.partial", sibling]) as staging:
        (staging / "v.csv").write_text("x")
    assert not (out / ".v.csv.partial").exists() and not sibling.exists()
