"""Submission formats: names, headers, errors, value parsing and the scans the reader and checker share.

The reader and the checker share one parser (``scan_per_video_file``, ``scan_single_file``): the checker
reports every problem, the reader refuses a file with any problem (naming the first), so what gets scored
is what the checker accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.annotations import MTL_HEADER, TASK_DIRS
from tasks import AU_NAMES_12, EXPR_NAMES_8, VA_NAMES, Edition, get_edition
from utils.paths import safe_component, safe_image_name

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
# Folders and messages

def set_dirs(root: Path) -> dict[str, Path]:
    """Task folders directly inside a submission folder (any edition's spelling; the first one wins)."""
    return {task: root / name for task, names in TASK_DIRS.items() for name in reversed(names)
            if (root / name).is_dir()}


def preview(names: list[str], n: int = 20) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")
