"""--video mode of test_val_aff2.py: any one video file → per-frame predictions, CSV, timeline plot, overlay.

The file is decoded, tracked, aligned and predicted chunk by chunk (``app.video_stream``: memory does not
grow with the video's length); the model's decision profile makes the decisions in its own classes and
AUs (``utils.outputs.decide_layout``); a per-frame CSV (one row per decoded frame), a timeline plot, the
raw scores and, on request, an overlay MP4 are written as one set (``utils.output_set``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from app import video_report, video_stream
from app.split_run import PredictError, load_checkpoint_model, post_process, save_npz
from models.base import model_layout
from utils.dist import pick_device
from utils.output_set import OutputSet
from utils.outputs import decide_layout
from utils.tables import print_table


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
                        model: torch.nn.Module, staging: Path) -> list[str]:
    """The video's files in the staging folder; returns their names."""
    layout = model_layout(model)
    preds = pred.preds if pred.face.any() else None  # no face anywhere: nothing to predict from
    decisions = decide_layout(preds, layout, model.decision, args.au_threshold) if preds is not None else None
    names = layout.expr_names, layout.au_names
    video_report.write_frame_csv(staging / f"{name}.csv", pred.times, pred.face, pred.confidence, preds, decisions,
                                 *names, has_audio=pred.has_audio)
    written = [f"{name}.csv"]
    if preds is None:
        return written
    video_report.plot_timeline(staging / f"{name}_timeline.png", pred.times, pred.face, preds, decisions, *names,
                               title=name)
    written.append(f"{name}_timeline.png")
    if not args.no_raw:
        save_npz(staging / f"{name}.npz", preds, pred.times, pred.face, layout)
        written.append(f"{name}.npz")
    if args.overlay:
        boxes = video_report.face_boxes(pred.affines)
        video_report.write_overlay(path, staging / f"{name}_overlay.mp4", boxes, preds, decisions, *names)
        written.append(f"{name}_overlay.mp4")
    return written


def run_video(args: argparse.Namespace) -> dict:
    """The any-video mode; returns the paths it wrote and its warnings."""
    path = Path(args.video)
    if not path.is_file():
        raise PredictError(f"{path}: no such video file")
    device = pick_device(args.device)
    model = load_checkpoint_model(args.checkpoint, device, args.decision, args.audio_window)
    out, name = Path(args.out), path.stem
    outputs = OutputSet(out, f"{name}.video", video_family(name), {"--video": path, "--checkpoint": args.checkpoint},
                        legacy=legacy_video_temps(out, name))
    t0 = time.perf_counter()
    with outputs as staging:
        pred = video_stream.predict_video(str(path), model, args.detector, args.detect_every, args.batch_size,
                                          args.chunk, device, args.amp, args.channels_last, args.flip_tta)
        pred.preds = post_process(pred.preds, pred.face, args)
        t1 = time.perf_counter()
        warnings = video_warnings(path, pred)
        for w in warnings:
            warn(w)
        written = write_video_outputs(args, path, name, pred, model, staging)
        outputs.publish(written)
    t2 = time.perf_counter()
    n = len(pred)
    print_table(["stage", "seconds", "frames/s"], [["decode, track, predict", f"{t1 - t0:.1f}", f"{n / (t1 - t0):.1f}"],
                                                    ["outputs", f"{t2 - t1:.1f}", "-"]])
    print(f"{path}: {n} frames, face in {int(pred.face.sum())}, audio: {'yes' if pred.has_audio else 'no'}")
    for f in written:
        print(f"  {out / f}")
    return {"files": [str(out / f) for f in written], "warnings": warnings}
