"""Predictions for a whole split (submission files, checked and scored) or for any one video file.

Split mode: every source frame of every track of the split, through ``utils.infer`` (batched sliding
windows over the database), mapped to the edition's outputs, written as the edition's submission files
together with the raw per-frame outputs, checked with the submission checker, and on val scored with
the official metrics. Track names from the database become file names only after
``utils.paths.safe_component`` accepted them.

Video mode: one file is decoded, tracked, aligned and predicted chunk by chunk (``utils.video_stream``:
memory does not grow with the video's length); a per-frame CSV (one row per decoded frame), a timeline
plot, the raw outputs and, on request, an overlay MP4 are written.

Both modes write their files as one set (``utils.output_set``): staged in a hidden folder inside ``--out``,
moved into place together once complete, replacing only the files of the same kind of an earlier run;
whatever else ``--out`` holds is never touched.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.annotations import read_test_lists
from data.clips import ClipConfig, open_store
from data.tracks import split_tracks, stored_tracks, unlabelled_tracks
from models.tsav import model_layout
from tasks import TASKS, VAL_SPLIT, Edition, MissingAUError, OutputLayout, get_edition, get_layout, layout_au_columns
from utils import infer, video_report, video_stream
from utils.dist import pick_device
from utils.metrics import format_scores, write_json
from utils.output_set import OutputSet
from utils.paths import safe_component
from utils.predict import load_model
from utils.submission import check_submission, score_submission, write_per_video, write_single_file
from utils.tables import print_table

SPLIT_FAMILY = ["submission", "raw", "scores.json"]  # what a split run writes into --out


class PredictError(ValueError):
    """Unusable input for prediction (one line, naming what is wrong)."""


def serve_columns(layout: OutputLayout, edition: Edition) -> tuple[int, list[int]]:
    """(EXPR classes to argmax over, AU columns of the layout in the edition's order); error if impossible."""
    try:
        au_cols = layout_au_columns(layout, edition)
    except MissingAUError as e:
        raise PredictError(f"a checkpoint with layout {layout.name!r} cannot serve {edition.name}: it has no "
                           f"output for {','.join(e.missing)}") from None
    return min(layout.num_expr_classes, len(edition.expr_names)), au_cols


def to_edition(preds: dict[str, np.ndarray], layout: OutputLayout, edition: Edition,
               au_threshold: float, columns: tuple[int, list[int]] | None = None) -> dict[str, np.ndarray]:
    """Per-frame outputs → {'VA': (n, 2), 'EXPR': (n,) class codes, 'AU': (n, k) 0/1} for an edition.

    ``columns``: ``serve_columns(layout, edition)`` when already computed.
    """
    n_classes, au_cols = columns if columns is not None else serve_columns(layout, edition)
    return {"VA": np.clip(preds["va"], -1, 1),
            "EXPR": preds["expr_prob"][:, :n_classes].argmax(1),
            "AU": (preds["au_prob"][:, au_cols] >= au_threshold).astype(np.int64)}


def test_tracks(db_path: str, test_lists: list[str]) -> dict[str, list[str]]:
    """{task: tracks} for the test split: from the lists (task from the file name), else every unlabelled track."""
    db = open_store(db_path)
    if not test_lists:
        unlabelled = unlabelled_tracks(db)
        return {task: unlabelled for task in TASKS} if unlabelled else {}
    in_db = {t.name for t in stored_tracks(db)}
    out: dict[str, set[str]] = {}
    for f in test_lists:
        listed = read_test_lists([f])
        missing = sorted(t for t in listed if t not in in_db)
        if missing:
            raise PredictError(f"{f}: tracks not in {db_path}: {', '.join(missing[:10])}")
        for track, tasks in listed.items():
            for task in tasks:
                out.setdefault(task, set()).add(track)
    return {task: sorted(out[task]) for task in TASKS if task in out}


def tracks_of_split(db_path: str, split: str, test_lists: list[str]) -> dict[str, list[str]]:
    wanted = split_tracks(open_store(db_path), VAL_SPLIT) if split == "val" else test_tracks(db_path, test_lists)
    if not wanted:
        raise PredictError(f"{db_path}: no track in the {split} split")
    return wanted


def check_track_names(tracks: list[str], db_path: str) -> None:
    """Every track name must be one plain path component before it names a file (one-line error)."""
    for t in tracks:
        safe_component(t, f"{db_path}: track name")


def split_user_paths(args: argparse.Namespace) -> dict[str, str]:
    """The paths a split run reads: none of them may be replaced by its output set."""
    paths = {"--db": args.db, "--checkpoint": args.checkpoint, "--annotations": args.annotations}
    paths.update({f"--test-lists {f}": f for f in args.test_lists})
    return paths


def legacy_split_staging(out: Path) -> Path:
    """Where earlier versions assembled the output (beside it); a killed run left it behind."""
    out = out.resolve()
    return out.with_name(f".{out.name}.partial")


def write_submission(folder: Path, preds: dict[str, dict[str, np.ndarray]], edition: Edition, fmt: str) -> Path:
    if fmt == "per-video":
        return write_per_video(folder, preds, edition)
    folder.mkdir(parents=True, exist_ok=True)
    for task, tracks in preds.items():
        write_single_file(folder / f"{task}_predictions.txt", task, tracks)
    return folder


def run_split(args: argparse.Namespace) -> dict:
    """The split mode; returns {'out', 'frames', 'seconds', 'problems', 'scores'}."""
    device = pick_device(args.device)
    model, clip = load_model(args.checkpoint)
    model.to(device)
    layout = get_layout(model_layout(model))
    edition = get_edition(args.edition)
    columns = serve_columns(layout, edition)  # fail before any work
    wanted = tracks_of_split(args.db, args.split, args.test_lists)
    if args.tracks is not None:
        unknown = sorted(set(args.tracks) - {t for ts in wanted.values() for t in ts})
        if unknown:
            raise PredictError(f"--tracks: not in the {args.split} split of {args.db}: {', '.join(unknown)}")
        wanted = {task: [t for t in ts if t in args.tracks] for task, ts in wanted.items()}
        wanted = {task: ts for task, ts in wanted.items() if ts}
    tracks = sorted({t for ts in wanted.values() for t in ts})
    check_track_names(tracks, args.db)
    out = Path(args.out)
    outputs = OutputSet(out, "split", SPLIT_FAMILY, split_user_paths(args),
                        legacy=[legacy_split_staging(out)])
    with outputs as staging:
        subs, rows, frames, seconds = predict_tracks(args, model, clip, device, layout, edition, columns, wanted,
                                                     tracks, staging)
        write_submission(staging / "submission", subs, edition, args.format)
        expected = {task: {t: len(subs[task][t]) for t in ts} for task, ts in wanted.items()}
        problems = check_submission(staging / "submission", edition, expected)
        written = ["submission"] + ([] if args.no_raw else ["raw"])
        scores = None
        if args.split == "val":  # scored before anything is swapped in: a failure leaves the old output
            scores = score_submission(staging / "submission", args.annotations, edition, VAL_SPLIT)
            write_json(scores, staging / "scores.json")
            written.append("scores.json")
        outputs.publish(written)
    print_table(["track", "frames", "faces", "seconds", "frames/s"], rows)
    print(f"\n{len(tracks)} tracks, {frames} frames in {seconds:.1f} s ({frames / seconds:.1f} frames/s) → "
          f"{out / 'submission'}; checker: {len(problems)} problem(s)")
    for p in problems:
        print(p)
    result = {"out": str(out), "frames": frames, "seconds": seconds, "problems": [str(p) for p in problems]}
    if scores is not None:
        print(format_scores(scores))
        result["scores"] = scores
    return result


def predict_tracks(args: argparse.Namespace, model: torch.nn.Module, clip: ClipConfig, device: torch.device,
                   layout: OutputLayout, edition: Edition, columns: tuple[int, list[int]],
                   wanted: dict[str, list[str]], tracks: list[str], staging: Path
                   ) -> tuple[dict[str, dict[str, np.ndarray]], list[list], int, float]:
    """Predict every track; raw outputs go to ``staging/raw``. Returns (per task and track the edition's
    outputs, the table rows, frames, seconds)."""
    subs: dict[str, dict[str, np.ndarray]] = {task: {} for task in wanted}
    rows, frames, t0 = [], 0, time.perf_counter()
    for track in tqdm(tracks, desc=f"predict {args.split}", unit="track", dynamic_ncols=True):
        t1 = time.perf_counter()
        source = infer.db_track_source(args.db, track)
        preds = infer.predict_source(model, source, clip, args.batch_size, args.chunk, args.workers, device,
                                     args.amp, args.channels_last, args.flip_tta)
        preds = infer.smooth(preds, args.smooth)
        decoded = to_edition(preds, layout, edition, args.au_threshold, columns)
        for task, ts in wanted.items():
            if track in ts:
                subs[task][track] = decoded[task]
        if not args.no_raw:
            save_npz(staging / "raw" / f"{track}.npz", preds, source.times, source.face, layout)
        seconds = time.perf_counter() - t1
        frames += len(source)
        rows.append([track, len(source), int(source.face.sum()), f"{seconds:.1f}", f"{len(source) / seconds:.1f}"])
    return subs, rows, frames, time.perf_counter() - t0


def save_npz(path: Path, preds: dict[str, np.ndarray], times: np.ndarray, face: np.ndarray,
             layout: OutputLayout) -> Path:
    """Raw per-frame outputs for ensembling: logits, probabilities, VA, frame times and face flags."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, times=times, face=face, layout=layout.name,
                        expr_names=np.array(layout.expr_names), au_names=np.array(layout.au_names), **preds)
    return path


# --- any video ------------------------------------------------------------------------------------
def video_family(name: str) -> list[str]:
    """The files a --video run writes for the video ``name``, as one set."""
    return [f"{name}.csv", f"{name}_timeline.png", f"{name}.npz", f"{name}_overlay.mp4"]


def legacy_video_temps(out: Path, name: str) -> list[Path]:
    """Temp files that earlier versions wrote next to the outputs (a killed run left them behind)."""
    return [out / f".{name}.csv.partial", out / f".{name}_timeline.partial.png", out / f".{name}.partial.npz",
            out / f".{name}_overlay.partial.mp4"]


def warn(message: str) -> None:
    print(f"test_val_aff2.py: warning: {message}", file=sys.stderr)


def video_warnings(path: Path, pred: video_stream.VideoPrediction) -> list[str]:
    """What a reader of the CSV must know: no sound (face only), no face at all (no predictions)."""
    out = []
    if not pred.has_audio:
        out.append(f"{path}: no audio stream: the predictions come from the face alone "
                   "(the CSV's audio column is 0)")
    if not pred.face.any():
        out.append(f"{path}: no face found in any of its {len(pred)} frames: the CSV has empty prediction "
                   "columns and no timeline, raw outputs or overlay are written")
    return out


def write_video_outputs(args: argparse.Namespace, path: Path, name: str, pred: video_stream.VideoPrediction,
                        layout: OutputLayout, staging: Path) -> list[str]:
    """The video's files in the staging folder; returns their names."""
    preds = pred.preds if pred.face.any() else None  # no face anywhere: nothing to predict from
    video_report.write_frame_csv(staging / f"{name}.csv", pred.times, pred.face, pred.confidence, preds,
                                 layout.expr_names, layout.au_names, args.au_threshold, has_audio=pred.has_audio)
    written = [f"{name}.csv"]
    if preds is None:
        return written
    video_report.plot_timeline(staging / f"{name}_timeline.png", pred.times, pred.face, preds, layout.expr_names,
                               layout.au_names, args.au_threshold, title=name)
    written.append(f"{name}_timeline.png")
    if not args.no_raw:
        save_npz(staging / f"{name}.npz", preds, pred.times, pred.face, layout)
        written.append(f"{name}.npz")
    if args.overlay:
        boxes = video_report.face_boxes(pred.affines)
        video_report.write_overlay(path, staging / f"{name}_overlay.mp4", boxes, preds, layout.expr_names,
                                   layout.au_names, args.au_threshold)
        written.append(f"{name}_overlay.mp4")
    return written


def run_video(args: argparse.Namespace) -> dict:
    """The any-video mode; returns the paths it wrote and its warnings."""
    path = Path(args.video)
    if not path.is_file():
        raise PredictError(f"{path}: no such video file")
    device = pick_device(args.device)
    model, clip = load_model(args.checkpoint)
    model.to(device)
    layout = get_layout(model_layout(model))
    out, name = Path(args.out), path.stem
    outputs = OutputSet(out, f"{name}.video", video_family(name), {"--video": path, "--checkpoint": args.checkpoint},
                        legacy=legacy_video_temps(out, name))
    t0 = time.perf_counter()
    with outputs as staging:
        pred = video_stream.predict_video(str(path), model, clip, args.detector, args.detect_every, args.batch_size,
                                          args.chunk, device, args.amp, args.channels_last, args.flip_tta)
        pred.preds = infer.smooth(pred.preds, args.smooth)
        t1 = time.perf_counter()
        warnings = video_warnings(path, pred)
        for w in warnings:
            warn(w)
        written = write_video_outputs(args, path, name, pred, layout, staging)
        outputs.publish(written)
    t2 = time.perf_counter()
    n = len(pred)
    print_table(["stage", "seconds", "frames/s"], [["decode, track, predict", f"{t1 - t0:.1f}", f"{n / (t1 - t0):.1f}"],
                                                    ["outputs", f"{t2 - t1:.1f}", "-"]])
    print(f"{path}: {n} frames, face in {int(pred.face.sum())}, audio: {'yes' if pred.has_audio else 'no'}")
    for f in written:
        print(f"  {out / f}")
    return {"files": [str(out / f) for f in written], "warnings": warnings}
