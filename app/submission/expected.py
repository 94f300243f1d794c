"""What a submission must cover: tracks from test lists or annotations, frames from lists or videos."""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from app.submission.formats import SubmissionError, preview, track_and_frame
from app.submission.read import submission_kind_or_none, submission_tasks
from data.annotations import MTL_FILES, find_mtl_file, read_annotations, read_video_list, task_of_list
from tasks import TASKS, VAL_SPLIT, canonical_split


def listed_images(path: str | Path) -> dict[str, list[int]]:
    """{track: frame numbers} from the first column of a file of ``video/00001.jpg`` rows (a first line
    without '/' is a header); SubmissionError naming the line for any other (``../../x/00001.jpg``)."""
    path = Path(path)
    out: dict[str, list[int]] = {}
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        image = line.split(",")[0].strip()
        if not image or image.startswith("#") or (i == 1 and "/" not in image):
            continue
        try:
            track, frame = track_and_frame(image)
        except ValueError as e:
            raise SubmissionError(f"{path}:{i}: {e}") from None
        out.setdefault(track, []).append(frame)
    return out


def read_test_list(path: str | Path) -> dict[str, list[int] | None]:
    """{track: listed frames} for a list of images, {track: None} for a list of video/track names."""
    names = read_video_list(path)
    if any("/" in n for n in names):
        return dict(listed_images(path))
    return {n: None for n in names}


def expected_for_check(sub_path: str | Path, annotations: str | Path | None, split: str = VAL_SPLIT,
                       videos: list[str] | None = None, test_lists: list[str] | None = None) -> dict:
    """{task: {track: frame count or frame numbers}} a submission must cover.

    Tracks: from the test lists (a list is for the task its file name names, else for every task) or
    the annotation split. Frames: listed images where a list or the MTL annotation names them, else the
    decoded frame count of each video (``videos``), else the annotation's line count.
    """
    tasks = submission_tasks(sub_path)
    if test_lists:
        want: dict[str, dict] = {}
        for f in test_lists:
            task = task_of_list(f)
            for t in tasks if task is None else [task] if task in tasks else []:
                want.setdefault(t, {}).update(read_test_list(f))
    elif submission_kind_or_none(sub_path) == "MTL":
        mtl = find_mtl_file(annotations, split)
        if mtl is None:
            name = MTL_FILES[canonical_split(split)]
            raise SubmissionError(f"{annotations}: no {name} for an MTL submission")
        images = listed_images(mtl)
        want = {t: dict(images) for t in TASKS}
    else:
        labels = read_annotations(annotations, (split,), tasks=tasks)
        want = {t: {track: len(lab) for track, lab in labels[t].items()} for t in tasks if labels[t]}
        if not want:
            raise SubmissionError(f"{annotations}: no annotations of {split} for {', '.join(tasks)}")
    counted = sorted({tr for per in want.values() for tr, v in per.items() if not isinstance(v, list)})
    if videos:
        counts = video_frame_counts(counted, videos)
        want = {t: {tr: v if isinstance(v, list) else counts[tr] for tr, v in per.items()}
                for t, per in want.items()}
    elif any(v is None for per in want.values() for v in per.values()):
        raise SubmissionError("the test lists name tracks, not frames: give --videos to count their frames")
    return want


def index_videos(dirs: Iterable[str | Path]) -> dict[str, Path]:
    """{file stem: path} of every video file under ``dirs`` (searched recursively); names must be unique."""
    from data.video import find_videos

    try:
        return find_videos(list(dirs))
    except (FileNotFoundError, ValueError) as e:
        raise SubmissionError(str(e)) from None


def find_track_video(track: str, index: dict[str, Path]) -> Path | None:
    """The video of a track: ``<video>`` itself, or ``<video>_left``/``_right`` → ``<video>``."""
    from data.video import video_of_track

    return index.get(track) or index.get(video_of_track(track))


def count_frames(video: str | Path) -> int:
    """Number of decoded video frames (decoding, not the container's possibly wrong frame count)."""
    from data.video import VideoError, read_frame_times  # only this path needs PyAV

    try:
        return len(read_frame_times(video, decode=True))
    except VideoError as e:
        raise SubmissionError(str(e)) from None


def video_frame_counts(tracks: list[str], dirs: Iterable[str | Path]) -> dict[str, int]:
    """{track: decoded frame count}; each video is decoded once, several in parallel."""
    index = index_videos(dirs)
    videos = {track: find_track_video(track, index) for track in tracks}
    missing = sorted(t for t, v in videos.items() if v is None)
    if missing:
        raise SubmissionError(f"no video file (.mp4/.avi) for tracks: {preview(missing)}")
    unique = sorted(set(videos.values()))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        counts = dict(zip(unique, pool.map(count_frames, unique)))
    return {track: counts[v] for track, v in videos.items()}
