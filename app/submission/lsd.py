"""The LSD track's prediction file (ABAW4 learning from synthetic data): write, read, check, score.

Our format (the official one is not in our notes): UTF-8 text, first line ``image,expression``, then one row
per image of the split, ``<image path relative to the split folder>,<class>``, the class an index 0–5 in
``tasks.EXPR_NAMES_6`` order (Anger, Disgust, Fear, Happiness, Sadness, Surprise), lines ending in ``\\n``.
test_val_aff2.py --lsd writes the rows in ``data.lsd.LsdImages.names()`` order; the reader takes any order.

As for the other formats, the reader and the checker share one parser (``scan_lsd``): the checker reports
every problem (with file and line), the reader refuses a file with any (naming the first), and the scorer
reads only what the checker accepts. The truth comes from the split's class folders (``data.lsd``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.submission.formats import Problem, SubmissionError, preview, raise_first, read_lines
from app.submission.write import write_atomic
from data.lsd import list_images
from tasks import get_edition
from utils.metrics import expr_scores, f1_from_counts, total_score
from utils.tables import format_table

EDITION = get_edition("lsd")
CLASSES = EDITION.expr_names  # Anger ... Surprise: the codes 0-5 of the file
LSD_HEADER = "image,expression"


@dataclass
class LsdScan:
    rows: dict[str, tuple[int, int]]  # image name → (line, class); rows with a problem are left out
    problems: list[Problem]


def write_lsd(path: str | Path, names: Sequence[str], classes: Sequence[int] | np.ndarray) -> Path:
    """Write the prediction file (atomically): one row per image, in the order given."""
    classes = np.asarray(classes).reshape(-1)
    if len(names) != len(classes):
        raise SubmissionError(f"{path}: {len(names)} image names for {len(classes)} predictions")
    bad = np.flatnonzero((classes != np.round(classes)) | (classes < 0) | (classes >= len(CLASSES)))
    if bad.size:
        raise SubmissionError(f"{path}: {names[bad[0]]}: class {classes[bad[0]]} is not a code 0..{len(CLASSES) - 1}")
    rows = []
    for name, k in zip(names, classes, strict=True):
        if not name.strip() or name != name.strip() or any(c in name for c in ",\n\r"):
            # a comma or line break would make the row unreadable; surrounding spaces would be stripped
            raise SubmissionError(f"{path}: image name {name!r} cannot be written in a row")
        rows.append(f"{name},{int(k)}")
    return write_atomic(path, [LSD_HEADER, *rows])


def class_error(text: str) -> str | None:
    """Why ``text`` is not a class code 0-5, or None."""
    t = text.strip()
    if not (t.isascii() and t.isdigit()) or int(t) >= len(CLASSES):
        return f"class {t!r} is not a code 0..{len(CLASSES) - 1} ({', '.join(CLASSES)})"
    return None


def scan_lsd(path: str | Path) -> LsdScan:
    """Every row of a prediction file and every problem of its format (header, rows, classes, repeats)."""
    path = Path(path)
    problems: list[Problem] = []
    lines = read_lines(path, problems)
    if lines is None:
        return LsdScan({}, problems)
    if [c.strip() for c in lines[0].split(",")] != LSD_HEADER.split(","):
        problems.append(Problem(str(path), 1, f"header {lines[0].strip()!r}, expected {LSD_HEADER!r}"))
    rows: dict[str, tuple[int, int]] = {}
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            problems.append(Problem(str(path), i, "blank line"))
            continue
        fields = line.split(",")
        if len(fields) != 2 or not fields[0].strip():
            problems.append(Problem(str(path), i, f"expected 'image,class', got {line.strip()!r}"))
            continue
        name, error = fields[0].strip(), class_error(fields[1])
        if error:
            problems.append(Problem(str(path), i, f"{name}: {error}"))
            continue
        if name in rows:
            problems.append(Problem(str(path), i, f"{name} listed twice (first at line {rows[name][0]})"))
            continue
        rows[name] = (i, int(fields[1]))
    return LsdScan(rows, problems)


def read_lsd(path: str | Path) -> dict[str, int]:
    """{image name: class 0-5}; SubmissionError naming the file and line of the first problem."""
    if not Path(path).is_file():
        raise SubmissionError(f"{path}: no such file")
    scan = scan_lsd(path)
    raise_first(scan.problems)
    return {name: k for name, (_, k) in scan.rows.items()}


def split_names(split_dir: str | Path) -> list[str]:
    """The image names of a split folder as the file spells them (relative, '/'-separated)."""
    split_dir = Path(split_dir)
    return [p.relative_to(split_dir).as_posix() for p, _ in list_images(split_dir)]


def coverage_problems(path: Path, rows: dict[str, tuple[int, int]], names: list[str], split_dir: Path
                      ) -> list[Problem]:
    """Images of the split without a row, rows of no image of the split."""
    problems = []
    missing = [n for n in names if n not in rows]
    if missing:
        problems.append(Problem(str(path), 0, f"no row for {len(missing)} image(s) of {split_dir}: "
                                f"{preview(missing, 10)}"))
    known = set(names)
    for name, (line, _) in sorted(rows.items(), key=lambda r: r[1][0]):
        if name not in known:
            problems.append(Problem(str(path), line, f"{name}: not an image of {split_dir}"))
    return problems


def check_lsd(path: str | Path, split_dir: str | Path) -> list[Problem]:
    """Every problem of a prediction file for a split folder: its format, and every image listed exactly once
    with no other name. (LsdError when the split folder itself is unusable.)"""
    path, split_dir = Path(path), Path(split_dir)
    names = split_names(split_dir)
    if not path.is_file():
        return [Problem(str(path), 0, "no such file")]
    scan = scan_lsd(path)
    return scan.problems + coverage_problems(path, scan.rows, names, split_dir)


def confusion_counts(true: np.ndarray, pred: np.ndarray, k: int = len(CLASSES)) -> np.ndarray:
    """k×k counts, rows the true class, columns the predicted one."""
    true, pred = np.asarray(true, np.int64), np.asarray(pred, np.int64)
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def per_class_f1(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """{class: F1}; NaN for a class neither true nor predicted (the macro-F1 leaves it out too)."""
    c = confusion_counts(true, pred)
    tp = np.diag(c)
    f1 = f1_from_counts(tp, c.sum(0) - tp, c.sum(1) - tp)
    seen = (c.sum(0) + c.sum(1)) > 0
    return {name: float(f1[k]) if seen[k] else math.nan for k, name in enumerate(CLASSES)}


def lsd_scores(pred: np.ndarray, true: np.ndarray) -> dict:
    """The track's scores of class codes against labels (both 0-5): macro-F1 (the score), accuracy, per class."""
    pred, true = np.asarray(pred, np.int64), np.asarray(true, np.int64)
    expr = expr_scores(pred, true, np.ones(len(true), bool), EDITION)
    out: dict = {"edition": EDITION.name, "expr": {**expr, "per_class": per_class_f1(true, pred)}}
    out["total"] = total_score(out)
    out["images"] = int(len(true))
    return out


def split_truth(split_dir: str | Path) -> tuple[list[str], np.ndarray]:
    """(image names, classes) of a labelled split; SubmissionError for an unlabelled one."""
    split_dir = Path(split_dir)
    items = list_images(split_dir)
    if any(k < 0 for _, k in items):
        raise SubmissionError(f"{split_dir}: images without class folders (an unlabelled split): nothing to score")
    return [p.relative_to(split_dir).as_posix() for p, _ in items], np.array([k for _, k in items], np.int64)


def score_lsd(path: str | Path, split_dir: str | Path) -> dict:
    """Score a prediction file against the class folders of ``split_dir``:
    {'edition': 'lsd', 'expr': {'f1', 'accuracy', 'score', 'per_class'}, 'total': macro-F1, 'images': n}.
    SubmissionError for any problem the checker would report (a missing or extra image included)."""
    path, split_dir = Path(path), Path(split_dir)
    names, true = split_truth(split_dir)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such file")
    scan = scan_lsd(path)
    raise_first(scan.problems + coverage_problems(path, scan.rows, names, split_dir))
    pred = np.array([scan.rows[n][1] for n in names], np.int64)
    return lsd_scores(pred, true)


def format_lsd_scores(scores: dict) -> str:
    """A plain-text table: per-class F1, then macro-F1 (the score) and accuracy."""
    def num(x: float | None) -> str:
        return "n/a" if x is None or math.isnan(x) else f"{x:.4f}"

    expr = scores["expr"]
    rows = [[name, num(f1)] for name, f1 in expr["per_class"].items()]
    rows += [["macro-F1 (score)", num(expr["f1"])], ["accuracy", num(expr["accuracy"])]]
    title = f"edition {scores['edition']}, {scores.get('images', '?')} images"
    return "\n".join([title, *format_table(["class", "F1"], rows, right=True)])
