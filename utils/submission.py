"""ABAW submission files: writers, a reader, a checker, and scoring a submission against annotations.

Layouts (SPEC §5):
- per-video files (2020–2022): ``<out>/<VA_Set|EXPR_Set|AU_Set>/<track>.txt``, header as the edition's
  annotations, then one line per video frame (VA with 3 decimals, EXPR a class code, AU 0/1 columns).
- one file per task (2023+): header ``image_location,<columns>``, rows ``<track>/00001.jpg,<values>``
  (EXPR rows hold one class code under the eight class names).
- multi-task (MTL): header ``image,valence,arousal,expression,aus``, rows
  ``<track>/00001.jpg,V,A,EXPR,<12 AUs>``.

The reader and the checker share one parser: the checker reports every problem, the reader refuses a
file with any problem (naming the first), so what gets scored is what the checker accepts.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.annotations import (
    AU_INVALID,
    EXPR_INVALID,
    MTL_FILES,
    MTL_HEADER,
    TASK_DIRS,
    VA_INVALID,
    TrackLabels,
    find_mtl_file,
    fit_length,
    labels_from_array,
    pad_or_truncate,
    read_annotations,
    read_mtl_file,
    read_video_list,
    task_of_list,
)
from tasks import AU_NAMES_12, EXPR_NAMES_8, TASKS, VA_NAMES, VAL_SPLIT, Edition, canonical_split, get_edition
from utils.atomic import atomic_path
from utils.coverage import describe_partial, partial_tracks, unpredicted
from utils.metrics import score
from utils.paths import safe_component, safe_image_name

log = logging.getLogger(__name__)

SET_DIRS = {"VA": "VA_Set", "EXPR": "EXPR_Set", "AU": "AU_Set"}  # the names we write
IMAGE_COLUMN = "image_location"
SINGLE_FILE_NAMES = {"VA": VA_NAMES, "EXPR": EXPR_NAMES_8, "AU": AU_NAMES_12}  # fixed from 2023 on
MTL_PARTS = (("VA", VA_NAMES), ("EXPR", EXPR_NAMES_8), ("AU", AU_NAMES_12))


class SubmissionError(ValueError):
    """A submission that cannot be read or scored; the message names the file (and line)."""


@dataclass(frozen=True)
class Problem:
    """One format problem; line is 1-based, 0 when it concerns the whole file."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}" if self.line else f"{self.file}: {self.message}"


# ---------------------------------------------------------------------------------------------------
# Columns and values

def per_video_names(task: str, edition: str | Edition) -> tuple[str, ...]:
    """Header columns of a per-video file of ``task`` in ``edition``."""
    ed = get_edition(edition)
    return {"VA": VA_NAMES, "EXPR": ed.expr_names, "AU": ed.au_names}[task]


def value_columns(task: str, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(column name, kind) of the values one row holds for ``task``: EXPR is a single class code."""
    if task == "EXPR":
        return [("expression", "expr")]
    return [(n, "va" if task == "VA" else "au") for n in names]


def value_error(name: str, kind: str, text: str, n_classes: int) -> str | None:
    """Why ``text`` is not a valid ``kind`` value, or None."""
    try:
        v = float(text)
    except ValueError:
        return f"{name}: non-numeric value {text.strip()!r}"
    if kind == "va" and not -1.0 <= v <= 1.0:
        return f"{name} {text.strip()} outside [-1, 1]"
    if kind == "expr" and not (v.is_integer() and 0 <= v < n_classes):
        return f"{name} {text.strip()} is not a class code 0..{n_classes - 1}"
    if kind == "au" and v not in (0.0, 1.0):
        return f"{name} {text.strip()} is not 0 or 1"
    return None


def parse_values(fields: list[str], columns: list[tuple[str, str]],
                 n_classes: int) -> tuple[list[float], str]:
    """Values of one row and a description of what is wrong with it ('' when nothing)."""
    if len(fields) != len(columns):
        return [], f"expected {len(columns)} values, got {len(fields)}"
    errors = [e for f, (name, kind) in zip(fields, columns) if (e := value_error(name, kind, f, n_classes))]
    if errors:
        return [], "; ".join(errors)
    return [float(f) for f in fields], ""


def split_header(line: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in line.strip().split(","))


def read_lines(path: Path, problems: list[Problem]) -> list[str] | None:
    """Lines of a text file without line endings; reports CRLF endings; None if there is no header."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        problems.append(Problem(str(path), 1, "not UTF-8 text"))
        return None
    except OSError as e:
        problems.append(Problem(str(path), 0, f"cannot read: {e.strerror}"))
        return None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    if not lines:
        problems.append(Problem(str(path), 1, "empty file (no header)"))
        return None
    crlf = [i for i, line in enumerate(lines, start=1) if line.endswith("\r")]
    if crlf:
        problems.append(Problem(str(path), crlf[0], f"{len(crlf)} lines end with \\r\\n; use \\n"))
    return [line.rstrip("\r") for line in lines]


def plain_track(track: str, where: str) -> str:
    """``track`` when it can name a file (utils.paths.safe_component), else SubmissionError naming ``where``."""
    try:
        return safe_component(track, where)
    except ValueError as e:
        raise SubmissionError(str(e)) from None


def track_and_frame(image: str) -> tuple[str, int]:
    """``video/00001.jpg`` → ("video", 1), the video a plain name (utils.paths); else ValueError."""
    try:
        track, frame = safe_image_name(image)
    except ValueError:
        track, frame = "", 0
    if frame < 1:
        raise ValueError(f"bad image name {image!r} (expected video/00001.jpg)")
    return track, frame


def raise_first(problems: list[Problem]) -> None:
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SubmissionError(f"{problems[0]}{more}; evaluate.py --check lists them all")


# ---------------------------------------------------------------------------------------------------
# Parsing (shared by the reader and the checker)

@dataclass
class PerVideoScan:
    values: np.ndarray  # (frames, columns), NaN rows where a line is malformed
    row_lines: list[int]  # 1-based line number of each frame row
    n_lines: int
    problems: list[Problem]


def scan_per_video_file(path: Path, task: str, edition: str | Edition) -> PerVideoScan:
    names = per_video_names(task, edition)
    columns = value_columns(task, names)
    problems: list[Problem] = []
    lines = read_lines(path, problems)
    if lines is None:
        return PerVideoScan(np.zeros((0, len(columns))), [], 0, problems)
    if split_header(lines[0]) != names:
        problems.append(Problem(str(path), 1, f"header {lines[0].strip()!r}, expected {','.join(names)!r} "
                                f"({get_edition(edition).name})"))
    rows, row_lines = [], []
    n_classes = len(get_edition(edition).expr_names)
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            problems.append(Problem(str(path), i, "blank line"))
            continue
        values, error = parse_values(line.split(","), columns, n_classes)
        if error:
            problems.append(Problem(str(path), i, error))
            values = [np.nan] * len(columns)
        rows.append(values)
        row_lines.append(i)
    return PerVideoScan(np.array(rows, float).reshape(-1, len(columns)), row_lines, len(lines), problems)


def single_file_kind(header: str) -> str | None:
    """'VA' | 'EXPR' | 'AU' for a 2023+ per-task file, 'MTL' for a multi-task file, else None."""
    cols = split_header(header)
    if ",".join(cols) == MTL_HEADER:
        return "MTL"
    if cols[0] == IMAGE_COLUMN:
        for task, names in SINGLE_FILE_NAMES.items():
            if cols[1:] == names:
                return task
    return None


def single_file_parts(kind: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The (task, names) blocks of a single-file row, in column order."""
    return MTL_PARTS if kind == "MTL" else ((kind, SINGLE_FILE_NAMES[kind]),)


@dataclass
class ImageRowScan:
    kind: str
    rows: dict[str, dict[int, tuple[int, list[float]]]]  # track → frame → (line, values or NaNs)
    problems: list[Problem]


def scan_single_file(path: Path) -> ImageRowScan:
    problems: list[Problem] = []
    lines = read_lines(path, problems)
    if lines is None:
        return ImageRowScan("", {}, problems)
    kind = single_file_kind(lines[0])
    if kind is None:
        expected = " or ".join([repr(MTL_HEADER)] + [f"'{IMAGE_COLUMN},{','.join(n)}'"
                                                     for n in SINGLE_FILE_NAMES.values()])
        problems.append(Problem(str(path), 1, f"unrecognised header {lines[0].strip()!r}; "
                                f"expected {expected}"))
        return ImageRowScan("", {}, problems)
    columns = [c for task, names in single_file_parts(kind) for c in value_columns(task, names)]
    rows: dict[str, dict[int, tuple[int, list[float]]]] = {}
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            problems.append(Problem(str(path), i, "blank line"))
            continue
        image, _, rest = line.partition(",")
        try:
            track, frame = track_and_frame(image.strip())
        except ValueError as e:
            problems.append(Problem(str(path), i, str(e)))
            continue
        values, error = parse_values(rest.split(",") if rest else [], columns, len(EXPR_NAMES_8))
        if error:
            problems.append(Problem(str(path), i, error))
            values = [np.nan] * len(columns)
        first = rows.setdefault(track, {}).get(frame)
        if first:
            problems.append(Problem(str(path), i, f"duplicate row for {image.strip()} "
                                    f"(first at line {first[0]})"))
            continue
        rows[track][frame] = (i, values)
    return ImageRowScan(kind, rows, problems)


# ---------------------------------------------------------------------------------------------------
# Reader

def set_dirs(root: Path) -> dict[str, Path]:
    """Task folders directly inside a submission folder (any edition's spelling; the first one wins)."""
    return {task: root / name for task, names in TASK_DIRS.items() for name in reversed(names)
            if (root / name).is_dir()}


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


# ---------------------------------------------------------------------------------------------------
# Writers

def value_strings(task: str, values: np.ndarray, n_classes: int, where: str) -> list[str]:
    """One text line per frame (without image column); VA clipped to [-1, 1] with 3 decimals."""
    values = np.asarray(values)
    if task == "VA":
        if values.ndim != 2 or values.shape[1] != 2 or not np.all(np.isfinite(values)):
            raise SubmissionError(f"{where}: VA predictions must be finite, shape (n, 2); got {values.shape}")
        values = np.round(np.clip(values.astype(np.float64), -1.0, 1.0), 3) + 0.0  # + 0.0: no "-0.000"
        return [f"{v:.3f},{a:.3f}" for v, a in values]
    if task == "EXPR":
        values = values.reshape(-1)
        bad = np.flatnonzero((values != np.round(values)) | (values < 0) | (values >= n_classes))
        if bad.size:
            raise SubmissionError(f"{where}: frame {bad[0] + 1}: EXPR {values[bad[0]]} is not a class "
                                  f"code 0..{n_classes - 1}")
        return [str(int(v)) for v in values]
    bad = np.argwhere((values != 0) & (values != 1))
    if bad.size:
        raise SubmissionError(f"{where}: frame {bad[0][0] + 1}: AU values must be 0 or 1")
    return [",".join("1" if x else "0" for x in row) for row in values]


def check_au_width(task: str, values: np.ndarray, names: tuple[str, ...], where: str) -> None:
    if task == "AU" and (np.ndim(values) != 2 or np.shape(values)[1] != len(names)):
        raise SubmissionError(f"{where}: AU predictions need {len(names)} columns ({','.join(names)}), "
                              f"got shape {np.shape(values)}")


def write_lines(path: Path, lines: Iterable[str]) -> None:
    with open(path, "w", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")


def write_atomic(path: str | Path, lines: Iterable[str]) -> Path:
    """Write to a hidden temporary file next to ``path``, then rename: readers never see half a file."""
    with atomic_path(path) as tmp:
        write_lines(tmp, lines)
    return Path(path)


def swap_in(new: Path, dest: Path) -> None:
    """Move the folder ``new`` to ``dest``, replacing it; ``dest`` is never seen half-written."""
    old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
    if dest.exists():
        os.rename(dest, old)
    os.rename(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def write_per_video(out_dir: str | Path, preds: dict[str, dict[str, np.ndarray]],
                    edition: str | Edition) -> Path:
    """Write ``<out_dir>/<VA_Set|EXPR_Set|AU_Set>/<track>.txt`` for {task: {track: per-frame array}}.

    Arrays: VA (n, 2) floats, EXPR (n,) class codes, AU (n, k) 0/1 in the edition's AU order. Everything
    is written in a hidden staging folder first; a new ``out_dir`` appears whole, and in an existing one
    each task folder is replaced whole.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    fresh = not out.exists()
    staging = Path(tempfile.mkdtemp(dir=out.parent if fresh else out, prefix=f".{out.name}.partial-"))
    try:
        for task, tracks in preds.items():
            names = per_video_names(task, edition)
            folder = staging / SET_DIRS[task]
            folder.mkdir()
            for track, values in tracks.items():
                where = f"{task} prediction of {track}"
                check_au_width(task, values, names, where)
                rows = value_strings(task, values, len(get_edition(edition).expr_names), where)
                write_lines(folder / f"{plain_track(track, f'{task} prediction')}.txt", [",".join(names)] + rows)
        if fresh:
            os.chmod(staging, 0o755)
            os.rename(staging, out)
        else:
            for task in preds:
                swap_in(staging / SET_DIRS[task], out / SET_DIRS[task])
            staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def image_rows(strings: dict[str, list[str]], images: dict[str, Iterable[int]] | None) -> Iterator[str]:
    """``<track>/00001.jpg,<values>`` for the listed frames (default: every frame), tracks sorted."""
    for track in sorted(strings):
        plain_track(track, "prediction")  # a comma or newline in it would corrupt the file
        if images is not None and track not in images:
            raise SubmissionError(f"{track}: predicted but absent from the image list")
        frames = range(1, len(strings[track]) + 1) if images is None else images[track]
        for frame in frames:
            if not 1 <= frame <= len(strings[track]):
                raise SubmissionError(f"{track}: frame {frame} listed, {len(strings[track])} predicted")
            yield f"{track}/{frame:05d}.jpg,{strings[track][frame - 1]}"


def write_single_file(path: str | Path, task: str, preds: dict[str, np.ndarray],
                      images: dict[str, Iterable[int]] | None = None) -> Path:
    """Write a 2023+ single-file submission of one task ({track: per-frame array}, 12 AUs, 8 classes)."""
    names = SINGLE_FILE_NAMES[task]
    strings = {}
    for track, values in preds.items():
        check_au_width(task, values, names, f"{task} prediction of {track}")
        strings[track] = value_strings(task, values, len(EXPR_NAMES_8), f"{task} prediction of {track}")
    header = f"{IMAGE_COLUMN},{','.join(names)}"
    return write_atomic(path, [header, *image_rows(strings, images)])


def write_mtl(path: str | Path, preds: dict[str, dict[str, np.ndarray]],
              images: dict[str, Iterable[int]] | None = None) -> Path:
    """Write a multi-task submission from {"VA"|"EXPR"|"AU": {track: per-frame array}} (same tracks)."""
    tracks = set(preds["VA"])
    if set(preds["EXPR"]) != tracks or set(preds["AU"]) != tracks:
        raise SubmissionError(f"{path}: an MTL submission needs VA, EXPR and AU for the same tracks")
    strings = {}
    for track in tracks:
        parts = []
        for task, names in MTL_PARTS:
            where = f"{task} prediction of {track}"
            check_au_width(task, preds[task][track], names, where)
            parts.append(value_strings(task, preds[task][track], len(EXPR_NAMES_8), where))
        if len({len(p) for p in parts}) != 1:
            raise SubmissionError(f"{path}: track {track} has different frame counts per task")
        strings[track] = [",".join(row) for row in zip(*parts)]
    return write_atomic(path, [MTL_HEADER, *image_rows(strings, images)])


# ---------------------------------------------------------------------------------------------------
# Checker

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


# ---------------------------------------------------------------------------------------------------
# Against annotations: scoring, expected tracks, video frame counts

def preview(names: list[str], n: int = 20) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def score_submission(pred_path: str | Path, annotations: str | Path, edition: str | Edition,
                     split: str = VAL_SPLIT, allow_partial: bool = False) -> dict:
    """Score a submission against the annotations of ``split`` (see utils.metrics.score for the result).

    Per-video files: each annotation track is fitted to the prediction's length (one line per frame).
    Single files: only the listed rows are scored, against the uni-task folders; an MTL file is scored
    against the multi-task annotation file with the abaw3 metrics. A submission that leaves more labelled
    frames of a track unpredicted than utils.coverage tolerates is a SubmissionError unless
    ``allow_partial``.
    """
    split = canonical_split(split)
    kind = submission_kind(pred_path)
    preds = read_predictions(pred_path, edition)
    if kind == "MTL":
        if get_edition(edition).name != "abaw3":
            log.warning("note: an MTL submission is scored with the abaw3 metrics")
        edition = "abaw3"
        mtl = find_mtl_file(annotations, split)
        if mtl is None:
            raise SubmissionError(f"{annotations}: no {MTL_FILES[split]} to score the MTL submission against")
        truths = read_mtl_file(mtl, split)
    else:
        truths = read_annotations(annotations, (split,), tasks=tuple(preds))
    pairs = {task: align(pred_path, task, preds[task], truths.get(task, {}), annotations, split,
                         per_video=kind == "per_video", allow_partial=allow_partial) for task in preds}
    return score({t: p for t, (p, _) in pairs.items()}, {t: lab for t, (_, lab) in pairs.items()}, edition)


def align(pred_path, task: str, preds: dict[str, TrackLabels], truths: dict[str, TrackLabels],
          annotations, split: str, per_video: bool,
          allow_partial: bool = False) -> tuple[dict[str, TrackLabels], dict[str, TrackLabels]]:
    """(predictions, labels) of every annotated track, aligned frame by frame."""
    if not truths:
        raise SubmissionError(f"{annotations}: no {task} annotations of {split} to score {pred_path} against")
    missing = sorted(set(truths) - set(preds))
    if missing:
        raise SubmissionError(f"{pred_path}: no {task} prediction for {len(missing)} of the {len(truths)} "
                              f"annotated {split} tracks: {preview(missing)}")
    if extra := len(set(preds) - set(truths)):
        log.warning("note: %d %s predicted tracks are not annotated in %s; ignored", extra, task, split)
    if partial := partial_tracks(preds, truths, per_video):
        message = describe_partial(pred_path, task, partial, len(truths))
        if not allow_partial:
            raise SubmissionError(f"{message}; pass --allow-partial to score only the predicted frames")
        log.warning("note: %s; scored anyway (--allow-partial)", message)
    out_preds, out_labels, resized, unscored = {}, {}, 0, 0
    for track, labels in truths.items():
        pred = preds[track]
        if per_video:  # one line per frame by rule: the prediction's length is the video's
            resized += len(labels) != len(pred)
            labels = fit_length(labels, len(pred))
        else:  # rows not listed are not predicted; rows past the labels cannot be scored
            unscored += unpredicted(pred, labels, per_video=False)
            pred = pad_or_truncate(pred, len(labels))
        out_preds[track], out_labels[track] = pred, labels
    if resized:
        log.warning("note: %s: label lines differ from prediction lines for %d of %d tracks; labels were "
                    "padded with invalid or truncated to the prediction", task, resized, len(truths))
    if unscored:
        log.warning("note: %d labelled %s frames have no prediction row and are not scored", unscored, task)
    return out_preds, out_labels


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


def listed_images(path: str | Path) -> dict[str, list[int]]:
    """{track: frame numbers} from the first column of a file of ``video/00001.jpg`` rows (a first line
    without '/' is a header); SubmissionError naming the line for any other (``../../x/00001.jpg``)."""
    path = Path(path)
    out: dict[str, list[int]] = {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        image = line.split(",")[0].strip()
        if not image or image.startswith("#") or (i == 1 and "/" not in image):
            continue
        try:
            track, frame = track_and_frame(image)
        except ValueError as e:
            raise SubmissionError(f"{path}:{i}: {e}") from None
        out.setdefault(track, []).append(frame)
    return out


def read_test_list(path: str | Path) -> dict[str, list[int] | None]:
    """{track: listed frames} for a list of images, {track: None} for a list of video/track names."""
    names = read_video_list(path)
    if any("/" in n for n in names):
        return dict(listed_images(path))
    return {n: None for n in names}


def expected_for_check(sub_path: str | Path, annotations: str | Path | None, split: str = VAL_SPLIT,
                       videos: list[str] | None = None, test_lists: list[str] | None = None) -> dict:
    """{task: {track: frame count or frame numbers}} a submission must cover.

    Tracks: from the test lists (a list is for the task its file name names, else for every task) or
    the annotation split. Frames: listed images where a list or the MTL annotation names them, else the
    decoded frame count of each video (``videos``), else the annotation's line count.
    """
    tasks = submission_tasks(sub_path)
    if test_lists:
        want: dict[str, dict] = {}
        for f in test_lists:
            task = task_of_list(f)
            for t in tasks if task is None else [task] if task in tasks else []:
                want.setdefault(t, {}).update(read_test_list(f))
    elif submission_kind_or_none(sub_path) == "MTL":
        mtl = find_mtl_file(annotations, split)
        if mtl is None:
            name = MTL_FILES[canonical_split(split)]
            raise SubmissionError(f"{annotations}: no {name} for an MTL submission")
        images = listed_images(mtl)
        want = {t: dict(images) for t in TASKS}
    else:
        labels = read_annotations(annotations, (split,), tasks=tasks)
        want = {t: {track: len(lab) for track, lab in labels[t].items()} for t in tasks if labels[t]}
        if not want:
            raise SubmissionError(f"{annotations}: no annotations of {split} for {', '.join(tasks)}")
    counted = sorted({tr for per in want.values() for tr, v in per.items() if not isinstance(v, list)})
    if videos:
        counts = video_frame_counts(counted, videos)
        want = {t: {tr: v if isinstance(v, list) else counts[tr] for tr, v in per.items()}
                for t, per in want.items()}
    elif any(v is None for per in want.values() for v in per.values()):
        raise SubmissionError("the test lists name tracks, not frames: give --videos to count their frames")
    return want


def index_videos(dirs: Iterable[str | Path]) -> dict[str, Path]:
    """{file stem: path} of every video file under ``dirs`` (searched recursively); names must be unique."""
    from data.video import find_videos

    try:
        return find_videos(list(dirs))
    except (FileNotFoundError, ValueError) as e:
        raise SubmissionError(str(e)) from None


def find_track_video(track: str, index: dict[str, Path]) -> Path | None:
    """The video of a track: ``<video>`` itself, or ``<video>_left``/``_right`` → ``<video>``."""
    from data.video import video_of_track

    return index.get(track) or index.get(video_of_track(track))


def count_frames(video: str | Path) -> int:
    """Number of decoded video frames (decoding, not the container's possibly wrong frame count)."""
    from data.video import VideoError, read_frame_times  # only this path needs PyAV

    try:
        return len(read_frame_times(video, decode=True))
    except VideoError as e:
        raise SubmissionError(str(e)) from None


def video_frame_counts(tracks: list[str], dirs: Iterable[str | Path]) -> dict[str, int]:
    """{track: decoded frame count}; each video is decoded once, several in parallel."""
    index = index_videos(dirs)
    videos = {track: find_track_video(track, index) for track in tracks}
    missing = sorted(t for t, v in videos.items() if v is None)
    if missing:
        raise SubmissionError(f"no video file (.mp4/.avi) for tracks: {preview(missing)}")
    unique = sorted(set(videos.values()))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        counts = dict(zip(unique, pool.map(count_frames, unique)))
    return {track: counts[v] for track, v in videos.items()}
