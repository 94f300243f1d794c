"""utils/run_dir.py: what counts as a run in --output-dir, when it may be replaced, stale checkpoint temp files."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from utils import run_dir


def fake_run(out: Path, *names: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name == "tb":
            (out / "tb").mkdir()
            (out / "tb" / "events.out").write_text("x")
        else:
            (out / name).write_text(name)
    return out


def dead_pid() -> int:
    """The id of a process that has ended (the OS could reuse it, but not within this test)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_any_file_a_run_writes_makes_a_run(tmp_path):
    assert run_dir.existing_run_files(tmp_path / "absent") == []
    assert run_dir.existing_run_files(fake_run(tmp_path / "a", "notes.txt")) == []
    for name in run_dir.RUN_FILES:
        assert run_dir.existing_run_files(fake_run(tmp_path / name.replace(".", "_"), name)) == [name]


def test_output_dir_decisions(tmp_path):
    empty, notes = tmp_path / "new", fake_run(tmp_path / "notes", "notes.txt")
    run = fake_run(tmp_path / "run", "config.json", "last.pth", "log.csv")
    other = fake_run(tmp_path / "other", "last.pth")
    problem = run_dir.output_dir_problem
    assert problem(empty, None, False) is None and problem(notes, None, False) is None
    refused = problem(run, None, False)
    assert refused == (f"{run}: holds a training run (config.json, last.pth, log.csv); pass --resume "
                       f"{run / 'last.pth'} to continue it, --overwrite to replace it, or another --output-dir")
    assert problem(run, None, True) is None
    assert problem(run, str(run / "last.pth"), False) is None  # the run continues itself
    assert problem(tmp_path / "run" / ".." / "run", str(run / "last.pth"), False) is None
    assert "--overwrite would delete the run that --resume" in problem(run, str(run / "last.pth"), True)
    assert problem(empty, str(other / "last.pth"), False) is None  # another run continued in a new folder
    assert f"holds another run than --resume {other / 'last.pth'}" in problem(run, str(other / "last.pth"), False)
    assert problem(run, str(other / "last.pth"), True) is None
    (tmp_path / "file").write_text("x")
    assert "is a file, not a folder" in problem(tmp_path / "file", None, False)


def test_clear_run_removes_only_the_run(tmp_path):
    out = fake_run(tmp_path / "run", *run_dir.RUN_FILES, "notes.txt", "best.pth.bak")
    assert run_dir.clear_run(out) == list(run_dir.RUN_FILES)
    assert sorted(p.name for p in out.iterdir()) == ["best.pth.bak", "notes.txt"]


def test_stale_temp_files_of_dead_writers_go_live_and_foreign_ones_stay(tmp_path):
    host, dead, live = socket.gethostname(), dead_pid(), os.getppid()
    names = {
        f".last.pth.{host}.{dead}.tmp": True,  # killed during a save
        f".best.pth.{dead}.tmp": True,  # the name before the host was added
        f".last.pth.{host}.{os.getpid()}.tmp": True,  # this process has not saved yet
        f".last.pth.{host}.{live}.tmp": False,  # a live process may be writing it
        f".last.pth.other-host.{dead}.tmp": False,  # a pid of another machine says nothing here
        f".notes.txt.{dead}.tmp": False,  # not ours
        "last.pth": False,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    logged = []
    run_dir.start_run_dir(tmp_path, overwrite=False, log=logged.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, stale in names.items() if not stale)
    assert len(logged) == 3 and all("no longer runs" in m for m in logged)


def test_checkpoint_temp_names_are_recognised(tmp_path):
    tmp = run_dir.temp_path(tmp_path / "last.pth")
    assert tmp.parent == tmp_path and tmp.name.startswith(".last.pth.") and str(os.getpid()) in tmp.name
    tmp.write_bytes(b"x")
    assert run_dir.stale_temps(tmp_path) == [tmp]  # its own pid before any save: stale


@pytest.mark.parametrize("pid,alive", [(0, False), (-3, False)])
def test_pid_alive_edge_cases(pid, alive):
    assert run_dir.pid_alive(pid) is alive
    assert run_dir.pid_alive(os.getpid())
