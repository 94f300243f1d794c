"""Checking a submission: every format problem against the tracks and frames it must cover."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from app.submission.formats import (
    SET_DIRS,
    Problem,
    plain_track,
    scan_per_video_file,
    scan_single_file,
    set_dirs,
)
from tasks import TASKS, Edition


def frame_set(expected: int | Iterable[int]) -> set[int]:
    """Expected frames of a track: a count means frames 1..n, else the listed frame numbers."""
    if isinstance(expected, (int, np.integer)):
        return set(range(1, int(expected) + 1))
    return {int(f) for f in expected}


def frame_count(expected: int | Iterable[int]) -> int:
    return int(expected) if isinstance(expected, (int, np.integer)) else max(frame_set(expected), default=0)


def check_submission(path: str | Path, edition: str | Edition,
                     expected: dict[str, dict[str, int | Iterable[int]]]) -> list[Problem]:
    """Every format problem of a submission; ``expected`` = {task: {track: frame count or frame numbers}}."""
    path = Path(path)
    if path.is_dir():
        return check_folder(path, edition, expected)
    if path.is_file():
        return check_single_file(path, expected)
    return [Problem(str(path), 0, "no such file or folder")]


def check_folder(root: Path, edition: str | Edition, expected: dict) -> list[Problem]:
    problems = []
    dirs = set_dirs(root)
    for entry in sorted(root.iterdir()):
        task = next((t for t, d in dirs.items() if d == entry), None)
        if task is None:
            allowed = ", ".join(SET_DIRS.values())
            problems.append(Problem(str(entry), 0, f"unexpected entry (expected only {allowed})"))
        elif task not in expected:
            problems.append(Problem(str(entry), 0, f"unexpected folder: no {task} tracks are expected"))
    for task in expected:
        if task not in dirs:
            problems.append(Problem(str(root / SET_DIRS[task]), 0,
                                    f"missing folder ({len(expected[task])} {task} tracks expected)"))
        else:
            problems += check_task_folder(dirs[task], task, edition, expected[task])
    return problems


def check_task_folder(folder: Path, task: str, edition: str | Edition, want: dict) -> list[Problem]:
    problems = []
    for f in sorted(folder.iterdir()):
        if not (f.is_file() and f.suffix == ".txt" and f.stem in want):
            hint = "; track names carry no video extension" if re.search(r"\.(mp4|avi)\.txt$", f.name) else ""
            problems.append(Problem(str(f), 0, f"unexpected file{hint}"))
    for track in sorted(want):
        f = folder / f"{plain_track(track, 'expected track')}.txt"
        n = frame_count(want[track])
        if not f.is_file():
            problems.append(Problem(str(f), 0, f"missing ({n} frames expected)"))
            continue
        scan = scan_per_video_file(f, task, edition)
        problems += scan.problems
        got = len(scan.row_lines)
        if got < n and (got or scan.n_lines):
            problems.append(Problem(str(f), scan.n_lines + 1, f"{got} frame lines, expected {n} "
                                    f"(one per frame): {n - got} missing at the end"))
        elif got > n:
            problems.append(Problem(str(f), scan.row_lines[n], f"{got} frame lines, expected {n}: "
                                    f"this line and the {got - n - 1} after it are extra"))
    return problems


def expected_rows(kind: str, expected: dict) -> dict[str, set[int]] | None:
    """Rows a single file of ``kind`` must hold: {track: frames}, the union over its tasks."""
    tasks = [t for t in (TASKS if kind == "MTL" else (kind,)) if t in expected]
    if not tasks:
        return None
    out: dict[str, set[int]] = {}
    for task in tasks:
        for track, frames in expected[task].items():
            out.setdefault(track, set()).update(frame_set(frames))
    return out


def check_single_file(path: Path, expected: dict) -> list[Problem]:
    scan = scan_single_file(path)
    problems = scan.problems
    if not scan.kind:
        return problems
    want = expected_rows(scan.kind, expected)
    if want is None:
        return problems + [Problem(str(path), 1, f"a {scan.kind} submission, "
                                   f"but no {scan.kind} tracks are expected")]
    for track, frames in sorted(scan.rows.items()):
        if track not in want:
            first = min(line for line, _ in frames.values())
            problems.append(Problem(str(path), first, f"unexpected track {track} ({len(frames)} rows)"))
            continue
        extra = sorted(set(frames) - want[track])
        if extra:
            line = min(frames[f][0] for f in extra)
            problems.append(Problem(str(path), line, f"{len(extra)} rows of track {track} are not "
                                    f"expected frames (first {track}/{extra[0]:05d}.jpg; "
                                    f"{len(want[track])} rows expected)"))
    for track, frames in sorted(want.items()):
        got = scan.rows.get(track, {})
        missing = sorted(frames - set(got))
        if not got:
            problems.append(Problem(str(path), 0, f"missing track {track} ({len(frames)} rows expected)"))
        elif missing:
            problems.append(Problem(str(path), 0, f"track {track}: {len(missing)} expected rows missing "
                                    f"(first {track}/{missing[0]:05d}.jpg)"))
    return problems
