"""Writing submissions: per-video files, 2023+ single files and MTL files, each appearing whole."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from app.submission.formats import (
    IMAGE_COLUMN,
    MTL_PARTS,
    SET_DIRS,
    SINGLE_FILE_NAMES,
    SubmissionError,
    per_video_names,
    plain_track,
)
from data.annotations import MTL_HEADER
from tasks import EXPR_NAMES_8, Edition, get_edition
from utils.atomic import atomic_path


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
