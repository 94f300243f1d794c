"""Split mode of test_val_aff2.py: every source frame of every track of a split, as submission files.

Every frame goes through the one inference path (``app.inference``: batched samples over the database,
each crop decoded once), the model's decision profile maps its scores to the edition's outputs
(``utils.outputs.decide``), and the edition's submission files are written together with the raw per-frame
scores, checked with the submission checker, and on val scored with the official metrics. Frames without
a face keep the model's own prediction unless ``--faceless fill`` or ``hold`` (``inference.fill_faceless``).
Track names from the database become file names only after ``utils.paths.safe_component`` accepted them.

Formats (``--format``, 'auto' = the edition's own): per-video folders (2020–2022), one file per task (2023+),
or one multi-task file (``submission/MTL_predictions.txt``, abaw4): its rows are the images the split lists
(val: the validation multi-task annotation file; test: the multi-task test lists, else every frame), so
those decide the tracks predicted.

The files are written as one set (``utils.output_set``): staged in a hidden folder inside ``--out``, moved
into place together once complete, replacing only the files of the same kind of an earlier run; whatever
else ``--out`` holds is never touched.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from app import inference
from app.submission import (
    check_submission,
    listed_images,
    read_test_list,
    score_submission,
    write_mtl,
    write_per_video,
    write_single_file,
)
from data.annotations import MTL_FILES, find_mtl_file, length_tolerance, read_test_lists, task_of_list
from data.reader import open_store
from data.tracks import split_tracks, stored_tracks, unlabelled_tracks
from models.base import model_layout
from models.registry import load_model
from tasks import (
    AU_NAMES_12,
    BLOCK_OF_TASK,
    TASKS,
    VAL_SPLIT,
    Edition,
    MissingAUError,
    OutputLayout,
    get_edition,
    layout_au_columns,
)
from utils.dist import pick_device
from utils.metrics import format_scores, total_score, write_json
from utils.output_set import OutputSet
from utils.outputs import decide
from utils.paths import safe_component
from utils.tables import print_table

SPLIT_FAMILY = ["submission", "raw", "scores.json"]  # what a split run writes into --out


class PredictError(ValueError):
    """Unusable input for prediction (one line, naming what is wrong)."""


def load_checkpoint_model(path: str, device: torch.device, decision: str = "auto",
                          audio_window: str = "auto") -> torch.nn.Module:
    """The model of a checkpoint (train.py's, or a published file) on ``device``, in eval mode, with its decision
    profile and audio window: its own (a published file: its authors'; see models.registry.load_model) unless
    ``decision`` / ``audio_window`` name another. Prints what it runs with."""
    model = load_model(path).to(device)
    if decision != "auto":
        model.decision = decision
    spec = getattr(model, "input_spec", None)
    if audio_window != "auto" and spec is not None and spec.has_audio:
        model.input_spec = replace(spec, audio_window=audio_window)
    window = f", audio window {model.input_spec.audio_window}" if spec is not None and spec.has_audio else ""
    print(f"{path}: {getattr(model, 'arch', type(model).__name__)}, layout {model_layout(model).name}, "
          f"decisions {model.decision}{window}")
    return model


def check_serves(layout: OutputLayout, edition: Edition) -> None:
    """PredictError when the layout lacks an AU the edition scores."""
    if not layout.has("au"):
        return
    try:
        layout_au_columns(layout, edition)
    except MissingAUError as e:
        raise PredictError(f"a checkpoint with layout {layout.name!r} cannot serve {edition.name}: it has no "
                           f"output for {','.join(e.missing)}") from None


def served_tasks(wanted: dict[str, list[str]], layout: OutputLayout) -> dict[str, list[str]]:
    """The split's tasks the layout has outputs for (a model may have only some tasks); none is an error."""
    served = {task: ts for task, ts in wanted.items() if layout.has(BLOCK_OF_TASK[task])}
    if not served:
        raise PredictError(f"a checkpoint with layout {layout.name!r} has no output for the tasks of this split "
                           f"({', '.join(wanted)})")
    return served


def post_process(preds: dict[str, np.ndarray], face: np.ndarray, args: argparse.Namespace) -> dict[str, np.ndarray]:
    """The writers' options on per-frame scores: ``--faceless fill|hold``, then ``--smooth``."""
    if args.faceless in inference.FACELESS_RULES:
        preds = inference.fill_faceless(preds, face, args.faceless)
    return inference.smooth(preds, args.smooth)


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


# --- the submission files of a split run ----------------------------------------------------------
MTL_FILE = "MTL_predictions.txt"  # the multi-task submission inside submission/


def submission_format(fmt: str, edition: Edition) -> str:
    """``--format``: 'auto' is the edition's own format (abaw4: mtl; the others: per-video)."""
    return edition.submission if fmt == "auto" else fmt


def check_mtl_serves(layout: OutputLayout, edition: Edition) -> None:
    """PredictError unless the model has all three tasks and the edition the MTL file's 12 AUs."""
    missing = [task for task in TASKS if not layout.has(BLOCK_OF_TASK[task])]
    if missing:
        raise PredictError(f"an MTL submission needs VA, EXPR and AU outputs: a checkpoint with layout "
                           f"{layout.name!r} has none for {', '.join(missing)}")
    if edition.au_names != AU_NAMES_12:
        raise PredictError(f"an MTL submission holds 12 AUs; {edition.name} has {len(edition.au_names)}: "
                           "use --edition abaw4")


def merge_listed(into: dict[str, list[int] | None], more: dict[str, list[int] | None]) -> None:
    """Add ``more`` to ``into`` ({track: frames}, None = every frame, which absorbs any list)."""
    for track, frames in more.items():
        if frames is None or (track in into and into[track] is None):
            into[track] = None
        else:
            into[track] = sorted(set(into.get(track) or ()) | set(frames))


def mtl_images(args: argparse.Namespace) -> dict[str, list[int]]:
    """{track: the frames its rows list} of an MTL submission of the split, checked before any work.

    val: the images of the validation multi-task file of ``--annotations``; test: the multi-task lists among
    ``--test-lists`` (a list whose file name names one task is for that task only), else every frame of every
    unlabelled track. Every track must be in the database. Listed frames past a track's last frame (official
    frame numbers can run a few frames past our decoding) get its last frame's decisions (``hold_last``);
    more than ``data.annotations.length_tolerance`` of them is an error.
    """
    db = open_store(args.db)
    listed: dict[str, list[int] | None] = {}
    if args.split == "val":
        f = find_mtl_file(args.annotations, VAL_SPLIT)
        if f is None:
            raise PredictError(f"{args.annotations}: no {MTL_FILES[VAL_SPLIT]} (--annotations): the MTL "
                               "submission of val lists its images")
        merge_listed(listed, dict(listed_images(f)))
    elif args.test_lists:
        for f in args.test_lists:
            if task_of_list(f) is None:
                merge_listed(listed, read_test_list(f))
        if not listed:
            raise PredictError("--test-lists: no multi-task list (a list named for VA, EXPR or AU is for that "
                               "task only)")
    else:
        listed = {track: None for track in unlabelled_tracks(db)}
    if not listed:
        raise PredictError(f"{args.db}: no track in the {args.split} split")
    counts = {t.name: int(t.video_meta.get("frames", 0)) for t in stored_tracks(db)}
    missing = sorted(set(listed) - set(counts))
    if missing:
        raise PredictError(f"MTL rows of tracks not in {args.db}: {', '.join(missing[:10])}")
    images = {}
    for track, frames in sorted(listed.items()):
        n = counts[track]
        images[track] = list(range(1, n + 1)) if frames is None else list(frames)
        if max(images[track], default=0) - n > length_tolerance(n):
            raise PredictError(f"{track}: images listed up to frame {max(images[track])}, but it has {n} frames")
    return images


def hold_last(subs: dict[str, dict[str, np.ndarray]], images: dict[str, list[int]]) -> None:
    """Extend each track's decisions in ``subs`` to its last listed frame by repeating its last frame's."""
    for track, frames in images.items():
        n = len(subs["VA"][track])
        past = max(frames, default=0) - n
        if past > 0:
            print(f"note: {track}: {past} listed images past its {n} frames hold the last frame's decisions")
            for per_track in subs.values():
                last = per_track[track][-1:]
                per_track[track] = np.concatenate([per_track[track], np.repeat(last, past, axis=0)])


def write_submission(folder: Path, preds: dict[str, dict[str, np.ndarray]], edition: Edition, fmt: str,
                     images: dict[str, list[int]] | None = None) -> Path:
    """Write the submission of ``fmt`` (per-video folders, a file per task, or the MTL file of ``images``)."""
    if fmt == "per-video":
        return write_per_video(folder, preds, edition)
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "mtl":
        write_mtl(folder / MTL_FILE, preds, images)
        return folder
    for task, tracks in preds.items():
        write_single_file(folder / f"{task}_predictions.txt", task, tracks)
    return folder


def submission_parts(folder: Path, fmt: str, tasks: list[str]) -> list[tuple[Path, list[str]]]:
    """The submission as the checker and the scorer take it: (path, its tasks), the folder or each file."""
    if fmt == "per-video":
        return [(folder, tasks)]
    if fmt == "mtl":
        return [(folder / MTL_FILE, tasks)]
    return [(folder / f"{task}_predictions.txt", [task]) for task in tasks]


def check_parts(parts: list[tuple[Path, list[str]]], edition: Edition, expected: dict) -> list:
    return [p for path, tasks in parts for p in check_submission(path, edition, {t: expected[t] for t in tasks})]


def score_parts(parts: list[tuple[Path, list[str]]], annotations: str, edition: Edition) -> dict:
    """The val scores of the submission; of files per task: their task scores together, with their total."""
    if len(parts) == 1:
        return score_submission(parts[0][0], annotations, edition, VAL_SPLIT)
    out: dict = {"edition": edition.name}
    for path, _ in parts:
        scores = score_submission(path, annotations, edition, VAL_SPLIT)
        out.update({key: scores[key] for key in ("va", "expr", "au") if key in scores})
    out["total"] = total_score(out)
    return out


def run_split(args: argparse.Namespace) -> dict:
    """The split mode; returns {'out', 'frames', 'seconds', 'problems', 'scores'}."""
    device = pick_device(args.device)
    model = load_checkpoint_model(args.checkpoint, device, args.decision, args.audio_window)
    layout = model_layout(model)
    edition = get_edition(args.edition)
    fmt = submission_format(args.format, edition)
    check_serves(layout, edition)  # fail before any work
    images = None
    if fmt == "mtl":  # one file for every task: the rows it lists decide the tracks
        check_mtl_serves(layout, edition)
        images = mtl_images(args)
        wanted = {task: sorted(images) for task in TASKS}
    else:
        wanted = served_tasks(tracks_of_split(args.db, args.split, args.test_lists), layout)
    wanted = select_tracks(wanted, args.tracks, args.split, args.db)
    tracks = sorted({t for ts in wanted.values() for t in ts})
    check_track_names(tracks, args.db)
    out = Path(args.out)
    outputs = OutputSet(out, "split", SPLIT_FAMILY, split_user_paths(args),
                        legacy=[legacy_split_staging(out)])
    with outputs as staging:
        subs, rows, frames, seconds = predict_tracks(args, model, device, edition, wanted, tracks, staging)
        if images is not None:
            images = {t: images[t] for t in tracks}
        problems, scores, written = finish_submission(staging, subs, edition, fmt, images, wanted, args)
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


def select_tracks(wanted: dict[str, list[str]], only: list[str] | None, split: str, db: str
                  ) -> dict[str, list[str]]:
    """``--tracks``: {task: tracks} kept to those tracks (None: all); PredictError for one not in the split."""
    if only is None:
        return wanted
    unknown = sorted(set(only) - {t for ts in wanted.values() for t in ts})
    if unknown:
        raise PredictError(f"--tracks: not in the {split} split of {db}: {', '.join(unknown)}")
    kept = {task: [t for t in ts if t in only] for task, ts in wanted.items()}
    return {task: ts for task, ts in kept.items() if ts}


def finish_submission(staging: Path, subs: dict[str, dict[str, np.ndarray]], edition: Edition, fmt: str,
                      images: dict[str, list[int]] | None, wanted: dict[str, list[str]], args: argparse.Namespace
                      ) -> tuple[list, dict | None, list[str]]:
    """Write the decisions ``subs`` as the split's submission in ``staging``, check it, and on val score it (before
    anything is swapped in: a failure leaves the old output); → (problems, scores or None, names to publish).
    Shared by the split mode and the late fusion (app/fusion.py)."""
    if images is not None:
        hold_last(subs, images)
    write_submission(staging / "submission", subs, edition, fmt, images)
    expected = {task: {t: images[t] if images is not None else len(subs[task][t]) for t in ts}
                for task, ts in wanted.items()}
    parts = submission_parts(staging / "submission", fmt, list(wanted))
    problems = check_parts(parts, edition, expected)
    written = ["submission"] + ([] if args.no_raw else ["raw"])
    scores = None
    if args.split == "val":
        scores = score_parts(parts, args.annotations, edition)
        write_json(scores, staging / "scores.json")
        written.append("scores.json")
    return problems, scores, written


def predict_tracks(args: argparse.Namespace, model: torch.nn.Module, device: torch.device, edition: Edition,
                   wanted: dict[str, list[str]], tracks: list[str], staging: Path
                   ) -> tuple[dict[str, dict[str, np.ndarray]], list[list], int, float]:
    """Predict every track; raw scores go to ``staging/raw``. Returns (per task and track the edition's
    decisions, the table rows, frames, seconds)."""
    layout = model_layout(model)
    subs: dict[str, dict[str, np.ndarray]] = {task: {} for task in wanted}
    rows, frames, t0 = [], 0, time.perf_counter()
    for track in tqdm(tracks, desc=f"predict {args.split}", unit="track", dynamic_ncols=True):
        t1 = time.perf_counter()
        source = inference.db_track_source(args.db, track)
        preds = inference.predict_source(model, source, batch_size=args.batch_size, chunk=args.chunk,
                                         workers=args.workers, device=device, amp=args.amp,
                                         channels_last=args.channels_last, flip_tta=args.flip_tta)
        preds = post_process(preds, source.face, args)
        decoded = decide(preds, layout, edition, model.decision, args.au_threshold)
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
