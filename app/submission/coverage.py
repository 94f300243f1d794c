"""Whether a submission predicts the labelled frames it is scored on, or leaves some out (a partial one).

A per-video file has one line per frame, so labelled frames past its last line get no prediction; a
single file lists images, so labelled frames without a row get none. A few such frames per track are
normal (official label files differ from the decoded videos by a few lines); more than
``data.annotations.length_tolerance`` of the track's label lines means the submission is partial, and
scoring it as if it were complete would report a score for frames nobody predicted (a VA file of one
line per video scored 0.94). ``evaluate.py --pred`` refuses it unless ``--allow-partial``.
"""

from __future__ import annotations

import numpy as np

from data.annotations import (
    LENGTH_SLACK_FRACTION,
    LENGTH_SLACK_LINES,
    TrackLabels,
    length_tolerance,
    pad_or_truncate,
)


def labelled_frames(labels: TrackLabels) -> np.ndarray:
    """Per frame: whether it holds a valid label (for AU: any valid AU)."""
    return labels.valid if labels.valid.ndim == 1 else labels.valid.any(axis=1)


def listed_frames(pred: TrackLabels) -> np.ndarray:
    """Per frame of a single-file prediction: whether a row gives it (unlisted rows are all invalid)."""
    return pred.valid if pred.valid.ndim == 1 else pred.valid.all(axis=1)


def unpredicted(pred: TrackLabels, labels: TrackLabels, per_video: bool) -> int:
    """Labelled frames of ``labels`` that ``pred`` gives no prediction for."""
    labelled = labelled_frames(labels)
    if per_video:  # one line per frame: what lies past the last line is missing
        return int(labelled[len(pred):].sum())
    listed = listed_frames(pad_or_truncate(pred, len(labels)))
    return int((labelled & ~listed).sum())


def partial_tracks(preds: dict[str, TrackLabels], truths: dict[str, TrackLabels],
                   per_video: bool) -> dict[str, tuple[int, int]]:
    """{track: (labelled frames without prediction, labelled frames)} for the tracks beyond the tolerance."""
    out = {}
    for track in sorted(truths):
        labels = truths[track]
        missing = unpredicted(preds[track], labels, per_video)
        if missing > length_tolerance(len(labels)):
            out[track] = (missing, int(labelled_frames(labels).sum()))
    return out


def describe_partial(pred_path: object, task: str, partial: dict[str, tuple[int, int]], n_tracks: int,
                     shown: int = 5) -> str:
    """One line naming the partial tracks (the first ``shown``) and how much of each is unpredicted."""
    items = [f"{track} {missing} of {labelled}" for track, (missing, labelled) in list(partial.items())[:shown]]
    more = f" and {len(partial) - shown} more" if len(partial) > shown else ""
    return (f"{pred_path}: {task} predictions leave labelled frames without a prediction in {len(partial)} of "
            f"{n_tracks} tracks ({', '.join(items)}{more} labelled frames; up to {LENGTH_SLACK_LINES} or "
            f"{LENGTH_SLACK_FRACTION:.0%} of a track's lines is normal)")
