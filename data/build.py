"""Per-video pipeline → LMDB: decode, track faces, align, render masks, log-mel, labels.

One worker function turns a video (a ``VideoJob``) into a ``store.VideoRecord`` of plain bytes; the
main process is the only writer and commits each video in one transaction. Workers are separate
processes (``--workers N``); videos already complete in the database are skipped, so a killed run
is resumed by running the same command again. ``--shard K/N`` builds every N-th video so several
machines can share the work; ``merge`` combines the shard databases.

Two importers replace detection for users who already have it:
- ``cropped_aligned``: the official 112x112 crops; landmarks are fitted on the crop for the masks.
- ``tsav``: TSAV's per-video alignment pickles (per frame a 2x3 affine or None, plus 68 landmarks
  in crop coordinates).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from data import align, audio, masks, store, video
from data.annotations import TASKS, TrackLabels, fit_length, read_annotations, read_video_list
from data.video import TRACK_SUFFIXES, find_videos, video_of_track

log = logging.getLogger(__name__)

JPEG_QUALITY = 95
MASK_RENDERERS = {"tsav": masks.tsav_mask, "mtmt": masks.mtmt_mask}


@dataclass
class VideoJob:
    """What a worker needs for one video (plain data, picklable)."""

    path: str
    name: str
    tracks: list[str]
    labels: dict[str, dict[str, TrackLabels]] = field(default_factory=dict)  # track → task → labels
    source: str = "detect"  # detect | cropped_aligned | tsav
    cropped_dir: str | None = None  # cropped_aligned root
    tsav_pickle: str | None = None  # this video's TSAV alignment pickle


@dataclass
class BuildOptions:
    masks: tuple[str, ...] = ("tsav", "mtmt")
    detector: str = "hog"
    detect_every: int = 5
    limit_frames: int | None = None  # debugging: stop after this many frames


# --- discovering the work -------------------------------------------------------------------------
def plan_jobs(videos: dict[str, Path], annotations: dict[str, dict[str, TrackLabels]],
              extra_tracks: list[str] = ()) -> list[VideoJob]:
    """One job per video with its tracks (from annotations and test lists) and their labels."""
    tracks: dict[str, set[str]] = defaultdict(set)
    labels: dict[str, dict[str, dict[str, TrackLabels]]] = defaultdict(lambda: defaultdict(dict))
    for task, per_track in annotations.items():
        for track, lab in per_track.items():
            tracks[video_of_track(track)].add(track)
            labels[video_of_track(track)][track][task] = lab
    for track in extra_tracks:
        tracks[video_of_track(track)].add(track)
    unknown = sorted(v for v in tracks if v not in videos)
    if unknown:
        log.warning("%d annotated tracks have no video file: %s", len(unknown), ", ".join(unknown[:10]))
    jobs = []
    for name, path in sorted(videos.items()):
        t = tracks.get(name) or {name}
        if any(x.endswith(TRACK_SUFFIXES) for x in t):
            # two people: a bare name would be ambiguous; keep only the left/right tracks
            t = {x for x in t if x.endswith(TRACK_SUFFIXES)} or t
        jobs.append(VideoJob(str(path), name, sorted(t), {k: dict(v) for k, v in labels[name].items()}))
    return jobs


def parse_shard(spec: str | None) -> tuple[int, int]:
    if not spec:
        return 0, 1
    m = re.fullmatch(r"(\d+)/(\d+)", spec)
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--shard {spec!r}: expected K/N with 0 <= K < N")
    return int(m.group(1)), int(m.group(2))


def select_shard(jobs: list[VideoJob], shard: tuple[int, int]) -> list[VideoJob]:
    k, n = shard
    return [j for i, j in enumerate(sorted(jobs, key=lambda j: j.name)) if i % n == k]


# --- per-frame work -------------------------------------------------------------------------------
class Timer:
    """Accumulates seconds per stage (for the summary and benchmarks)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] += now - self._t
        self._t = now


def encode_jpeg(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(b: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


class TrackWriter:
    """Collects one track's per-frame outputs: crops, masks, landmarks, has_face."""

    def __init__(self, track: str, mask_kinds: tuple[str, ...], rec: store.VideoRecord, timer: Timer):
        self.track, self.mask_kinds, self.rec, self.timer = track, mask_kinds, rec, timer
        self.has_face: list[bool] = []
        self.landmarks: list[np.ndarray] = []
        self.affines: list[np.ndarray] = []
        self.confidence: list[float] = []

    def add(self, index: int, crop: np.ndarray | None, lm_crop: np.ndarray | None, conf: float = 0.0,
            affine: np.ndarray | None = None) -> None:
        """One source frame: its crop (None = no face), crop landmarks, confidence and frame→crop affine."""
        if len(self.has_face) != index:
            raise ValueError(f"{self.track}: frame {index} out of order (expected {len(self.has_face)})")
        self.has_face.append(crop is not None)
        self.confidence.append(conf if crop is not None else 0.0)
        self.landmarks.append(np.full((68, 2), np.nan, np.float32) if lm_crop is None else lm_crop)
        self.affines.append(np.full((2, 3), np.nan, np.float32) if affine is None else affine)
        if crop is None:
            return
        self.rec.items.append((store.frame_key(self.track, index, "rgb"), encode_jpeg(crop)))
        self.timer.lap("encode")
        for kind in self.mask_kinds:
            m = MASK_RENDERERS[kind](lm_crop) if lm_crop is not None else masks.blank_mask()
            self.timer.lap("masks")
            self.rec.items.append((store.frame_key(self.track, index, kind), masks.encode_png(m)))
            self.timer.lap("encode")

    def finish(self) -> dict:
        face = np.array(self.has_face, bool)
        self.rec.put_array(store.track_key(self.track) + b"/face", face)
        key = store.track_key(self.track)
        self.rec.put_array(key + b"/landmarks", np.array(self.landmarks, np.float16).reshape(-1, 68, 2))
        self.rec.put_array(key + b"/affine", np.array(self.affines, np.float32).reshape(-1, 2, 3))
        self.rec.put_array(key + b"/confidence", np.array(self.confidence, np.float16))
        return {"faces": int(face.sum())}


def person_index(track: str, tracks: list[str]) -> int:
    """_left → person 0 (leftmost), _right → person 1; single-person videos have person 0."""
    return 1 if track.endswith("_right") else 0


def run_detection(job: VideoJob, opts: BuildOptions, writers: dict[str, TrackWriter], timer: Timer,
                  times: list[float]) -> dict:
    """Decode every frame, track the face(s), align and write each track; returns tracker counters."""
    from data import faces  # dlib is only needed on this path

    n_people = 2 if any(t.endswith(TRACK_SUFFIXES) for t in job.tracks) else 1
    tracker = faces.FaceTracker(faces.DlibBackend(opts.detector), n_people=n_people,
                                detect_every=opts.detect_every)
    timer.lap("setup")
    for frame in video.iter_frames(job.path):
        if opts.limit_frames is not None and frame.index >= opts.limit_frames:
            break
        times.append(frame.time)
        timer.lap("decode")
        results = tracker.update(frame.rgb)
        timer.lap("detect")
        for track, w in writers.items():
            r = results[person_index(track, job.tracks)] if results else None
            if r is None or r.landmarks is None:
                w.add(frame.index, None, None)
                continue
            face = align.align_face(frame.rgb, r.landmarks)
            timer.lap("align")
            w.add(frame.index, face.image, face.landmarks, float(r.confidence), face.matrix)
    return {"detector_runs": int(getattr(tracker, "detector_runs", 0))}


def crop_landmarker():
    """A landmark fitter for 112x112 crops: the dlib predictor inside the template's face box."""
    from data import faces

    backend = faces.DlibBackend("hog")
    box = align.template_face_box()
    return lambda crop: backend.landmarks(crop, box)


def run_cropped_aligned(job: VideoJob, opts: BuildOptions, writers: dict[str, TrackWriter], timer: Timer,
                        times: list[float]) -> dict:
    """Import official crops: frame k ↔ <track>/%05d.jpg numbered k+1; absent images mean no face."""
    times.extend(video.read_frame_times(job.path))
    if opts.limit_frames is not None:
        del times[opts.limit_frames:]
    timer.lap("decode")
    fit = crop_landmarker()
    for track, w in writers.items():
        folder = Path(job.cropped_dir) / track
        for i in range(len(times)):
            f = folder / f"{i + 1:05d}.jpg"
            if not f.is_file():
                w.add(i, None, None)
                continue
            bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ValueError(f"{f}: unreadable image")
            crop = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (112, 112), interpolation=cv2.INTER_AREA)
            timer.lap("decode")
            lm = fit(crop)
            timer.lap("detect")
            w.add(i, crop, lm, 1.0)
    return {}


def load_tsav_alignment(path: str | Path) -> tuple[list, list]:
    """TSAV's pickle: {'frame': [2x3 affine or None per frame], 'mask': [68x2 crop landmarks per frame]}."""
    with open(path, "rb") as fh:
        d = pickle.load(fh)  # noqa: S301 - the user's own alignment files
    if not isinstance(d, dict) or "frame" not in d or "mask" not in d:
        raise ValueError(f"{path}: not a TSAV alignment pickle (expected keys 'frame' and 'mask')")
    return list(d["frame"]), list(d["mask"])


def run_tsav_import(job: VideoJob, opts: BuildOptions, writers: dict[str, TrackWriter], timer: Timer,
                    times: list[float]) -> dict:
    """Warp every frame with TSAV's published affine (cubic, black border) and use its landmarks."""
    affines, lms = load_tsav_alignment(job.tsav_pickle)
    (track, w), = writers.items()
    for frame in video.iter_frames(job.path):
        if opts.limit_frames is not None and frame.index >= opts.limit_frames:
            break
        times.append(frame.time)
        timer.lap("decode")
        m = affines[frame.index] if frame.index < len(affines) else None
        if m is None:
            w.add(frame.index, None, None)
            continue
        m = np.asarray(m, np.float64).reshape(2, 3)
        crop = align.warp_face(frame.rgb, m)
        lm = np.asarray(lms[frame.index], np.float32).reshape(68, 2) if lms[frame.index] is not None else None
        timer.lap("align")
        w.add(frame.index, crop, lm, 1.0, m)
    return {}


RUNNERS = {"detect": run_detection, "cropped_aligned": run_cropped_aligned, "tsav": run_tsav_import}


# --- one video ------------------------------------------------------------------------------------
def track_labels_meta(fitted: dict[str, TrackLabels], lines: dict[str, int]) -> dict:
    """Per task: split, column names, label lines in the file and valid frames after fitting."""
    return {task: {"split": lab.split, "names": list(lab.names), "lines": lines[task],
                   "valid": int(lab.valid.all(axis=-1).sum() if lab.valid.ndim > 1 else lab.valid.sum())}
            for task, lab in fitted.items()}


def process_video(job: VideoJob, opts: BuildOptions) -> store.VideoRecord:
    """The whole per-video pipeline; a failure yields a record with status 'failed: <reason>'."""
    timer = Timer()
    rec = store.VideoRecord(job.name, {"name": job.name, "source": job.path, "tracks": job.tracks,
                                       "importer": job.source})
    try:
        info = video.probe(job.path)
        writers = {t: TrackWriter(t, opts.masks, rec, timer) for t in job.tracks}
        times: list[float] = []
        counters = RUNNERS[job.source](job, opts, writers, timer, times)
        n = len(times)
        if n == 0:
            raise video.VideoError(f"{job.path}: no frames decoded")
        rec.put_array(store.video_key(job.name) + b"/times", np.asarray(times, np.float64))
        sound = video.read_audio(job.path, audio.SR) if info.has_audio else None
        timer.lap("audio")
        if sound is not None:
            rec.put_array(store.video_key(job.name) + b"/logmel", audio.logmel_db(sound, audio.SR))
        timer.lap("audio")
        faces_total = 0
        for track, w in writers.items():
            faces_total += w.finish()["faces"]
            given = job.labels.get(track, {})
            labels = {task: fit_length(lab, n) for task, lab in given.items()}
            for task, lab in labels.items():
                rec.put_array(store.track_key(track) + f"/label/{task}/values".encode(), lab.values)
                rec.put_array(store.track_key(track) + f"/label/{task}/valid".encode(), lab.valid)
            rec.put_json(store.track_key(track), {
                "video": job.name, "person": person_index(track, job.tracks), "frames": n,
                "faces": int(np.sum(w.has_face)),
                "labels": track_labels_meta(labels, {t: len(lab) for t, lab in given.items()}),
            })
        timer.lap("labels")
        rec.meta.update({
            "status": "ok", "frames": n, "fps": info.fps, "width": info.width, "height": info.height,
            "audio": sound is not None, "audio_rate": audio.SR if sound is not None else None,
            "masks": list(opts.masks), "faces": faces_total, **counters,
        })
    except Exception as e:  # noqa: BLE001 - any bad file becomes a logged, recorded failure
        log.warning("%s: failed: %s", job.path, e)
        rec.items.clear()
        rec.meta.update({"status": f"failed: {type(e).__name__}: {e}"})
    rec.meta["stats"] = {"seconds": dict(timer.seconds), "bytes": sum(len(k) + len(v) for k, v in rec.items)}
    return rec


# --- the driver -----------------------------------------------------------------------------------
def _work(args: tuple[VideoJob, BuildOptions]) -> store.VideoRecord:
    return process_video(*args)


def build(jobs: list[VideoJob], out: str | Path, opts: BuildOptions, workers: int = 1) -> list[dict]:
    """Process every job not yet complete in ``out``; returns the meta of every video handled now."""
    with store.Store(out, readonly=False) as db:
        db.write_schema(list(opts.masks))
        done = {v for v in db.video_names() if (db.video_meta(v) or {}).get("status") == "ok"}
        todo = [j for j in jobs if j.name not in done]
        log.info("%d videos, %d already complete, %d to do", len(jobs), len(jobs) - len(todo), len(todo))
        metas = []
        bar = tqdm(total=len(todo), desc="videos", unit="video", dynamic_ncols=True)
        args = [(j, opts) for j in todo]
        if workers <= 1:
            results = map(_work, args)
            pool = None
        else:
            pool = mp.get_context("fork").Pool(workers, maxtasksperchild=8)
            results = pool.imap_unordered(_work, args)
        try:
            for rec in results:
                db.write_video(rec)
                metas.append(rec.meta)
                bar.set_postfix_str(f"{rec.name}: {rec.meta['status'][:30]}")
                bar.update(1)
        finally:
            bar.close()
            if pool is not None:
                pool.terminate()
    return metas


def merge(out: str | Path, shards: list[str | Path]) -> int:
    """Combine shard databases into ``out`` (same schema required)."""
    n = 0
    with store.Store(out, readonly=False) as db:
        for shard in shards:
            with store.Store(shard) as src:
                schema = src.schema()
                if schema is None:
                    raise ValueError(f"{shard}: not a database built by create_database.py (no schema)")
                db.write_schema(schema["masks"])
                n += db.copy_from(src)
    return n


def collect_jobs(video_dirs: list[str], annotations: str | None, test_lists: list[str] = (),
                 cropped_aligned: str | None = None, tsav_alignment: str | None = None) -> list[VideoJob]:
    """Find videos and labels and attach the importer each video uses."""
    videos = find_videos(video_dirs)
    labels = read_annotations(annotations) if annotations else {t: {} for t in TASKS}
    extra = [t for f in test_lists for t in read_video_list(f)]
    jobs = plan_jobs(videos, labels, extra)
    for job in jobs:
        if tsav_alignment:
            candidates = [Path(tsav_alignment) / f"{job.name}{s}" for s in (".pkl", "_alignment_mask.pkl")]
            pkl = next((c for c in candidates if c.is_file()), None)
            if pkl is not None:
                if len(job.tracks) != 1:
                    raise ValueError(f"{pkl}: TSAV pickles hold one face; {job.name} has tracks {job.tracks}")
                job.source, job.tsav_pickle = "tsav", str(pkl)
        if cropped_aligned and job.source == "detect" and all(
                (Path(cropped_aligned) / t).is_dir() for t in job.tracks):
            job.source, job.cropped_dir = "cropped_aligned", cropped_aligned
    return jobs
