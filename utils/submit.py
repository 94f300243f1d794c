"""Predictions for a whole split (submission files, checked and scored) or for any one video file.

Split mode: every source frame of every track of the split, through ``utils.infer`` (batched sliding
windows over the database), mapped to the edition's outputs, written as the edition's submission files
together with the raw per-frame outputs, checked with the submission checker, and on val scored with
the official metrics. The output folder is assembled under a hidden name and renamed when complete.

Video mode: the preprocessing stages run in memory on one file (decode, track, align, masks, log-mel),
then the same inference; a per-frame CSV (one row per decoded frame), a timeline plot and, on request,
an overlay MP4 are written.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data import audio, masks, video
from data.annotations import TASKS
from data.clips import ClipConfig, open_store
from models.tsav import OutputLayout, get_layout, model_layout
from utils import infer, video_report
from utils.metrics import Edition, format_scores, get_edition, write_json
from utils.predict import edition_au_columns, load_model, split_tracks
from utils.submission import (
    check_submission,
    read_test_list,
    score_submission,
    swap_in,
    task_of_list,
    write_per_video,
    write_single_file,
)


class PredictError(ValueError):
    """Unusable input for prediction (one line, naming what is wrong)."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def serve_columns(layout: OutputLayout, edition: Edition) -> tuple[int, list[int]]:
    """(EXPR classes to argmax over, AU columns of the layout in the edition's order); error if impossible."""
    try:
        au_cols = edition_au_columns(layout, edition)
    except ValueError:
        missing = [a for a in edition.au_names if a not in layout.au_names]
        raise PredictError(f"a checkpoint with layout {layout.name!r} cannot serve {edition.name}: it has no "
                           f"output for {','.join(missing)}") from None
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
    metas = (db.video_meta(v) for v in db.video_names())
    in_db = {t for meta in metas if meta.get("status") == "ok" for t in meta.get("tracks", [])}
    if not test_lists:
        unlabelled = sorted(t for t in in_db if not (db.track_meta(t) or {}).get("labels"))
        return {task: unlabelled for task in TASKS} if unlabelled else {}
    out: dict[str, set[str]] = {}
    for f in test_lists:
        tracks = sorted(read_test_list(f))
        missing = [t for t in tracks if t not in in_db]
        if missing:
            raise PredictError(f"{f}: tracks not in {db_path}: {', '.join(missing[:10])}")
        list_task = task_of_list(f)
        for task in [list_task] if list_task else TASKS:
            out.setdefault(task, set()).update(tracks)
    return {task: sorted(v) for task, v in out.items()}


def tracks_of_split(db_path: str, split: str, test_lists: list[str]) -> dict[str, list[str]]:
    wanted = split_tracks(db_path, "Validation_Set") if split == "val" else test_tracks(db_path, test_lists)
    if not wanted:
        raise PredictError(f"{db_path}: no track in the {split} split")
    return wanted


def stage_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    return staging


def write_submission(folder: Path, preds: dict[str, dict[str, np.ndarray]], edition: Edition, fmt: str) -> Path:
    if fmt == "per-video":
        return write_per_video(folder, preds, edition)
    folder.mkdir(parents=True, exist_ok=True)
    for task, tracks in preds.items():
        write_single_file(folder / f"{task}_predictions.txt", task, tracks)
    return folder


def print_rows(rows: list[list], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for r in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))


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
    out = Path(args.out)
    staging = stage_dir(out)
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
            save_npz(staging / "raw" / f"{track}.npz", preds, source, layout)
        seconds = time.perf_counter() - t1
        frames += len(source)
        rows.append([track, len(source), int(source.face.sum()), f"{seconds:.1f}", f"{len(source) / seconds:.1f}"])
    write_submission(staging / "submission", subs, edition, args.format)
    seconds = time.perf_counter() - t0
    expected = {task: {t: len(subs[task][t]) for t in ts} for task, ts in wanted.items()}
    problems = check_submission(staging / "submission", edition, expected)
    swap_in(staging, out)  # the old output is removed only after the swap
    print_rows(rows, ["track", "frames", "faces", "seconds", "frames/s"])
    print(f"\n{len(tracks)} tracks, {frames} frames in {seconds:.1f} s ({frames / seconds:.1f} frames/s) → "
          f"{out / 'submission'}; checker: {len(problems)} problem(s)")
    for p in problems:
        print(p)
    result = {"out": str(out), "frames": frames, "seconds": seconds, "problems": [str(p) for p in problems]}
    if args.split == "val":
        scores = score_submission(out / "submission", args.annotations, edition, "Validation_Set")
        write_json(scores, out / "scores.json")
        print(format_scores(scores))
        result["scores"] = scores
    return result


def save_npz(path: Path, preds: dict[str, np.ndarray], source: infer.TrackSource, layout: OutputLayout) -> None:
    """Raw per-frame outputs for ensembling: logits, probabilities, VA, frame times and face flags."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, times=source.times, face=source.face, layout=layout.name,
                        expr_names=np.array(layout.expr_names), au_names=np.array(layout.au_names), **preds)


# --- any video ------------------------------------------------------------------------------------
class ArrayWriter:
    """Collects one track's aligned frames in memory (the ``TrackWriter`` interface of data.build)."""

    def __init__(self, mask: str):
        self.mask = mask
        self.frames: list[np.ndarray] = []
        self.face: list[bool] = []
        self.confidence: list[float] = []
        self.affines: list[np.ndarray] = []

    def add(self, index: int, crop: np.ndarray | None, lm_crop: np.ndarray | None, conf: float = 0.0,
            affine: np.ndarray | None = None) -> None:
        frame = np.zeros((112, 112, 4), np.uint8)
        if crop is not None:
            frame[..., :3] = crop
            frame[..., 3] = masks.render(self.mask, lm_crop)  # as a database reader would draw it
        self.frames.append(frame)
        self.face.append(crop is not None)
        self.confidence.append(conf if crop is not None else 0.0)
        self.affines.append(np.full((2, 3), np.nan) if affine is None else np.asarray(affine, float))


def preprocess_video(path: str, clip: ClipConfig, detector: str, detect_every: int) -> tuple[infer.TrackSource,
                                                                                             ArrayWriter]:
    """Decode, track, align and render one video in memory; one person (the most prominent face)."""
    from data import build

    name = Path(path).stem
    writer = ArrayWriter(clip.mask)
    times: list[float] = []
    job = build.VideoJob(str(path), name, [name])
    opts = build.BuildOptions(masks=(clip.mask,), detector=detector, detect_every=detect_every)
    build.run_detection(job, opts, {name: writer}, build.Timer(), times)
    if not times:
        raise PredictError(f"{path}: no frames decoded")
    sound = video.read_audio(path, audio.SR) if video.probe(path).has_audio else None
    mel = audio.logmel_db(sound, audio.SR) if sound is not None else None
    source = infer.TrackSource(name, np.asarray(times), np.asarray(writer.face, bool), mel,
                               frames=np.stack(writer.frames))
    return source, writer


def run_video(args: argparse.Namespace) -> dict:
    """The any-video mode; returns the paths it wrote."""
    path = Path(args.video)
    if not path.is_file():
        raise PredictError(f"{path}: no such video file")
    device = pick_device(args.device)
    model, clip = load_model(args.checkpoint)
    model.to(device)
    layout = get_layout(model_layout(model))
    t0 = time.perf_counter()
    source, writer = preprocess_video(str(path), clip, args.detector, args.detect_every)
    t1 = time.perf_counter()
    preds = infer.predict_source(model, source, clip, args.batch_size, args.chunk, 0, device, args.amp,
                                 args.channels_last, args.flip_tta)
    preds = infer.smooth(preds, args.smooth)
    t2 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = path.stem
    written = {
        "csv": video_report.write_frame_csv(out / f"{name}.csv", source.times, source.face,
                                            np.asarray(writer.confidence), preds, layout.expr_names,
                                            layout.au_names, args.au_threshold),
        "plot": video_report.plot_timeline(out / f"{name}_timeline.png", source.times, source.face, preds,
                                           layout.expr_names, layout.au_names, args.au_threshold, title=name),
    }
    if not args.no_raw:
        npz = out / f"{name}.npz"
        tmp = out / f".{name}.partial.npz"
        save_npz(tmp, preds, source, layout)
        os.replace(tmp, npz)
        written["raw"] = npz
    if args.overlay:
        boxes = video_report.face_boxes(np.stack(writer.affines))
        written["overlay"] = video_report.write_overlay(path, out / f"{name}_overlay.mp4", boxes, preds,
                                                        layout.expr_names, layout.au_names, args.au_threshold)
    t3 = time.perf_counter()
    n = len(source)
    print_rows([["preprocess", f"{t1 - t0:.1f}", f"{n / (t1 - t0):.1f}"],
                ["model", f"{t2 - t1:.1f}", f"{n / (t2 - t1):.1f}"],
                ["outputs", f"{t3 - t2:.1f}", "-"]], ["stage", "seconds", "frames/s"])
    print(f"{path}: {n} frames, face in {int(source.face.sum())}")
    for kind, p in written.items():
        print(f"  {kind:8s} {p}")
    return {k: str(v) for k, v in written.items()}
