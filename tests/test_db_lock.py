"""One writer per database (data/db_lock.py) and a full disk reported as such (data/store.py), through
create_database.py: a second build or merge refuses with one line, a full disk says "no space left" with the
path, and the build resumes to the same bytes once there is space."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest

import create_database
from data import store
from data.db_lock import LOCK_NAME, DatabaseBusyError, build_lock

REPO = Path(__file__).resolve().parents[1]
VIDEO = "video2"


def cli(*args) -> int:
    return create_database.main([str(a) for a in args])


@pytest.fixture(scope="module")
def one_video(mini_quick, tmp_path_factory) -> Path:
    """A videos folder with one generator video (symlinked)."""
    meta = json.loads((mini_quick / "meta.json").read_text())
    folder = tmp_path_factory.mktemp("one") / "videos"
    folder.mkdir()
    path = next(v["path"] for v in meta["videos"] if v["name"] == VIDEO)
    (folder / Path(path).name).symlink_to(mini_quick / path)
    return folder


def build_args(videos: Path, out: Path, *extra) -> list:
    return ["--videos", videos, "--annotations", "", "--out", out, "--workers", 1, "--limit-frames", 24, *extra]


def shas(db_path: Path) -> dict[str, str]:
    with store.Store(db_path) as db:
        return {v: db.video_meta(v)["sha256"] for v in db.video_names()}


def test_a_second_build_or_merge_refuses_while_one_holds_the_lock(one_video, tmp_path, capsys):
    out = tmp_path / "db"
    with build_lock(out):
        assert cli(*build_args(one_video, out)) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(out) in err and "another build" in err
        assert str(out / LOCK_NAME) in err and "pid" in err
        assert not (out / "data.mdb").exists()  # refused before opening the database
        with store.Store(tmp_path / "shard", readonly=False) as shard:
            shard.write_schema([])
        assert cli("--out", out, "--merge", tmp_path / "shard") == 2
        assert str(out) in capsys.readouterr().err
    assert cli(*build_args(one_video, out)) == 0  # released at the end of the block


def test_the_lock_is_held_across_processes_and_released_when_its_holder_dies(tmp_path):
    out = tmp_path / "db"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from data.db_lock import build_lock\n"
                               f"with build_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DatabaseBusyError, match=f"{out}.*pid {holder.pid}, a build"):
            with build_lock(out):
                pass
    finally:
        holder.kill()  # SIGKILL: the kernel releases a flock with its holder
        holder.wait()
    with build_lock(out, "merge") as path:
        assert path.read_text().split() == [str(__import__("os").getpid()), "merge"]


class _FailingTxn:
    def __enter__(self):
        return self

    def put(self, *a):
        return True

    def delete(self, *a):
        return True

    def __exit__(self, *exc):
        raise lmdb.Error("mdb_txn_commit: Input/output error")


class _FailingEnv:
    """What LMDB does on a full disk: the commit fails with EIO."""

    def begin(self, write=False, **kw):
        return _FailingTxn()


def test_a_failed_commit_on_a_full_disk_says_no_space_left(tmp_path, monkeypatch):
    with store.Store(tmp_path / "db", readonly=False) as db:
        real = db.env
        db.env = _FailingEnv()
        try:
            monkeypatch.setattr(store, "free_bytes", lambda path: 4096)
            with pytest.raises(store.NoSpaceError, match=f"{tmp_path / 'db'}: no space left.*rerun the same command"):
                db.write([(b"k", b"v" * 100)])
            monkeypatch.setattr(store, "free_bytes", lambda path: 50 << 30)  # plenty of space: another I/O error
            with pytest.raises(lmdb.Error, match=f"{tmp_path / 'db'}: writing the database failed") as e:
                db.write([(b"k", b"v")])
            assert not isinstance(e.value, store.NoSpaceError)
        finally:
            db.env = real


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return r.returncode == 0


def _resize_tmpfs(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def test_a_full_disk_stops_the_build_with_one_line_and_the_rerun_resumes(one_video, mini_quick, tmp_path, capsys):
    """A real full file system (a 640 KiB tmpfs; skipped where mounting is not allowed): exit 2 with 'no space left'
    and the path; after the space grows, the same command completes with the bytes of a build on a roomy disk."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "640k"):
        pytest.skip("cannot mount a tmpfs here (not root?): test_a_failed_commit_on_a_full_disk_says_no_space_left "
                    "covers the message with a fake LMDB")
    try:
        # two videos: the first fits, the second fills the disk (chunks of 64 KB)
        videos = tmp_path / "videos"
        videos.mkdir()
        meta = json.loads((mini_quick / "meta.json").read_text())
        for v in meta["videos"]:
            if v["name"] in (VIDEO, "1-30-480x270"):
                (videos / Path(v["path"]).name).symlink_to(mini_quick / v["path"])
        args = ["--videos", videos, "--annotations", "", "--workers", 1, "--chunk-mb", 0.0625]
        assert cli(*args, "--out", disk / "db") == 2
        err = capsys.readouterr().err.strip()  # the progress bar, then the error on one line
        last = err.split("\n")[-1]
        assert last.startswith("create_database.py: error: ") and "Traceback" not in err
        assert "no space left" in last and str(disk / "db") in last and "rerun the same command" in last
        _resize_tmpfs(disk, "64m")
        assert cli(*args, "--out", disk / "db") == 0
        assert cli(*args, "--out", tmp_path / "roomy") == 0
        assert shas(disk / "db") == shas(tmp_path / "roomy") and len(shas(disk / "db")) == 2
        with store.Store(disk / "db") as db:
            assert db.keys(b"partial/") == [] and all(db.verify(v) for v in db.video_names())
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(disk)], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)
