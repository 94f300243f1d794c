"""A run's output files as one set: staged inside the output folder, then moved into place together.

The output folder may hold anything else (notes, the database itself): a run replaces only its own
members (``submission/``, ``raw/``, ``scores.json``; or a video's ``<name>.csv``, ``_timeline.png``, ...)
and only once all of them are complete. A member of the family that this run did not write (``raw/`` after
``--no-raw``, the overlay of an earlier run) is removed with the others, so the folder never shows files
of two runs side by side.

Staging folder: ``<out>/.<tag>.partial-<pid>-<random>``. Publishing writes a manifest into it, then moves
the members one by one (the replaced ones into the staging folder), then deletes it. A run killed before
the manifest leaves only its staging folder; one killed during the moves leaves the manifest. At its
start every run removes the staging folders of its tag whose process is gone, and finishes the moves of
those that have a manifest, so the next run always starts from one complete set. A staging folder that
holds a path the user gave (the database, a checkpoint) is never removed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from utils.atomic import write_json
from utils.run_dir import pid_alive

log = logging.getLogger(__name__)

MANIFEST = ".manifest.json"
REPLACED = ".replaced"
_STAGING = re.compile(r"\.(?P<tag>.+)\.partial-(?P<pid>\d+)-[a-z0-9_]+")


class OutputSetError(ValueError):
    """A run that would replace or delete a path the user gave (one line naming both)."""


def is_within(path: Path, folder: Path) -> bool:
    """True when ``path`` (symlinks followed) is ``folder`` or lies inside it.

    ``folder`` is taken as a name: when it is a symlink, the link itself is meant (removing a link
    leaves what it points to), so its last component is not followed.
    """
    p, f = Path(path).resolve(), Path(folder).parent.resolve() / Path(folder).name
    return p == f or f in p.parents


def check_apart(user_paths: Mapping[str, str | Path], replaced: Iterable[Path]) -> None:
    """OutputSetError if a user path is, or lies inside, a path this run replaces or deletes."""
    for target in replaced:
        for flag, p in user_paths.items():
            if p is not None and is_within(Path(p), target):
                raise OutputSetError(f"{flag} {p} is inside {target}, which this run replaces: "
                                     "choose another --out")


def alive_elsewhere(pid: int) -> bool:
    """Whether another process with this id runs (an earlier run of this very process cleaned up or died)."""
    return pid != os.getpid() and pid_alive(pid)


def stale_staging(out: Path, tag: str) -> list[Path]:
    """Staging folders of ``tag`` in ``out`` whose process is gone."""
    found = []
    for entry in out.iterdir() if out.is_dir() else ():
        m = _STAGING.fullmatch(entry.name)
        if m and m["tag"] == tag and entry.is_dir() and not entry.is_symlink() and not alive_elsewhere(int(m["pid"])):
            found.append(entry)
    return sorted(found)


def move_members(staging: Path, out: Path, written: list[str], family: list[str]) -> None:
    """Put the written members in place and take the rest of the family away (repeatable after a kill)."""
    trash = staging / REPLACED
    trash.mkdir(exist_ok=True)
    for name in family:
        new, dest = staging / name, out / name
        if name in written and not os.path.lexists(new):
            continue  # moved in already (a kill came later)
        if os.path.lexists(dest):
            if os.path.lexists(trash / name):
                remove(trash / name)
            os.rename(dest, trash / name)
        if name in written:
            os.rename(new, dest)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def finish_or_remove(staging: Path, out: Path, keep: Mapping[str, str | Path]) -> None:
    """A dead run's staging folder: complete its moves when it has a manifest, then remove it."""
    held = [f"{flag} {p}" for flag, p in keep.items() if p is not None and is_within(Path(p), staging)]
    if held:
        log.warning("%s: left alone, it holds %s", staging, ", ".join(held))
        return
    manifest = staging / MANIFEST
    if manifest.is_file():
        done = json.loads(manifest.read_text())
        move_members(staging, out, done["written"], done["family"])
        log.warning("%s: an interrupted run's output set completed", out)
    shutil.rmtree(staging)


class OutputSet:
    """``with OutputSet(out, tag, family, user_paths) as staging: ... write there ...; outputs.publish(names)``.

    Leaving the block without ``publish`` (an error) removes the staging folder and leaves ``out`` as it
    was (and removes ``out`` itself when this run created it and it is empty).
    """

    def __init__(self, out: str | Path, tag: str, family: list[str], user_paths: Mapping[str, str | Path],
                 legacy: Iterable[Path] = ()):
        self.out, self.tag, self.family = Path(out), tag, list(family)
        self.user_paths = dict(user_paths)
        self.legacy = list(legacy)  # temp files of older versions of this code, removed at start
        check_apart(self.user_paths, [self.out / name for name in self.family])
        self.staging: Path | None = None
        self.created = False

    def __enter__(self) -> Path:
        self.created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        for old in stale_staging(self.out, self.tag):
            finish_or_remove(old, self.out, self.user_paths)
        for old in self.legacy:
            if os.path.lexists(old) and not any(is_within(Path(p), old) for p in self.user_paths.values() if p):
                remove(old)
        self.staging = Path(tempfile.mkdtemp(dir=self.out, prefix=f".{self.tag}.partial-{os.getpid()}-"))
        check_apart(self.user_paths, [self.staging])
        return self.staging

    def publish(self, written: list[str]) -> None:
        """Move the ``written`` members in (each must exist in the staging folder) and drop the rest."""
        assert self.staging is not None, "publish outside the with block"
        unknown = [n for n in written if n not in self.family]
        if unknown:
            raise ValueError(f"not members of the output set: {unknown}")
        # from here on, a kill is completed by the next run
        write_json(self.staging / MANIFEST, {"written": written, "family": self.family}, indent=None)
        move_members(self.staging, self.out, written, self.family)
        shutil.rmtree(self.staging)
        self.staging = None

    def __exit__(self, *exc) -> None:
        if self.staging is None:
            return
        if (self.staging / MANIFEST).is_file():
            return  # failed while moving: the next run completes the set
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging = None
        if self.created:
            try:
                self.out.rmdir()
            except OSError:
                pass  # not empty: something else was written there meanwhile
