"""Scoring a submission against the annotations of a split (utils.metrics.score)."""

from __future__ import annotations

import logging
from pathlib import Path

from app.submission.coverage import describe_partial, partial_tracks, unpredicted
from app.submission.formats import SubmissionError, preview
from app.submission.read import read_predictions, submission_kind
from data.annotations import (
    MTL_FILES,
    TrackLabels,
    find_mtl_file,
    fit_length,
    pad_or_truncate,
    read_annotations,
    read_mtl_file,
)
from tasks import AU_NAMES_12, EXPR_NAMES_8, VAL_SPLIT, Edition, canonical_split, get_edition
from utils.metrics import score

log = logging.getLogger(__name__)

# An MTL file asked to be scored under an edition that cannot score it (7 classes, 8 AUs, accuracy terms) is scored
# with this one; abaw3 and abaw4 compute the same P, and abaw3 is the name earlier results carry.
MTL_FALLBACK = "abaw3"


def score_submission(pred_path: str | Path, annotations: str | Path, edition: str | Edition,
                     split: str = VAL_SPLIT, allow_partial: bool = False) -> dict:
    """Score a submission against the annotations of ``split`` (see utils.metrics.score for the result).

    Per-video files: each annotation track is fitted to the prediction's length (one line per frame).
    Single files: only the listed rows are scored, against the uni-task folders; an MTL file is scored
    against the multi-task annotation file with the P of ABAW3/4 (``mtl_edition``). A submission that leaves
    more labelled frames of a track unpredicted than app.submission.coverage tolerates is a SubmissionError
    unless ``allow_partial``.
    """
    split = canonical_split(split)
    kind = submission_kind(pred_path)
    preds = read_predictions(pred_path, edition)
    if kind == "MTL":
        edition = mtl_edition(edition)
        mtl = find_mtl_file(annotations, split)
        if mtl is None:
            raise SubmissionError(f"{annotations}: no {MTL_FILES[split]} to score the MTL submission against")
        truths = read_mtl_file(mtl, split)
    else:
        truths = read_annotations(annotations, (split,), tasks=tuple(preds))
    pairs = {task: align(pred_path, task, preds[task], truths.get(task, {}), annotations, split,
                         per_video=kind == "per_video", allow_partial=allow_partial) for task in preds}
    return score({t: p for t, (p, _) in pairs.items()}, {t: lab for t, (_, lab) in pairs.items()}, edition)


def mtl_edition(edition: str | Edition) -> Edition:
    """The edition an MTL file is scored with: the one asked for when it scores the file's 8 classes and 12 AUs
    by F1 alone (abaw3, abaw4: the same P), else ``MTL_FALLBACK``, with a note."""
    ed = get_edition(edition)
    fits = (ed.expr_names, ed.au_names) == (EXPR_NAMES_8, AU_NAMES_12)
    if fits and ed.expr_weights == ed.au_weights == (1.0, 0.0):
        return ed
    log.warning("note: an MTL submission is scored with the %s metrics, not %s's", MTL_FALLBACK, ed.name)
    return get_edition(MTL_FALLBACK)


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
