"""Reading a submission: its kind (per-video folder, 2023+ per-task file, MTL file), tasks and values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.submission.formats import (
    SET_DIRS,
    Problem,
    SubmissionError,
    per_video_names,
    raise_first,
    read_lines,
    scan_per_video_file,
    scan_single_file,
    set_dirs,
    single_file_kind,
    single_file_parts,
)
from data.annotations import AU_INVALID, EXPR_INVALID, VA_INVALID, TrackLabels, labels_from_array
from tasks import AU_NAMES_12, TASKS, Edition


def submission_kind(path: str | Path) -> str:
    """'per_video' for a folder, else the single-file kind from the header ('VA'|'EXPR'|'AU'|'MTL')."""
    path = Path(path)
    if path.is_dir():
        return "per_video"
    problems: list[Problem] = []
    lines = read_lines(path, problems) if path.is_file() else None
    if lines is None:
        raise SubmissionError(str(problems[0]) if problems else f"{path}: no such file or folder")
    kind = single_file_kind(lines[0])
    if kind is None:
        raise SubmissionError(f"{path}:1: unrecognised header {lines[0].strip()!r}")
    return kind


def read_predictions(path: str | Path, edition: str | Edition) -> dict[str, dict[str, TrackLabels]]:
    """Read a submission (folder of per-video files, 2023+ per-task file, or MTL file).

    → {task: {track: TrackLabels}}. For single files each track runs from frame 1 to its largest listed
    frame; frames not listed are invalid. Raises SubmissionError on any format problem.
    """
    path = Path(path)
    if submission_kind(path) == "per_video":
        return read_per_video_folder(path, edition)
    return read_single_file(path)


def read_per_video_folder(root: Path, edition: str | Edition) -> dict[str, dict[str, TrackLabels]]:
    dirs = set_dirs(root)
    if not dirs:
        raise SubmissionError(f"{root}: no {', '.join(SET_DIRS.values())} folder (or 2022+ spellings)")
    out: dict[str, dict[str, TrackLabels]] = {}
    for task, folder in dirs.items():
        names = per_video_names(task, edition)
        out[task] = {}
        for f in sorted(folder.glob("*.txt")):
            scan = scan_per_video_file(f, task, edition)
            raise_first(scan.problems)
            out[task][f.stem] = labels_from_array(f.stem, task, "", names, scan.values, str(f))
    return out


def read_single_file(path: Path) -> dict[str, dict[str, TrackLabels]]:
    scan = scan_single_file(path)
    raise_first(scan.problems)
    sentinel = {"VA": [VA_INVALID] * 2, "EXPR": [EXPR_INVALID], "AU": [AU_INVALID] * len(AU_NAMES_12)}
    parts = single_file_parts(scan.kind)
    blank = [v for task, _ in parts for v in sentinel[task]]
    out: dict[str, dict[str, TrackLabels]] = {task: {} for task, _ in parts}
    for track, frames in scan.rows.items():
        raw = np.tile(np.array(blank, float), (max(frames), 1))
        for frame, (_, values) in frames.items():
            raw[frame - 1] = values
        start = 0
        for task, names in parts:
            width = len(sentinel[task])
            block = raw[:, start:start + width]
            out[task][track] = labels_from_array(track, task, "", names, block, str(path))
            start += width
    return out


def submission_kind_or_none(path: str | Path) -> str | None:
    try:
        return submission_kind(path)
    except SubmissionError:
        return None  # the checker reports why


def submission_tasks(path: str | Path) -> tuple[str, ...]:
    """Tasks a submission holds (all three when it holds none or is unreadable: the checker says why)."""
    kind = submission_kind_or_none(path)
    if kind == "per_video":
        return tuple(t for t in TASKS if t in set_dirs(Path(path))) or TASKS
    return TASKS if kind in ("MTL", None) else (kind,)
