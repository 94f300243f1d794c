"""Per-video pipeline → LMDB: decode, track faces, align, render masks, log-mel (+ PCM), labels.

One worker function turns a video (a ``VideoJob``, planned by data/build_plan.py) into a
``store.VideoRecord`` of plain bytes; the main process is the only writer. A long video is not held
whole: every ``chunk_bytes`` of finished frame groups go to the writer, which commits them as their
own transaction, and the video's last transaction writes the rest with its meta (data/chunks.py).
Workers (``--workers N``) are separate processes (data/workers.py); a worker that dies breaks only its
own videos. The main process holds the database's build lock (data/db_lock.py) for the whole build
or merge.

Resuming: a video whose meta says "ok" and whose inputs (tracks, importer, label content, options
that change the output) match this run is skipped, so a killed run is resumed by running the same
command again; failed videos, and videos built with other inputs, are processed again.
``--shard K/N`` builds every N-th video so several machines can share the work; ``merge`` combines
the shard databases (checking each video's sha256).

Two importers replace detection for users who already have it (chosen per video by
``build_plan.collect_jobs``):
- ``cropped_aligned``: the official 112x112 crops; landmarks are fitted on the crop for the masks.
- ``tsav``: TSAV's alignment pickles, one per track (per frame a 2x3 frame→crop affine or None, plus
  68 landmarks in crop coordinates), read by a restricted unpickler (data/tsav_pickle.py).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import cv2
import lmdb
import numpy as np
from tqdm import tqdm

from data import align, audio, chunks, masks, store, video
from data.annotations import TrackLabels, fit_length
from data.build_plan import CROP_FORMAT, CROP_QUALITY, BuildOptions, VideoJob, job_inputs
from data.db_lock import build_lock
from data.pcm import pcm_key
from data.tsav_pickle import load_tsav_alignment
from data.verify import verify_videos
from data.video import TRACK_SUFFIXES
from data.workers import run_parallel

log = logging.getLogger(__name__)

CROP_FORMATS = {"jpeg": (".jpg", cv2.IMWRITE_JPEG_QUALITY), "webp": (".webp", cv2.IMWRITE_WEBP_QUALITY)}


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


def encode_crop(rgb: np.ndarray, fmt: str = CROP_FORMAT, quality: int = CROP_QUALITY) -> bytes:
    """A 112×112 RGB crop as JPEG or WebP bytes (readers tell them apart by their signature)."""
    ext, flag = CROP_FORMATS[fmt]
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [flag, quality])
    if not ok:
        raise RuntimeError(f"{fmt} encoding failed")
    return buf.tobytes()


def decode_crop(b: bytes) -> np.ndarray:
    """Stored crop bytes (JPEG or WebP) → RGB uint8 (ValueError when they do not decode)."""
    bgr = cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{len(b)} bytes of a stored crop do not decode as JPEG or WebP")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class _Rows:
    """Per-frame rows of one shape, in the dtype they are stored in: ~300 bytes a frame for a track's
    arrays instead of a Python object per value (a 2-hour video has 216,000 frames)."""

    def __init__(self, shape: tuple[int, ...], dtype: type):
        self.data, self.n = np.empty((256, *shape), dtype), 0

    def append(self, row) -> None:
        if self.n == len(self.data):
            self.data = np.concatenate([self.data, np.empty_like(self.data)])
        self.data[self.n] = row  # the same rounding as converting the whole list at the end
        self.n += 1

    def array(self) -> np.ndarray:
        return self.data[:self.n]


class TrackWriter:
    """Collects one track's per-frame outputs: crops, masks, landmarks, has_face."""

    def __init__(self, track: str, opts: BuildOptions, rec: store.VideoRecord, timer: Timer,
                 spill: chunks.Spill | None = None):
        self.track, self.opts, self.rec, self.timer, self.spill = track, opts, rec, timer, spill
        self.has_face = _Rows((), bool)
        self.landmarks = _Rows((68, 2), np.float16)
        self.affines = _Rows((2, 3), np.float32)
        self.confidence = _Rows((), np.float16)
        self.group: dict[int, dict[str, bytes]] = {}  # slot → part → bytes of the frames not yet written

    def add(self, index: int, crop: np.ndarray | None, lm_crop: np.ndarray | None, conf: float = 0.0,
            affine: np.ndarray | None = None) -> None:
        """One source frame: its crop (None = no face), crop landmarks, confidence and frame→crop affine."""
        if self.has_face.n != index:
            raise ValueError(f"{self.track}: frame {index} out of order (expected {self.has_face.n})")
        self.has_face.append(crop is not None)
        self.confidence.append(conf if crop is not None else 0.0)
        self.landmarks.append(np.nan if lm_crop is None else np.asarray(lm_crop).reshape(68, 2))
        self.affines.append(np.nan if affine is None else np.asarray(affine).reshape(2, 3))
        if crop is not None:
            parts = {"rgb": encode_crop(crop, self.opts.crop_format, self.opts.crop_quality)}
            self.timer.lap("encode")
            for kind in self.opts.masks:
                m = masks.render(kind, lm_crop)  # from the landmarks as stored, so readers can redraw it
                self.timer.lap("masks")
                parts[kind] = masks.encode_png(m)
                self.timer.lap("encode")
            self.group[index % store.FRAMES_PER_VALUE] = parts
        if index % store.FRAMES_PER_VALUE == store.FRAMES_PER_VALUE - 1:
            self._flush(index)
        if self.spill is not None:
            self.spill.frame_done(index + 1)

    def _flush(self, index: int) -> None:
        """Write the group of frame ``index`` (nothing when none of its frames has a face)."""
        if self.group:
            self.rec.items.append((store.group_key(self.track, index), store.pack_frames(self.group)))
        self.group = {}

    def finish(self) -> int:
        """Store the last frames and the per-frame arrays; returns the number of frames with a face."""
        if self.has_face.n:
            self._flush(self.has_face.n - 1)
        face = self.has_face.array()
        key = store.track_key(self.track)
        self.rec.put_array(key + b"/face", face)
        self.rec.put_array(key + b"/landmarks", self.landmarks.array())
        self.rec.put_array(key + b"/affine", self.affines.array())
        self.rec.put_array(key + b"/confidence", self.confidence.array())
        return int(face.sum())


def person_index(track: str, tracks: list[str]) -> int:
    """_left → person 0 (leftmost), _right → person 1; single-person videos have person 0."""
    return 1 if track.endswith("_right") else 0


_BACKENDS: dict[str, object] = {}


def face_backend(detector: str):
    """The dlib backend for ``detector``, loaded once per process (loading the models takes ~1 s)."""
    if detector not in _BACKENDS:
        from data import faces  # dlib is only needed on these paths

        _BACKENDS[detector] = faces.DlibBackend(detector)
    return _BACKENDS[detector]


def run_detection(job: VideoJob, opts: BuildOptions, writers: dict[str, TrackWriter], timer: Timer,
                  times: list[float]) -> dict:
    """Decode every frame, track the face(s), align and write each track; returns tracker counters."""
    from data import faces

    n_people = 2 if any(t.endswith(TRACK_SUFFIXES) for t in job.tracks) else 1
    tracker = faces.FaceTracker(face_backend(opts.detector), n_people=n_people, detect_every=opts.detect_every)
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


def crop_landmarker(detector: str = "hog") -> Callable[[np.ndarray], np.ndarray]:
    """A landmark fitter for 112x112 crops: the dlib predictor inside the template's face box."""
    backend = face_backend(detector)
    box = align.template_face_box()
    return lambda crop: backend.landmarks(crop, box)


def run_cropped_aligned(job: VideoJob, opts: BuildOptions, writers: dict[str, TrackWriter], timer: Timer,
                        times: list[float]) -> dict:
    """Import official crops: frame k ↔ <track>/%05d.jpg numbered k+1; absent images mean no face."""
    times.extend(video.read_frame_times(job.path))
    if opts.limit_frames is not None:
        del times[opts.limit_frames:]
    timer.lap("decode")
    fit = crop_landmarker(opts.detector)
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
            crop = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            if crop.shape[:2] != (align.CROP_SIZE, align.CROP_SIZE):
                crop = cv2.resize(crop, (align.CROP_SIZE, align.CROP_SIZE), interpolation=cv2.INTER_AREA)
            timer.lap("decode")
            lm = fit(crop)
            timer.lap("detect")
            w.add(i, crop, lm, 1.0)
        extra = [p.name for p in folder.glob("*.jpg") if not p.stem.isdigit() or not 1 <= int(p.stem) <= len(times)]
        if extra:
            log.warning("%s: %d crops beyond the %d decoded frames ignored (e.g. %s)", folder, len(extra),
                        len(times), sorted(extra)[0])
    return {}


def _tsav_entry(affines: list, lms: list, i: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    m = affines[i] if i < len(affines) else None
    if m is None:
        return None, None
    m = np.asarray(m, np.float64).reshape(2, 3)
    if not np.isfinite(m).all():
        return None, None
    lm = lms[i] if i < len(lms) else None
    lm = None if lm is None else np.asarray(lm, np.float64).reshape(68, 2)  # the masks are drawn at full precision
    return m, lm


def run_tsav_import(job: VideoJob, opts: BuildOptions, writers: dict[str, TrackWriter], timer: Timer,
                    times: list[float]) -> dict:
    """Warp every frame with TSAV's published affine (cubic, black border) and use its landmarks."""
    tables = {t: load_tsav_alignment(job.tsav_pickles[t]) for t in writers}
    for frame in video.iter_frames(job.path):
        if opts.limit_frames is not None and frame.index >= opts.limit_frames:
            break
        times.append(frame.time)
        timer.lap("decode")
        for track, w in writers.items():
            m, lm = _tsav_entry(*tables[track], frame.index)
            if m is None:
                w.add(frame.index, None, None)
                continue
            crop = align.warp_face(frame.rgb, m)
            timer.lap("align")
            w.add(frame.index, crop, lm, 1.0, m.astype(np.float32))
    for track, (affines, _) in tables.items():
        if len(affines) != len(times) and opts.limit_frames is None:
            log.warning("%s: %d frames in the TSAV pickle, %d decoded (missing ones: no face)",
                        job.tsav_pickles[track], len(affines), len(times))
    return {}


RUNNERS = {"detect": run_detection, "cropped_aligned": run_cropped_aligned, "tsav": run_tsav_import}


# --- one video ------------------------------------------------------------------------------------
def track_labels_meta(fitted: dict[str, TrackLabels], lines: dict[str, int]) -> dict:
    """Per task: split, column names, label lines in the file and valid frames after fitting."""
    return {task: {"split": lab.split, "names": list(lab.names), "lines": lines[task],
                   "valid": int(lab.valid.all(axis=-1).sum() if lab.valid.ndim > 1 else lab.valid.sum())}
            for task, lab in fitted.items()}


def new_record(job: VideoJob, opts: BuildOptions) -> store.VideoRecord:
    return store.VideoRecord(job.name, {"name": job.name, "source": job.path, "tracks": list(job.tracks),
                                        "importer": job.source, "inputs": job_inputs(job, opts)})


def failed_record(job: VideoJob, opts: BuildOptions, reason: str) -> store.VideoRecord:
    rec = new_record(job, opts)
    rec.meta.update({"status": f"failed: {reason}", "stats": {"seconds": {}, "bytes": 0}})
    return rec


def process_video(job: VideoJob, opts: BuildOptions,
                  send: Callable[[list[tuple[bytes, bytes]]], None] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> store.VideoRecord:
    """The whole per-video pipeline; a failure yields a record with status 'failed: <reason>'.

    ``send``: hands finished frame groups on every ``opts.chunk_bytes`` (the writer commits them ahead of the
    record, which then holds the rest; ``rec.chunks`` counts them); without it the record holds everything.
    ``progress(frames done, frames expected)``: called about once a second.
    """
    timer = Timer()
    rec = new_record(job, opts)
    spill = chunks.Spill(rec, opts.chunk_bytes, 0, send, progress)
    try:
        info = video.probe(job.path)
        spill.total = info.num_frames
        writers = {t: TrackWriter(t, opts, rec, timer, spill) for t in job.tracks}
        times: list[float] = []
        counters = RUNNERS[job.source](job, opts, writers, timer, times)
        n = len(times)
        if n == 0:
            raise video.VideoError(f"{job.path}: no frames decoded")
        rec.put_array(store.video_key(job.name) + b"/times", np.asarray(times, np.float64))
        timer.lap("decode")
        sound = video.read_audio(job.path, audio.SR) if info.has_audio else None
        if sound is not None:
            rec.put_array(store.video_key(job.name) + b"/logmel", audio.logmel_db(sound, audio.SR))
            if opts.store_pcm:  # the samples the log-mel came from, as int16 (data/pcm.py)
                rec.put_array(pcm_key(job.name), audio.to_pcm16(sound))
                spill.flush()  # a long video's PCM goes to the writer as its own chunk, not with the meta
        timer.lap("audio")
        faces_total = 0
        for track, w in writers.items():
            faces = w.finish()
            faces_total += faces
            given = job.labels.get(track, {})
            labels = {task: fit_length(lab, n) for task, lab in given.items()}
            for task, lab in labels.items():
                rec.put_array(store.track_key(track) + f"/label/{task}/values".encode(), lab.values)
                rec.put_array(store.track_key(track) + f"/label/{task}/valid".encode(), lab.valid)
            rec.put_json(store.track_key(track), {
                "video": job.name, "person": person_index(track, job.tracks), "frames": n, "faces": faces,
                "labels": track_labels_meta(labels, {t: len(lab) for t, lab in given.items()}),
                "splits": job.splits.get(track, {}),
            })
        timer.lap("labels")
        rec.meta.update({
            "status": "ok", "frames": n, "fps": info.fps, "width": info.width, "height": info.height,
            "audio": sound is not None, "audio_rate": audio.SR if sound is not None else None,
            "masks": list(opts.masks), "faces": faces_total, **counters,
            **({"pcm": True} if opts.store_pcm and sound is not None else {}),
        })
    except lmdb.Error:  # writing a chunk failed (e.g. a full disk): the build stops, not just this video
        raise
    except Exception as e:  # noqa: BLE001 - any bad file becomes a logged, recorded failure
        log.debug("%s: failed: %s: %s", job.path, type(e).__name__, e)
        rec.items.clear()
        rec.meta.update({"status": f"failed: {type(e).__name__}: {e}"})
    rec.chunks = spill.chunks
    rec.meta["stats"] = {"seconds": dict(timer.seconds), "chunks": spill.chunks,
                         "bytes": spill.sent_bytes + sum(len(k) + len(v) for k, v in rec.items)}
    return rec


# --- the driver -----------------------------------------------------------------------------------
class _BuildSink:
    """The main process's end of a build: the single writer (chunks, then each video's last transaction),
    the progress bar (videos done; frames of the videos in flight) and the metas of the videos written."""

    def __init__(self, db: store.Store, opts: BuildOptions, total: int):
        self.writer, self.opts = chunks.VideoWriter(db), opts
        self.metas: list[dict] = []
        self.in_flight: dict[str, str] = {}  # video → "done/expected frames"
        self.last = ""  # the last video written and its status
        self.bar = tqdm(total=total, desc="videos", unit="video", dynamic_ncols=True, disable=not total)

    def _show(self) -> None:
        self.bar.set_postfix_str(", ".join([x for x in [self.last] if x] +
                                           [f"{v} {f}" for v, f in self.in_flight.items()]))

    def chunk(self, job: VideoJob, items: list[tuple[bytes, bytes]]) -> None:
        self.writer.chunk(job.name, job.tracks, items)

    def progress(self, job: VideoJob, done: int, expected: int) -> None:
        self.in_flight[job.name] = f"{done}/{expected} frames"
        self._show()

    def abandon(self, job: VideoJob) -> None:
        self.writer.abandon(job.name)
        self.in_flight.pop(job.name, None)

    def failed(self, job: VideoJob, reason: str) -> store.VideoRecord:
        return failed_record(job, self.opts, reason)

    def commit(self, rec: store.VideoRecord) -> None:
        self.writer.finish(rec)
        self.metas.append(rec.meta)
        if rec.meta["status"] != "ok":
            log.warning("%s: %s", rec.meta.get("source", rec.name), rec.meta["status"])
        self.in_flight.pop(rec.name, None)
        self.last = f"{rec.name}: {rec.meta['status'][:30]}"
        self.bar.update(1)
        self._show()


def _to_do(db: store.Store, jobs: list[VideoJob], opts: BuildOptions, verify: bool) -> list[VideoJob]:
    """The jobs not complete in ``db`` with this run's inputs (with ``verify``: or whose stored bytes no
    longer match their sha256)."""
    todo, stale, complete = [], [], []
    for job in jobs:
        meta = db.video_meta(job.name)
        if meta is not None and meta.get("status") == "ok":
            if meta.get("inputs") == job_inputs(job, opts):
                complete.append(job)
                continue
            stale.append(job.name)
        todo.append(job)
    if stale:
        log.warning("%d videos were built from other inputs (tracks, labels, importer or options) and are "
                    "rebuilt: %s%s", len(stale), ", ".join(stale[:5]), " ..." if len(stale) > 5 else "")
    if verify and complete:
        checked = verify_videos(db, [j.name for j in complete])
        damaged = [j for j in complete if checked[j.name] != "ok"]
        for job in damaged:
            log.warning("%s: stored bytes %s; rebuilt", job.name, checked[job.name])
        todo += damaged
    log.info("%d videos, %d already complete, %d to do", len(jobs), len(jobs) - len(todo), len(todo))
    return todo


def build(jobs: list[VideoJob], out: str | Path, opts: BuildOptions, workers: int = 1,
          verify: bool = False) -> list[dict]:
    """Process every job not yet complete (with the same inputs) in ``out``; returns the metas of
    the videos processed now, in commit order. Holds ``out``'s build lock (DatabaseBusyError when
    another build or merge has it); ``verify``: also rebuild complete videos whose bytes changed."""
    with build_lock(out), store.Store(out, readonly=False) as db:
        db.write_schema(list(opts.masks))
        cleared = chunks.clear_interrupted(db)
        if cleared:
            log.info("removed the partial data of %d videos an interrupted build was writing: %s", len(cleared),
                     ", ".join(cleared[:5]) + (" ..." if len(cleared) > 5 else ""))
        todo = _to_do(db, jobs, opts, verify)
        sink = _BuildSink(db, opts, len(todo))
        try:
            if workers <= 1 or len(todo) <= 1:
                for job in todo:
                    sink.commit(process_video(job, opts, send=lambda items, job=job: sink.chunk(job, items),
                                              progress=lambda done, n, job=job: sink.progress(job, done, n)))
            else:
                run_parallel(process_video, todo, opts, workers, sink)
        finally:
            sink.bar.close()
    return sink.metas


def merge(out: str | Path, shards: list[str | Path], chunk_bytes: int = chunks.CHUNK_BYTES) -> int:
    """Combine shard databases into ``out`` (same schema required; every video's sha256 checked), holding
    ``out``'s build lock; a long video is copied ``chunk_bytes`` at a time."""
    schemas = []
    for shard in shards:
        if Path(shard).resolve() == Path(out).resolve():
            raise ValueError(f"{shard}: a shard cannot be merged into itself (--out)")
        with store.Store(shard) as src:  # check every shard before creating anything
            schema = src.schema()
        if schema is None:
            raise ValueError(f"{shard}: not a database built by create_database.py (no schema)")
        if schemas and schema != schemas[0]:
            raise ValueError(f"{shard}: schema {schema} differs from {shards[0]}'s {schemas[0]}")
        schemas.append(schema)
    n = 0
    with build_lock(out, "merge"), store.Store(out, readonly=False) as db:
        db.write_schema(schemas[0]["masks"])
        chunks.clear_interrupted(db)
        writer = chunks.VideoWriter(db)
        for shard in shards:
            with store.Store(shard) as src:
                n += chunks.copy_videos(src, writer, chunk_bytes)
    return n
