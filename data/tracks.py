"""Which tracks a database holds and in which split each task labels them (from the records of data.store).

Only the tracks of completely built videos (status "ok") count: a failed video has no frames to read.
The datasets, prediction and the submission writer all ask these questions here, the same way.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass

from data import store
from tasks import TASKS


@dataclass(frozen=True)
class StoredTrack:
    """One track of a built video: its video's record and its labels' records ({task: {"split", ...}})."""

    name: str
    video: str
    video_meta: dict
    labels: dict[str, dict]

    def tasks_in(self, split: str | None) -> dict[str, dict]:
        """The label records of the tasks labelled in ``split`` (every labelled task for None)."""
        return {task: rec for task, rec in self.labels.items() if split is None or rec.get("split") == split}


def stored_tracks(db: store.Store, wanted: Collection[str] | None = None) -> Iterator[StoredTrack]:
    """Every track of every video built without failure, in video-name order; only ``wanted`` ones if given."""
    for video in db.video_names():
        meta = db.video_meta(video) or {}
        if meta.get("status") != "ok":
            continue
        for name in meta.get("tracks", []):
            if wanted is None or name in wanted:
                yield StoredTrack(name, video, meta, (db.track_meta(name) or {}).get("labels", {}))


def split_tracks(db: store.Store, split: str) -> dict[str, list[str]]:
    """{task: sorted tracks labelled in ``split`` for that task}; tasks without any track are left out."""
    out: dict[str, list[str]] = {task: [] for task in TASKS}
    for track in stored_tracks(db):
        for task in track.tasks_in(split):
            if task in out:
                out[task].append(track.name)
    return {task: sorted(names) for task, names in out.items() if names}


def unlabelled_tracks(db: store.Store) -> list[str]:
    """Sorted tracks without any label (e.g. the test tracks of a database built without test lists)."""
    return sorted(track.name for track in stored_tracks(db) if not track.labels)
