"""Late fusion of raw per-frame outputs: ``test_val_aff2.py --fuse RUN_A/raw RUN_B/raw ...``.

Inputs: the ``raw/`` folders of earlier split runs on one database (a ``TRACK.npz`` per track, any layout:
TSAV's 7 classes and 8 AUs, EMMA's 8 and 12, a fusion's). Per frame and by name, onto the edition's vocabulary:
VA is the weighted mean of the stored VA (each model's own activation and clipping applied); EXPR per class
the weighted mean of the probabilities of the inputs having the class, weights renormalised over them (a
7-class model says nothing about 'Other'; a fused row need not sum to 1), then the argmax over the edition's
classes (one no input has is never predicted, as with one such model); AU per AU likewise, then
≥ ``--au-threshold`` (or ``--decision``'s rule); every AU the edition scores must be there.

Tracks, submission files, checker, val scores and output set are run_split's; faceless frames keep what
the inputs hold. Every input must hold every track with the database's frames, times and face flags, else
one line names the file, before ``--out`` changes. ``raw/`` gets the fused scores ('fused' layout, with
names; its 'logits' are the fused scores side by side: no model produced them).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app import inference, split_run
from app.submission.compare import RAW_KEYS, load_npz
from tasks import BLOCK_OF_TASK, BLOCKS, TASKS, VA_NAMES, Edition, OutputLayout, get_edition
from utils.metrics import format_scores
from utils.output_set import OutputSet
from utils.outputs import decide
from utils.tables import print_table

FUSED = "fused"  # the layout name of a fused raw output
ORDER = ("va", "expr", "au")  # block order of the fused layout


class FusionError(ValueError):
    """Unusable input for a fusion (one line naming the file or flag)."""


@dataclass
class Raw:
    """One raw output file: its per-frame scores by block ('va', 'expr', 'au') and their column names."""

    path: Path
    times: np.ndarray
    face: np.ndarray
    layout: str
    scores: dict[str, np.ndarray]
    names: dict[str, tuple[str, ...]]


def flag_problem(args: argparse.Namespace) -> str:
    """What is wrong with the combination of flags ('' when nothing): a model to run or raw outputs to fuse."""
    if args.fuse is None:
        if args.checkpoint is None:
            return "the following arguments are required: --checkpoint (or --fuse RAW RAW ... to fuse raw outputs)"
        return "--fuse-weights: only with --fuse" if args.fuse_weights is not None else ""
    if args.checkpoint is not None:
        return "--fuse and --checkpoint exclude each other: a fusion reads raw outputs, it runs no model"
    if args.video:
        return "--fuse fuses the raw/ folders of split runs (--db, --split), not a --video"
    if len(args.fuse) < 2:
        return "--fuse: give two or more raw/ folders"
    if args.fuse_weights is not None and len(args.fuse_weights) != len(args.fuse):
        return (f"--fuse-weights: {len(args.fuse_weights)} weight(s) for {len(args.fuse)} --fuse folders: "
                "give one per folder")
    if args.smooth != 1 or args.faceless != "model":
        return ("--smooth and --faceless fill/hold apply when raw outputs are written; the --fuse inputs already "
                "hold them")
    return ""


def raw_folders(paths: list[str]) -> list[Path]:
    """The --fuse folders, each an existing folder with .npz files, none given twice."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"--fuse {p}: no such folder")
        if not p.is_dir():
            raise FusionError(f"--fuse {p}: not a folder; give raw/ folders (test_val_aff2.py's DIR/raw)")
        if not any(p.glob("*.npz")):
            hint = ": pass its raw/ folder" if (p / "raw").is_dir() else " (test_val_aff2.py's DIR/raw)"
            raise FusionError(f"--fuse {p}: no .npz raw outputs in it{hint}")
        if any(p.resolve() == q.resolve() for q in out):
            raise FusionError(f"--fuse {p}: given twice")
        out.append(p)
    return out


def read_raw(path: Path) -> Raw:
    """One raw output file, checked: frame times, face flags and at least one task's scores, names and
    shapes agreeing, values finite."""
    data = load_npz(path)  # CompareError (a ValueError) naming the file when it is no .npz
    if "times" not in data or "face" not in data:
        raise FusionError(f"{path}: no 'times' or 'face' array (not a test_val_aff2.py raw output)")
    times = np.asarray(data["times"], np.float64).reshape(-1)
    face = np.asarray(data["face"]).reshape(-1).astype(bool)
    if len(face) != len(times):
        raise FusionError(f"{path}: {len(face)} face flags for {len(times)} frame times")
    scores, names = {}, {}
    for task, key in RAW_KEYS.items():
        if key not in data:
            continue
        block = BLOCK_OF_TASK[task]
        cols = VA_NAMES if block == "va" else tuple(str(x) for x in data.get(f"{block}_names", ()))
        x = np.asarray(data[key], np.float64)
        if not cols or len(set(cols)) != len(cols) or x.shape != (len(times), len(cols)):
            raise FusionError(f"{path}: '{key}' has shape {x.shape}; expected ({len(times)}, {len(cols)}) for the "
                              f"frames and its {block} names {','.join(cols) or '(none)'} (each once)")
        if not np.all(np.isfinite(x)):
            raise FusionError(f"{path}: '{key}' holds values that are not finite")
        scores[block], names[block] = x, cols
    if not scores:
        raise FusionError(f"{path}: none of {', '.join(RAW_KEYS.values())} (not a test_val_aff2.py raw output)")
    return Raw(path, times, face, str(data.get("layout", "?")), scores, names)


def fused_layout(raws: list[Raw], edition: Edition) -> OutputLayout:
    """The edition's classes and AUs that the inputs provide, as a layout ('fused': VA activation applied)."""
    order = tuple(b for b in ORDER if any(b in r.names for r in raws))
    classes = tuple(c for c in edition.expr_names if any(c in r.names.get("expr", ()) for r in raws))
    if "expr" in order:
        if not classes or classes != edition.expr_names[:len(classes)]:
            gap = next(c for c in edition.expr_names if c not in classes)
            raise FusionError(f"no input has the EXPR class {gap!r} of {edition.name} (their classes: "
                              f"{' / '.join(','.join(r.names.get('expr', ())) for r in raws)})")
        if len(classes) < len(edition.expr_names):  # as with one such model (a 7-class model serves abaw3)
            print(f"note: no input has {','.join(edition.expr_names[len(classes):])}: never predicted")
    missing = [a for a in edition.au_names if not any(a in r.names.get("au", ()) for r in raws)]
    if "au" in order and missing:
        raise FusionError(f"no input has {','.join(missing)} of {edition.name} (their AUs: "
                          f"{' / '.join(','.join(r.names.get('au', ())) for r in raws)})")
    return OutputLayout(FUSED, order, len(classes), classes, edition.au_names if "au" in order else (),
                        va_activation="identity", edition=edition.name)


def fuse_block(raws: list[Raw], weights: list[float], block: str, names: tuple[str, ...]) -> np.ndarray:
    """Per column name, the weighted mean over the inputs that have it (weights renormalised per column)."""
    acc, total = np.zeros((len(raws[0].times), len(names))), np.zeros(len(names))
    for raw, w in zip(raws, weights, strict=True):
        have = raw.names.get(block, ())
        for j, name in enumerate(names):
            if name in have:
                acc[:, j] += w * raw.scores[block][:, have.index(name)]
                total[j] += w
    return acc / total  # every column has an input: fused_layout checked


def fuse_scores(raws: list[Raw], weights: list[float], layout: OutputLayout) -> dict[str, np.ndarray]:
    """save_npz's score keys of the fused frames, plus 'logits': the fused scores side by side."""
    names = {"va": VA_NAMES, "expr": layout.expr_names, "au": layout.au_names}
    keys = {BLOCK_OF_TASK[task]: key for task, key in RAW_KEYS.items()}
    out = {keys[b]: fuse_block(raws, weights, b, names[b]) for b in layout.order}
    out["logits"] = np.concatenate([out[keys[b]] for b in layout.order], axis=1)
    return out


def check_frames(raws: list[Raw], track: str, times: np.ndarray, face: np.ndarray, db: str) -> None:
    """Every input must hold the database's frames of the track: count, times and face flags."""
    for raw in raws:
        if len(raw.times) != len(times):
            raise FusionError(f"{raw.path}: {len(raw.times)} frames, but track {track} has {len(times)} in {db}")
        for what, off in (("times", np.abs(raw.times - times) > 1e-6), ("face flags", raw.face != face)):
            if off.any():
                raise FusionError(f"{raw.path}: frame {what} differ from track {track} in {db} "
                                  f"(frame {off.argmax() + 1})")


def first_raws(folders: list[Path], tracks: list[str]) -> list[Raw]:
    """For each folder, the file of the first track of the split it holds: its vocabulary is the folder's."""
    out = []
    for folder in folders:
        path = next((folder / f"{t}.npz" for t in tracks if (folder / f"{t}.npz").is_file()), None)
        if path is None:
            raise FusionError(f"--fuse {folder}: no .npz of any track of the split ({', '.join(tracks[:5])} ...)")
        out.append(read_raw(path))
    return out


def check_present(folders: list[Path], tracks: list[str], split: str) -> None:
    for folder in folders:
        missing = [t for t in tracks if not (folder / f"{t}.npz").is_file()]
        if missing:
            raise FusionError(f"{folder / (missing[0] + '.npz')}: missing ({len(missing)} track(s) of the {split} "
                              f"split lack their .npz in --fuse {folder}: {', '.join(missing[:5])}); every input "
                              "needs every track (--tracks picks some)")


def plan(args: argparse.Namespace, folders: list[Path], edition: Edition, fmt: str
         ) -> tuple[OutputLayout, list[Raw], dict[str, list[str]], dict[str, list[int]] | None]:
    """(fused layout, each folder's first file, {task: tracks}, the MTL rows' images or None), as run_split
    picks them, checked before any work: the inputs serve the format and hold every track."""
    images = split_run.mtl_images(args) if fmt == "mtl" else None  # the MTL rows decide the tracks
    wanted = {t: sorted(images) for t in TASKS} if images is not None else \
        split_run.tracks_of_split(args.db, args.split, args.test_lists)
    firsts = first_raws(folders, sorted({t for ts in wanted.values() for t in ts}))
    layout = fused_layout(firsts, edition)
    if fmt == "mtl":
        lacking = [b for b in BLOCKS if not layout.has(b)]
        if lacking:
            raise FusionError(f"an MTL submission needs VA, EXPR and AU: no --fuse input has {', '.join(lacking)}")
        split_run.check_mtl_serves(layout, edition)
    else:
        wanted = split_run.served_tasks(wanted, layout)
    wanted = split_run.select_tracks(wanted, args.tracks, args.split, args.db)
    tracks = sorted({t for ts in wanted.values() for t in ts})
    split_run.check_track_names(tracks, args.db)
    check_present(folders, tracks, args.split)
    return layout, firsts, wanted, None if images is None else {t: images[t] for t in tracks}


def fuse_tracks(args: argparse.Namespace, folders: list[Path], firsts: list[Raw], weights: list[float],
                layout: OutputLayout, edition: Edition, wanted: dict[str, list[str]], staging: Path
                ) -> tuple[dict[str, dict[str, np.ndarray]], int]:
    """Fuse every track (fused raw scores to ``staging/raw``); returns (per task and track the decisions, frames)."""
    decision = "default" if args.decision == "auto" else args.decision
    subs: dict[str, dict[str, np.ndarray]] = {task: {} for task in wanted}
    frames = 0
    for track in tqdm(sorted({t for ts in wanted.values() for t in ts}), desc=f"fuse {args.split}", unit="track",
                      dynamic_ncols=True):
        raws = [read_raw(folder / f"{track}.npz") for folder in folders]
        for raw, first in zip(raws, firsts, strict=True):
            if raw.names != first.names:
                raise FusionError(f"{raw.path}: outputs {describe(raw.names)}, but {first.path} has "
                                  f"{describe(first.names)}: one raw/ folder per run")
        times, face, _ = inference.db_track_frames(args.db, track)  # no audio: nothing runs a model here
        check_frames(raws, track, times, face, args.db)
        fused = fuse_scores(raws, weights, layout)
        decoded = decide(fused, layout, edition, decision, args.au_threshold)
        for task, ts in wanted.items():
            if track in ts:
                subs[task][track] = decoded[task]
        if not args.no_raw:
            split_run.save_npz(staging / "raw" / f"{track}.npz", fused, times, face, layout)
        frames += len(times)
    return subs, frames


def run_fusion(args: argparse.Namespace) -> dict:
    """The --fuse mode; returns {'out', 'frames', 'seconds', 'problems', 'inputs', 'weights', 'scores'}."""
    problem = flag_problem(args)
    if problem:
        raise FusionError(problem)
    folders = raw_folders(args.fuse)
    weights = list(args.fuse_weights or [1.0] * len(folders))
    edition = get_edition(args.edition)
    fmt = split_run.submission_format(args.format, edition)
    layout, firsts, wanted, images = plan(args, folders, edition, fmt)
    user_paths = split_run.split_user_paths(args) | {f"--fuse {f}": str(f) for f in folders}
    outputs = OutputSet(Path(args.out), "split", split_run.SPLIT_FAMILY, user_paths)  # one family with run_split's
    t0 = time.perf_counter()
    with outputs as staging:  # from here on as run_split
        subs, frames = fuse_tracks(args, folders, firsts, weights, layout, edition, wanted, staging)
        problems, scores, written = split_run.finish_submission(staging, subs, edition, fmt, images, wanted, args)
        outputs.publish(written)
    seconds, total = time.perf_counter() - t0, sum(weights)
    rows = [[str(f), first.layout, f"{w:g} ({w / total:.0%})", describe(first.names)]
            for f, first, w in zip(folders, firsts, weights, strict=True)]
    fused = {"va": VA_NAMES, "expr": layout.expr_names, "au": layout.au_names}
    print_table(["input", "layout", "weight", "outputs"], rows,
                title=f"Late fusion into {FUSED}: {describe({b: fused[b] for b in layout.order})}")
    print(f"\n{len(set().union(*subs.values()))} tracks, {frames} frames from {len(folders)} inputs in {seconds:.1f} s"
          f" → {Path(args.out) / 'submission'}; checker: {len(problems)} problem(s)")
    for p in problems:
        print(p)
    result = {"out": str(args.out), "frames": frames, "seconds": seconds, "problems": [str(p) for p in problems],
              "inputs": [str(f) for f in folders], "weights": weights}
    if scores is not None:
        print(format_scores(scores))
        result["scores"] = scores
    return result


def describe(names: dict[str, tuple[str, ...]]) -> str:
    """'VA, EXPR 7, AU 8' for the column names of a file's (or a layout's) outputs."""
    return ", ".join(b.upper() if b == "va" else f"{b.upper()} {len(names[b])}" for b in ORDER if b in names)
