"""Aff-Wild2 annotations in every published layout → per (task, track) label arrays.

Layouts accepted (SPEC §1):
- uni-task folders, 2020/2021:
  ``{VA_Set,EXPR_Set,AU_Set}/{Training_Set|Train_Set,Validation_Set}/<track>.txt``
- uni-task folders, 2022+: ``{VA_Estimation_Challenge,EXPR_Classification_Challenge|
  EXPR_Recognition_Challenge,AU_Detection_Challenge}/{Train_Set,Validation_Set}/<track>.txt``
- the multi-task (s-Aff-Wild2) files ``training_set_annotations.txt`` / ``validation_set_annotations.txt``.

A *track* is a video name, or ``<video>_left`` / ``<video>_right`` for two-person videos. Line 1 of a
per-track file is the header; line k+1 is the label of frame k (1-based, like ``%05d.jpg``).
Invalid markers: VA −5, EXPR −1, AU −1. Everything is returned as numpy arrays plus a boolean
validity mask so callers never compare against sentinels themselves.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np

from tasks import (
    AU_NAMES_8,
    AU_NAMES_12,
    EXPR_NAMES_7,
    EXPR_NAMES_8,
    SPLITS,
    TASKS,
    TRAIN_SPLIT,
    VA_NAMES,
    VAL_SPLIT,
    TrackLabels,
    canonical_split,
)
from utils.paths import safe_component, safe_image_name

log = logging.getLogger(__name__)

VA_INVALID = -5.0
EXPR_INVALID = -1
AU_INVALID = -1

# Folder spellings of every edition, task → accepted names (first = the one we write).
TASK_DIRS = {
    "VA": ("VA_Set", "VA_Estimation_Challenge"),
    "EXPR": ("EXPR_Set", "EXPR_Classification_Challenge", "EXPR_Recognition_Challenge"),
    "AU": ("AU_Set", "AU_Detection_Challenge"),
}
# Split folder spellings, canonical split → accepted names.
SPLIT_DIRS = {
    TRAIN_SPLIT: ("Train_Set", "Training_Set"),
    VAL_SPLIT: ("Validation_Set",),
}
MTL_FILES = {
    TRAIN_SPLIT: "training_set_annotations.txt",
    VAL_SPLIT: "validation_set_annotations.txt",
}
MTL_HEADER = "image,valence,arousal,expression,aus"

# A label file whose line count differs from its video's frame count by at most this many lines (or 1 % of
# the frames, for long videos) is normal: the official files differ from decoded videos by a few lines.
# A larger difference is logged as a WARNING (the file may belong to another video, or be cut short), and
# evaluate.py --pred refuses predictions that leave more labelled frames than this unscored.
LENGTH_SLACK_LINES = 10
LENGTH_SLACK_FRACTION = 0.01


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and the line."""


def task_of_header(header: str) -> tuple[str, tuple[str, ...]]:
    """Identify the task of a per-track file from its header line."""
    cols = tuple(c.strip() for c in header.strip().split(","))
    if cols == VA_NAMES:
        return "VA", cols
    if cols in (EXPR_NAMES_7, EXPR_NAMES_8):
        return "EXPR", cols
    if cols in (AU_NAMES_8, AU_NAMES_12):
        return "AU", cols
    raise ValueError(f"unrecognised header {header.strip()!r}")


def _parse_rows(lines: list[str], path: Path, n_cols: int, first_line: int) -> np.ndarray:
    """Parse comma-separated numeric rows; errors name file and 1-based line."""
    out = np.empty((len(lines), n_cols), dtype=np.float64)
    for i, line in enumerate(lines):
        parts = line.strip().split(",")
        if len(parts) != n_cols:
            raise AnnotationError(
                f"{path}:{first_line + i}: expected {n_cols} values, got {len(parts)}: {line.strip()!r}"
            )
        try:
            out[i] = [float(p) for p in parts]
        except ValueError:
            raise AnnotationError(f"{path}:{first_line + i}: non-numeric value in {line.strip()!r}") from None
    return out


def _read_lines(path: Path) -> list[str]:
    text = Path(path).read_text()
    lines = text.splitlines()
    while lines and not lines[-1].strip():  # tolerate trailing blank lines
        lines.pop()
    if not lines:
        raise AnnotationError(f"{path}:1: empty file (no header)")
    return lines


def length_tolerance(n_frames: int) -> int:
    """Lines a label file may differ from its video's frame count before it is suspicious."""
    return max(LENGTH_SLACK_LINES, int(LENGTH_SLACK_FRACTION * n_frames))


def out_of_range(task: str, names: tuple[str, ...], raw: np.ndarray) -> np.ndarray:
    """Per row of raw numbers: whether a value is neither a valid label nor the task's invalid marker."""
    raw = np.asarray(raw, dtype=np.float64)
    if task == "VA":
        bad = ~np.isfinite(raw) | ((raw != VA_INVALID) & ((raw < -1.0) | (raw > 1.0)))
    elif task == "EXPR":
        code = (raw == np.round(raw)) & (raw >= 0) & (raw < len(names))
        bad = ~(code | (raw == EXPR_INVALID))
    else:
        bad = ~np.isin(raw, (0.0, 1.0, float(AU_INVALID)))
    return bad.reshape(len(raw), -1).any(axis=1)


def warn_out_of_range(path: Path, line_numbers: list[int], lines: dict[int, str]) -> None:
    """One WARNING per file: how many lines hold out-of-range or NaN values, and the first of them."""
    if line_numbers:
        first = line_numbers[0]
        log.warning("%s:%d: %d line%s with values out of range or not a number (first: %r); read as invalid "
                    "labels", path, first, len(line_numbers), "s" * (len(line_numbers) != 1),
                    lines[first].strip())


def labels_from_array(track: str, task: str, split: str, names: tuple[str, ...], raw: np.ndarray,
                      source: str = "") -> TrackLabels:
    """Build a TrackLabels from raw numbers (sentinels included), deriving the validity mask.

    Numbers that are neither a valid label nor the invalid marker (VA 7.5, NaN, EXPR 2.5, AU 0.5) become
    the invalid marker, so no cast can turn them into a valid label (NaN → AU 0, 2.5 → class 2).
    """
    raw = np.asarray(raw, dtype=np.float64)
    if task == "VA":
        values = np.where(np.isfinite(raw), raw, VA_INVALID).reshape(-1, 2).astype(np.float32)
        valid = np.all((values >= -1.0) & (values <= 1.0), axis=1)
    elif task == "EXPR":
        flat = raw.reshape(-1)
        values = np.where(out_of_range(task, names, flat), EXPR_INVALID, flat).astype(np.int64)
        valid = (values >= 0) & (values < len(names))
    elif task == "AU":
        grid = raw.reshape(-1, len(names))
        values = np.where(np.isin(grid, (0.0, 1.0)), grid, AU_INVALID).astype(np.int8)
        valid = (values == 0) | (values == 1)
    else:
        raise ValueError(f"unknown task {task!r}")
    return TrackLabels(track, task, split, tuple(names), values, valid, source)


def read_label_file(path: str | Path, split: str = "", task: str | None = None) -> TrackLabels:
    """Read one per-track annotation file (any edition); the task comes from the header."""
    path = Path(path)
    lines = _read_lines(path)
    try:
        found, names = task_of_header(lines[0])
    except ValueError as e:
        raise AnnotationError(f"{path}:1: {e}") from None
    if task is not None and found != task:
        raise AnnotationError(f"{path}:1: header is a {found} header, expected {task}")
    raw = _parse_rows(lines[1:], path, len(names) if found != "EXPR" else 1, first_line=2)
    if found == "EXPR" and np.any(raw != np.round(raw)):
        bad = int(np.flatnonzero(raw != np.round(raw))[0])
        raise AnnotationError(f"{path}:{bad + 2}: expression code must be an integer")
    bad_lines = [int(i) + 2 for i in np.flatnonzero(out_of_range(found, names, raw))]
    warn_out_of_range(path, bad_lines, dict(enumerate(lines, start=1)))
    return labels_from_array(path.stem, found, split, names, raw, str(path))


def find_task_dirs(root: str | Path) -> dict[str, Path]:
    """Locate the per-task folders under ``root`` (itself, or its ``annotations/`` child)."""
    root = Path(root)
    found: dict[str, Path] = {}
    for base in (root, root / "annotations"):
        for task, spellings in TASK_DIRS.items():
            for name in spellings:
                if task not in found and (base / name).is_dir():
                    found[task] = base / name
    return found


def find_split_dir(task_dir: Path, split: str) -> Path | None:
    for name in SPLIT_DIRS[canonical_split(split)]:
        if (task_dir / name).is_dir():
            return task_dir / name
    return None


def read_task_split(task_dir: str | Path, task: str, split: str) -> dict[str, TrackLabels]:
    """Read every ``<track>.txt`` of one task folder and split → {track: labels}."""
    split = canonical_split(split)
    split_dir = find_split_dir(Path(task_dir), split)
    if split_dir is None:
        return {}
    out = {}
    for f in sorted(split_dir.glob("*.txt")):
        try:  # the file name is the track name, which later names files and folders of the outputs
            safe_component(f.stem, str(f))
        except ValueError as e:
            raise AnnotationError(str(e)) from None
        out[f.stem] = read_label_file(f, split=split, task=task)
    return out


def find_mtl_file(root: str | Path, split: str) -> Path | None:
    root = Path(root)
    name = MTL_FILES[canonical_split(split)]
    for base in (root, root / "annotations"):
        if (base / name).is_file():
            return base / name
    return None


def frame_number(image: str, path: Path, line_no: int) -> tuple[str, int]:
    """``video/00001.jpg`` → (``video``, 1); the track must be a plain name (it becomes a path component)."""
    try:
        track, frame = safe_image_name(image.strip())
    except ValueError as e:
        raise AnnotationError(f"{path}:{line_no}: bad image name: {e}") from None
    if frame < 1:
        raise AnnotationError(f"{path}:{line_no}: bad image name {image.strip()!r}: frames are numbered from 1")
    return track, frame


def read_mtl_file(path: str | Path, split: str = "") -> dict[str, dict[str, TrackLabels]]:
    """Read an s-Aff-Wild2 multi-task file → {task: {track: labels}}.

    Rows name individual images, so each track's arrays run from frame 1 to its largest listed frame;
    frames not listed are invalid in every task.
    """
    path = Path(path)
    lines = _read_lines(path)
    if lines[0].strip().replace(" ", "") != MTL_HEADER:
        raise AnnotationError(f"{path}:1: expected header {MTL_HEADER!r}, got {lines[0].strip()!r}")
    rows: dict[str, list[tuple[int, np.ndarray]]] = {}
    n_cols = 2 + 1 + len(AU_NAMES_12)
    table = _parse_rows([line.partition(",")[2] for line in lines[1:]], path, n_cols, first_line=2)
    for i, line in enumerate(lines[1:], start=2):
        track, frame = frame_number(line.partition(",")[0], path, i)
        rows.setdefault(track, []).append((frame, table[i - 2]))
    bad = (out_of_range("VA", VA_NAMES, table[:, 0:2]) | out_of_range("EXPR", EXPR_NAMES_8, table[:, 2])
           | out_of_range("AU", AU_NAMES_12, table[:, 3:]))
    warn_out_of_range(path, [int(i) + 2 for i in np.flatnonzero(bad)], dict(enumerate(lines, start=1)))
    out: dict[str, dict[str, TrackLabels]] = {t: {} for t in TASKS}
    for track, items in rows.items():
        n = max(f for f, _ in items)
        raw = np.tile(np.array([VA_INVALID, VA_INVALID, EXPR_INVALID] + [AU_INVALID] * 12, float), (n, 1))
        for frame, vals in items:
            raw[frame - 1] = vals
        src = str(path)
        out["VA"][track] = labels_from_array(track, "VA", split, VA_NAMES, raw[:, 0:2], src)
        out["EXPR"][track] = labels_from_array(track, "EXPR", split, EXPR_NAMES_8, raw[:, 2], src)
        out["AU"][track] = labels_from_array(track, "AU", split, AU_NAMES_12, raw[:, 3:], src)
    return out


def read_annotations(root: str | Path, splits: tuple[str, ...] = SPLITS,
                     tasks: tuple[str, ...] = TASKS) -> dict[str, dict[str, TrackLabels]]:
    """Read every task and split found under ``root`` → {task: {track: labels}}.

    Uni-task folders win; the multi-task file is read when no uni-task folder exists for a task.
    A track listed in two splits of the same task is an error (the data would leak).
    """
    root = Path(root)
    task_dirs = find_task_dirs(root)
    out: dict[str, dict[str, TrackLabels]] = {t: {} for t in tasks}
    for split in splits:
        split = canonical_split(split)
        mtl = None
        for task in tasks:
            if task in task_dirs:
                part = read_task_split(task_dirs[task], task, split)
            else:
                if mtl is None:
                    f = find_mtl_file(root, split)
                    mtl = read_mtl_file(f, split) if f else {t: {} for t in TASKS}
                part = mtl[task]
            for track, labels in part.items():
                if track in out[task]:
                    raise AnnotationError(
                        f"{labels.source}:1: {task} track {track} also in {out[task][track].source}"
                    )
                out[task][track] = labels
    if not any(out.values()) and not task_dirs and find_mtl_file(root, splits[0]) is None:
        raise AnnotationError(f"{root}: no annotation folders (VA_Set, EXPR_Set, AU_Set or 2022+ names) "
                              "and no multi-task annotation file found")
    return out


def invalid_row(task: str, names: tuple[str, ...]) -> np.ndarray:
    """One row of sentinels for padding."""
    if task == "VA":
        return np.full(2, VA_INVALID, np.float32)
    if task == "EXPR":
        return np.array(EXPR_INVALID, np.int64)
    return np.full(len(names), AU_INVALID, np.int8)


def from_image_list(labels: TrackLabels) -> bool:
    """Whether ``labels`` come from a multi-task file, which lists images rather than every frame."""
    return Path(labels.source).name in MTL_FILES.values()


def fit_length(labels: TrackLabels, n_frames: int) -> TrackLabels:
    """Pad with invalid rows or truncate so there is exactly one label per decoded frame; logs it.

    INFO for a difference within ``length_tolerance`` (normal), WARNING beyond it. Labels of a multi-task
    file end at the track's last listed image, so ending well before the video is normal there (INFO).
    """
    n = len(labels)
    if n == n_frames:
        return labels
    action = "padding with invalid" if n < n_frames else "truncating"
    where = labels.source or labels.track
    if n < n_frames and from_image_list(labels):
        log.info("%s: %s of %s: last listed image is frame %d of %d; %s", where, labels.task, labels.track, n,
                 n_frames, action)
    elif abs(n - n_frames) > length_tolerance(n_frames):
        log.warning("%s: %s has %d label lines for %d frames (%+d, more than the %d tolerated): check that the "
                    "file belongs to this video; %s", where, labels.task, n, n_frames, n - n_frames,
                    length_tolerance(n_frames), action)
    else:
        log.info("%s: %s has %d label lines for %d frames, %s", where, labels.task, n, n_frames, action)
    return pad_or_truncate(labels, n_frames)


def pad_or_truncate(labels: TrackLabels, n_frames: int) -> TrackLabels:
    """``labels`` cut to ``n_frames`` rows or padded with invalid rows, without logging."""
    n = len(labels)
    if n == n_frames:
        return labels
    if n > n_frames:
        return replace(labels, values=labels.values[:n_frames], valid=labels.valid[:n_frames])
    pad = n_frames - n
    row = invalid_row(labels.task, labels.names)
    values = np.concatenate([labels.values, np.broadcast_to(row, (pad,) + row.shape)])
    valid = np.concatenate([labels.valid, np.zeros((pad,) + labels.valid.shape[1:], bool)])
    return replace(labels, values=values, valid=valid)


def read_video_list(path: str | Path) -> list[str]:
    """A test-set list: one video/track name per line (an optional extension is dropped), or one image
    (``track/00001.jpg``, maybe followed by ``,columns``) per line.

    Every name must be a plain one (it becomes a path component later): AnnotationError naming the line.
    """
    names = []
    for i, line in enumerate(Path(path).read_text().splitlines(), start=1):
        name = line.split(",")[0].strip()
        if not name or name.startswith("#") or (i == 1 and "," in line and "/" not in name):
            continue  # blank, comment, or a CSV header (image,valence,...)
        name = re.sub(r"\.(mp4|avi|mkv|mov)$", "", name, flags=re.I)
        try:
            if "/" in name or "\\" in name:
                safe_image_name(name)
            else:
                safe_component(name)
        except ValueError as e:
            raise AnnotationError(f"{path}:{i}: {e}") from None
        names.append(name)
    return names


def task_of_list(path: str | Path) -> str | None:
    """Task of a test-set list from words in its file name (VA/valence, EXPR/expression, AU/action);
    None (every task) otherwise, e.g. for an MTL list."""
    words = set(re.split(r"[^a-z]+", Path(path).stem.lower()))
    if "mtl" in words:
        return None
    for task, keys in (("VA", {"va", "valence", "arousal"}), ("EXPR", {"expr", "expression"}),
                       ("AU", {"au", "action"})):
        if words & keys:
            return task
    return None


def read_test_lists(paths: Iterable[str | Path]) -> dict[str, set[str]]:
    """Test-set lists → {track: tasks it is a test track of}. Lines may be track names or images
    (``track/00001.jpg``, as in the 2022+ lists); a list is for the task its file name names, else for all."""
    out: dict[str, set[str]] = {}
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p}: test-set list not found")
        task = task_of_list(p)
        for name in read_video_list(p):
            out.setdefault(name.split("/")[0], set()).update([task] if task else TASKS)
    return out
