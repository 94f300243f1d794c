"""Planning a build: which videos, their tracks, labels, splits and importer, and the build options.

``collect_jobs`` finds the videos, reads the annotations and test lists (``plan_jobs``: one
``VideoJob`` per video) and picks each video's importer: a TSAV pickle per track (``tsav``), an
official ``cropped_aligned/<track>/`` folder per track (``cropped_aligned``), else face detection.
``select_shard`` takes every N-th job for ``--shard K/N``. ``job_inputs`` is what a stored video must
have been built from for a resumed build to skip it (data/build.py).
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from data import chunks, store
from data.annotations import TrackLabels, read_annotations, read_test_lists
from data.video import TRACK_SUFFIXES, find_videos, video_of_track
from tasks import TEST_SPLIT

log = logging.getLogger("data.build")  # the build's logger: its lines read as before the split

CROP_FORMAT, CROP_QUALITY = "jpeg", 95  # TSAV's: JPEG quality 95
TSAV_PICKLE_SUFFIXES = (".pkl", "_alignment_mask.pkl")


@dataclass
class VideoJob:
    """What a worker needs for one video (plain data, picklable)."""

    path: str
    name: str
    tracks: list[str]
    labels: dict[str, dict[str, TrackLabels]] = field(default_factory=dict)  # track → task → labels
    splits: dict[str, dict[str, str]] = field(default_factory=dict)  # track → task → split (incl. test)
    source: str = "detect"  # detect | cropped_aligned | tsav
    cropped_dir: str | None = None  # cropped_aligned root
    tsav_pickles: dict[str, str] = field(default_factory=dict)  # track → its TSAV alignment pickle


@dataclass
class BuildOptions:
    masks: tuple[str, ...] = ()  # stored as PNG; readers draw the others from the landmarks
    detector: str = "hog"
    detect_every: int = 5
    limit_frames: int | None = None  # debugging: stop after this many frames
    crop_format: str = CROP_FORMAT
    crop_quality: int = CROP_QUALITY
    chunk_bytes: int = chunks.CHUNK_BYTES  # frame groups handed to the writer this often (bounds memory)
    store_pcm: bool = False  # also keep the int16 PCM (--store-pcm: the reference audio window needs it)

    def content(self) -> dict:
        """The options (besides masks, which the schema fixes) that change what is stored."""
        out = {"detector": self.detector, "detect_every": self.detect_every, "limit_frames": self.limit_frames}
        if (self.crop_format, self.crop_quality) != (CROP_FORMAT, CROP_QUALITY):
            out["crop"] = f"{self.crop_format}:{self.crop_quality}"
        if self.store_pcm:  # only when set: databases built before the flag keep their inputs (no rebuild)
            out["pcm"] = True
        return out


# --- discovering the work -------------------------------------------------------------------------
def plan_jobs(videos: dict[str, Path], annotations: Mapping[str, Mapping[str, TrackLabels]],
              test_tracks: Mapping[str, Iterable[str]] | Iterable[str] = ()) -> list[VideoJob]:
    """One job per video with its tracks (from annotations and test lists), labels and splits.

    ``test_tracks``: {track: tasks} from ``read_test_lists``, or just track names (no split info).
    Every video gets a job; a video that nothing names has the single track of its own name.
    """
    if not isinstance(test_tracks, Mapping):
        test_tracks = {t: () for t in test_tracks}
    tracks: dict[str, set[str]] = defaultdict(set)
    labels: dict[str, dict[str, dict[str, TrackLabels]]] = defaultdict(lambda: defaultdict(dict))
    splits: dict[str, dict[str, str]] = defaultdict(dict)
    for task, per_track in annotations.items():
        for track, lab in per_track.items():
            tracks[video_of_track(track)].add(track)
            labels[video_of_track(track)][track][task] = lab
            splits[track][task] = lab.split
    for track, tasks in test_tracks.items():
        tracks[video_of_track(track)].add(track)
        for task in tasks:
            if splits[track].get(task, TEST_SPLIT) != TEST_SPLIT:
                log.warning("%s: in a %s test list but annotated in %s; keeping the annotation", track, task,
                            splits[track][task])
                continue
            splits[track][task] = TEST_SPLIT
    unknown = sorted(v for v in tracks if v not in videos)
    if unknown:
        log.warning("%d annotated/listed videos have no video file: %s%s", len(unknown), ", ".join(unknown[:10]),
                    " ..." if len(unknown) > 10 else "")
    jobs = []
    for name, path in sorted(videos.items()):
        t = tracks.get(name) or {name}
        if any(x.endswith(TRACK_SUFFIXES) for x in t):
            # two people: a bare name would be ambiguous; keep only the left/right tracks
            dropped = sorted(t - {x for x in t if x.endswith(TRACK_SUFFIXES)})
            if dropped:
                log.warning("%s: has _left/_right tracks; ignoring the labels/listing of the bare track %s",
                            name, dropped[0])
            t = {x for x in t if x.endswith(TRACK_SUFFIXES)}
        jobs.append(VideoJob(str(path), name, sorted(t),
                             {k: dict(v) for k, v in labels[name].items() if k in t},
                             {k: dict(splits[k]) for k in sorted(t) if splits.get(k)}))
    return jobs


def select_shard(jobs: list[VideoJob], shard: tuple[int, int]) -> list[VideoJob]:
    k, n = shard
    return [j for i, j in enumerate(sorted(jobs, key=lambda j: j.name)) if i % n == k]


def find_tsav_pickle(folder: str | Path, track: str) -> Path | None:
    """``<track>.pkl`` or ``<track>_alignment_mask.pkl`` in ``folder``."""
    return next((p for s in TSAV_PICKLE_SUFFIXES if (p := Path(folder) / f"{track}{s}").is_file()), None)


def collect_jobs(video_dirs: list[str], annotations: str | None, test_lists: Iterable[str] = (),
                 cropped_aligned: str | None = None, tsav_alignment: str | None = None) -> list[VideoJob]:
    """Find videos, labels and test lists and attach the importer each video uses.

    A TSAV pickle is used when every track of the video has one (``<track>.pkl``); official crops
    when every track has a ``cropped_aligned/<track>/`` folder; other videos are detected (logged).
    """
    for flag, folder in (("--cropped-aligned", cropped_aligned), ("--tsav-alignment", tsav_alignment)):
        if folder and not Path(folder).is_dir():
            raise FileNotFoundError(f"{folder}: folder not found ({flag})")
    videos = find_videos(video_dirs)
    if not videos:
        raise FileNotFoundError(f"{', '.join(map(str, video_dirs))}: no .mp4/.avi videos found")
    labels = read_annotations(annotations) if annotations else {}
    jobs = plan_jobs(videos, labels, read_test_lists(test_lists))
    for job in jobs:
        if tsav_alignment:
            found = {t: find_tsav_pickle(tsav_alignment, t) for t in job.tracks}
            if all(found.values()):
                job.source, job.tsav_pickles = "tsav", {t: str(p) for t, p in found.items()}
            elif any(found.values()) or (len(job.tracks) > 1 and find_tsav_pickle(tsav_alignment, job.name)):
                log.warning("%s: TSAV pickles for some tracks only (need one per track of %s); detecting faces",
                            job.name, job.tracks)
        if cropped_aligned and job.source == "detect":
            if all((Path(cropped_aligned) / t).is_dir() for t in job.tracks):
                job.source, job.cropped_dir = "cropped_aligned", cropped_aligned
            else:
                log.info("%s: no cropped_aligned folder for every track %s; detecting faces", job.name, job.tracks)
    return jobs


def labels_digest(job: VideoJob) -> str:
    """Fingerprint of a job's labels and splits (so changed annotations cause a rebuild)."""
    h = hashlib.sha256()
    for track in sorted(job.labels):
        for task in sorted(job.labels[track]):
            lab = job.labels[track][task]
            h.update(f"{track}|{task}|{lab.split}|{','.join(lab.names)}|".encode())
            h.update(store.array_to_bytes(lab.values) + store.array_to_bytes(lab.valid))
    h.update(repr(sorted((t, sorted(s.items())) for t, s in job.splits.items())).encode())
    return h.hexdigest()[:16]


def job_inputs(job: VideoJob, opts: BuildOptions) -> dict:
    """What a stored video must have been built from to be skipped by this run (stored in its meta)."""
    return {"tracks": list(job.tracks), "importer": job.source, "labels": labels_digest(job), **opts.content()}
