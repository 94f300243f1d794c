"""One writer per database: a build or a merge holds an exclusive lock on ``<DB>/build.lock``.

Two builds on the same ``--out`` would both decide that the same videos are still to do and both
rebuild them. The lock is a ``fcntl.flock`` on a file in the database folder, so the kernel releases it
when its holder ends in any way (even SIGKILL): a killed build never leaves a stale lock behind, and
the file itself is left in place (deleting it would let a third build lock a new file while the second
still holds the old one). Readers (training, inference, ``--report``) do not take it: LMDB lets them
read while a build writes.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = "build.lock"


class DatabaseBusyError(RuntimeError):
    """Another process is writing the database (one line naming the database and that process)."""


def _holder(path: Path) -> str:
    """Who holds the lock, as its holder wrote it (' (pid N, a build)'), or '' when unreadable."""
    try:
        words = path.read_text().split()
    except OSError:
        return ""
    if len(words) != 2 or not words[0].isdigit():
        return ""
    return f" (pid {words[0]}, a {words[1]})"


@contextmanager
def build_lock(db_path: str | Path, what: str = "build") -> Iterator[Path]:
    """Hold the database's build lock for the duration of the block; refuse at once when it is taken.

    Creates the database folder when needed (the lock lives in it). ``what`` names this run in the
    holder's file ('build', 'merge').
    """
    folder = Path(db_path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder}: exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DatabaseBusyError(f"{folder}: another build or merge is writing this database{_holder(path)} "
                                    f"(it holds {path}); wait for it to end or use another --out") from None
        try:  # who holds it, for the refusal message of the next one (a full disk must not stop the build here)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n{what}\n".encode())
        except OSError:
            pass
        yield path
    finally:
        os.close(fd)  # releases the lock
