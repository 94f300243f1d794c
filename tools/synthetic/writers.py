"""Label files in every layout: per-track files of each edition, the s-Aff-Wild2 lists, test lists."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data.annotations import MTL_FILES, MTL_HEADER, TASK_DIRS
from tasks import AU_NAMES_12, TASKS, TEST_SPLIT, TRAIN_SPLIT, VAL_SPLIT, get_edition
from tools.synthetic.labels import TrackPlan
from tools.synthetic.mapping import AU_NAMES_ALL, EDITION_FOLDERS, MTL_EVERY


def apply_faceless(track: TrackPlan, faceless: np.ndarray) -> None:
    """Frames without a visible face have no label in any task."""
    for task in TASKS:
        track.valid[task][:len(faceless)] &= ~faceless


def format_rows(track: TrackPlan, task: str, expr_names: tuple[str, ...],
                au_names: tuple[str, ...]) -> list[str]:
    """Label lines (no header) of one task for one track, in an edition's classes and AUs."""
    n, valid = track.n_label, track.valid[task]
    if task == "VA":
        return [f"{v:.3f},{a:.3f}" if ok else "-5,-5" for (v, a), ok in zip(track.va[:n], valid[:n])]
    if task == "EXPR":
        return [str(c) if ok and c < len(expr_names) else "-1" for c, ok in zip(track.expr[:n], valid[:n])]
    cols = [AU_NAMES_ALL.index(a) for a in au_names]
    bad = ",".join(["-1"] * len(cols))
    return [",".join(map(str, row)) if ok else bad for row, ok in zip(track.au[:n, cols], valid[:n])]


def header(task: str, expr_names: tuple[str, ...], au_names: tuple[str, ...]) -> str:
    return {"VA": "valence,arousal", "EXPR": ",".join(expr_names), "AU": ",".join(au_names)}[task]


def write_edition(root: Path, edition: str, tracks: list[TrackPlan]) -> None:
    """Per-track files of one edition (every task/split folder exists, even if empty)."""
    dir_index, train_name = EDITION_FOLDERS[edition]
    expr_names, au_names = get_edition(edition).expr_names, get_edition(edition).au_names
    split_dirs = {TRAIN_SPLIT: train_name, VAL_SPLIT: "Validation_Set"}
    for task in TASKS:
        for split, folder in split_dirs.items():
            d = root / "annotations" / edition / TASK_DIRS[task][dir_index] / folder
            d.mkdir(parents=True, exist_ok=True)
            for tr in tracks:
                if tr.split[task] == split:
                    lines = [header(task, expr_names, au_names)] + format_rows(tr, task, expr_names, au_names)
                    (d / f"{tr.name}.txt").write_text("\n".join(lines) + "\n")


def mtl_rows(track: TrackPlan, has_face: np.ndarray) -> list[str]:
    """s-Aff-Wild2 rows for every MTL_EVERY-th frame with a face (tasks the track lacks: invalid)."""
    rows = []
    n = min(track.n_frames, track.n_label)
    cols = [AU_NAMES_ALL.index(a) for a in AU_NAMES_12]
    for k in np.flatnonzero(has_face[:n])[::MTL_EVERY]:
        va_ok = track.split["VA"] is not None and track.valid["VA"][k]
        ex_ok = track.split["EXPR"] is not None and track.valid["EXPR"][k]
        au_ok = track.split["AU"] is not None and track.valid["AU"][k]
        va = f"{track.va[k, 0]:.3f},{track.va[k, 1]:.3f}" if va_ok else "-5,-5"
        ex = str(track.expr[k]) if ex_ok else "-1"
        au = ",".join(map(str, track.au[k, cols])) if au_ok else ",".join(["-1"] * len(cols))
        rows.append(f"{track.name}/{k + 1:05d}.jpg,{va},{ex},{au}")
    return rows


def write_mtl(root: Path, tracks: list[TrackPlan], faceless: dict[str, np.ndarray]) -> None:
    d = root / "annotations" / "mtl"
    d.mkdir(parents=True, exist_ok=True)
    for split, fname in MTL_FILES.items():
        rows = [MTL_HEADER]
        for tr in tracks:
            if split in tr.split.values():
                rows += mtl_rows(tr, ~faceless[tr.name])
        (d / fname).write_text("\n".join(rows) + "\n")


def write_test_lists(root: Path, tracks: list[TrackPlan]) -> None:
    d = root / "test_sets"
    d.mkdir(parents=True, exist_ok=True)
    names = [tr.name for tr in tracks if TEST_SPLIT in tr.split.values()]
    for task in ("VA", "EXPR", "AU", "MTL"):
        (d / f"{task}_test_set.txt").write_text("".join(f"{n}\n" for n in names))
