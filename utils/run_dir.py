"""The output folder of a training run: what counts as a run, when it may be replaced, stale temp files.

A run writes ``RUN_FILES`` into its ``--output-dir``; a folder holding any of them holds a run. Starting
a new run there would silently replace its checkpoints and mix two runs in ``log.csv``, so
``output_dir_problem`` refuses unless the run continues itself (``--resume`` of a checkpoint in that
folder) or ``--overwrite`` says to replace it; ``clear_run`` then removes only those files (never
anything else in the folder). Checkpoints are written through a temporary file whose name says which
machine and process writes it (``temp_path``); ``remove_stale_temps`` deletes the ones whose process no
longer runs, left by a kill during a save.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

RUN_FILES = ("config.json", "last.pth", "best.pth", "log.csv", "tb")
CHECKPOINTS = ("last.pth", "best.pth")
# .last.pth.<host>.<pid>.tmp; the form before the host was added, .last.pth.<pid>.tmp, is ours too.
_TEMP = re.compile(r"\.(?P<name>last\.pth|best\.pth)\.(?:(?P<host>.+)\.)?(?P<pid>\d+)\.tmp")


def temp_path(path: Path) -> Path:
    """The temporary file a checkpoint ``path`` is written to before it is renamed into place."""
    return path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def existing_run_files(out: str | Path) -> list[str]:
    """The files (and tb/ folder) of a run found in ``out``, in RUN_FILES order."""
    out = Path(out)
    return [name for name in RUN_FILES if (out / name).exists()]


def checkpoint_is_inside(resume: str | Path, out: str | Path) -> bool:
    """Whether the --resume checkpoint lives in the output folder (the run continues itself)."""
    return Path(resume).resolve().parent == Path(out).resolve()


def output_dir_problem(out: str | Path, resume: str | None, overwrite: bool) -> str | None:
    """Why a run may not start in ``out`` (one line), or None.

    - no run in ``out``: start (a --resume from elsewhere continues that run here, as a new folder);
    - --resume of a checkpoint in ``out``: continue it (log.csv gets the next epochs; --overwrite would
      delete the checkpoint being resumed, so the two together are refused);
    - any other run in ``out``: refused unless --overwrite.
    """
    if Path(out).exists() and not Path(out).is_dir():
        return f"{out}: --output-dir is a file, not a folder"
    found = existing_run_files(out)
    if resume and checkpoint_is_inside(resume, out):
        if overwrite:
            return (f"{out}: --overwrite would delete the run that --resume {resume} continues; "
                    "drop --overwrite to continue it")
        return None
    if not found or overwrite:
        return None
    what = f"another run than --resume {resume}" if resume else "a training run"
    return (f"{out}: holds {what} ({', '.join(found)}); pass --resume {Path(out) / 'last.pth'} to continue "
            f"it, --overwrite to replace it, or another --output-dir")


def clear_run(out: str | Path) -> list[str]:
    """Remove the files (and tb/) of a run from ``out``; anything else there stays. Returns what went."""
    out = Path(out)
    removed = existing_run_files(out)
    for name in removed:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (another user's counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(out: str | Path) -> list[Path]:
    """Our checkpoint temp files in ``out`` whose writer is gone.

    Only this machine's (or host-less, older) names are judged: a pid means nothing on another machine
    sharing the folder, so those files are left alone. A pid that runs now keeps its file, even if the
    number was reused by an unrelated process (a file left too many beats a file deleted under a writer).
    Called before this process saves anything, so a file named with its own pid is stale too.
    """
    out = Path(out)
    if not out.is_dir():
        return []
    host = socket.gethostname()
    stale = []
    for path in sorted(out.iterdir()):
        m = _TEMP.fullmatch(path.name)
        if m is None or not path.is_file() or m.group("host") not in (None, host):
            continue
        pid = int(m.group("pid"))
        if pid == os.getpid() or not pid_alive(pid):
            stale.append(path)
    return stale


def remove_stale_temps(out: str | Path) -> list[Path]:
    """Delete ``stale_temps(out)``; returns the files removed."""
    removed = []
    for path in stale_temps(out):
        try:
            path.unlink()
        except FileNotFoundError:  # another process cleaned it first
            continue
        removed.append(path)
    return removed


def start_run_dir(out: str | Path, overwrite: bool, log) -> Path:
    """Make ``out`` ready for a run that ``output_dir_problem`` allowed (rank 0 only): with ``overwrite``
    the previous run's files go, and stale checkpoint temp files go in any case; ``log`` says what went."""
    out = Path(out)
    if overwrite:
        removed = clear_run(out)
        if removed:
            log(f"--overwrite: removed the previous run's {', '.join(removed)} from {out}")
    for path in remove_stale_temps(out):
        log(f"removed {path}, a checkpoint temp file left by a process that no longer runs")
    out.mkdir(parents=True, exist_ok=True)
    return out
