"""Rendering one video (runs in a worker process): background, faces, encoding, crops and truth."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import av
import cv2
import numpy as np

from tools.synthetic import video_codecs
from tools.synthetic.audio import AudioFeeder, synthesize_audio
from tools.synthetic.faces import align_crop, apply_affine, composite, identities, render_face
from tools.synthetic.labels import rng_for
from tools.synthetic.plan import VideoJob


class Background:
    """Smooth colour gradient (3x3 colour grid, each node drifting) with a few moving shapes."""

    def __init__(self, width: int, height: int, rng: np.random.Generator) -> None:
        self.size = (width, height)
        self.base = rng.uniform(40, 215, (3, 3, 3))
        self.amp = rng.uniform(15, 40, (3, 3, 3))
        self.freq = rng.uniform(0.03, 0.25, (3, 3, 3))
        self.phase = rng.uniform(0, 2 * np.pi, (3, 3, 3))
        n_shapes = 3
        self.shape_kind = rng.integers(0, 2, n_shapes)
        self.shape_rgb = rng.uniform(0, 255, (n_shapes, 3))
        self.shape_size = rng.uniform(0.06, 0.15, n_shapes) * height
        self.shape_path = rng.uniform(0, 1, (n_shapes, 6))  # centre x/y, speed x/y, phase x/y

    def render(self, t: float) -> np.ndarray:
        grid = np.clip(self.base + self.amp * np.sin(2 * np.pi * self.freq * t + self.phase), 0, 255)
        img = cv2.resize(grid.astype(np.float32), self.size, interpolation=cv2.INTER_LINEAR).astype(np.uint8)
        w, h = self.size
        for kind, rgb, size, p in zip(self.shape_kind, self.shape_rgb, self.shape_size, self.shape_path):
            x = w * (0.5 + 0.45 * np.sin(2 * np.pi * (0.05 + 0.2 * p[2]) * t + 6.28 * p[4] + p[0]))
            y = h * (0.5 + 0.45 * np.sin(2 * np.pi * (0.05 + 0.2 * p[3]) * t + 6.28 * p[5] + p[1]))
            colour = tuple(float(c) for c in rgb)
            if kind == 0:
                cv2.circle(img, (int(x), int(y)), int(size), colour, -1, cv2.LINE_AA)
            else:
                half = int(size)
                cv2.rectangle(img, (int(x) - half, int(y) - half), (int(x) + half, int(y) + half), colour, -1)
        return img


@dataclass
class VideoResult:
    name: str
    n_frames: int
    faceless: dict[str, np.ndarray]  # track → (n,) bool
    audio_first_pts_s: float | None
    video_first_pts_s: float  # container time of the first decoded frame
    seconds: float


def render_video(job: VideoJob) -> VideoResult:
    """Render, encode and crop one video; writes the video, its crops and its truth landmarks."""
    t0 = time.perf_counter()
    spec, times = job.spec, job.times
    n = len(times)
    bg = background(job)
    path = job.out / "videos" / spec.batch / f"{spec.name}.{spec.container}"
    path.parent.mkdir(parents=True, exist_ok=True)
    truth = {tr.name: np.full((n, 5, 2), np.nan, np.float32) for tr in job.tracks}
    faceless = {tr.name: np.ones(n, bool) for tr in job.tracks}
    crop_dirs = {tr.name: job.out / "cropped_aligned" / tr.name for tr in job.tracks}
    for d in crop_dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    container = av.open(str(path), "w")
    vstream = video_codecs.add_video_stream(container, spec.encoding)
    video_start = video_codecs.first_frame_time(spec.encoding)
    feeder = None
    if spec.audio_codec:
        audio = synthesize_audio(spec, job.tracks, times, rng_for(job.seed, spec.index, 4))
        feeder = AudioFeeder(container, spec, audio, video_start)
    for k in range(n):
        img, placed = render_frame(job, bg, k)
        for name, lm in placed:  # crop after all faces are drawn: a crop sees the finished frame
            truth[name][k] = lm
            faceless[name][k] = False
            ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(align_crop(img, lm), cv2.COLOR_RGB2BGR),
                                   [cv2.IMWRITE_JPEG_QUALITY, 95])
            (crop_dirs[name] / f"{k + 1:05d}.jpg").write_bytes(jpg.tobytes())
        frame = av.VideoFrame.from_ndarray(img, format="rgb24")
        video_codecs.stamp(frame, k, float(times[k]), spec.encoding)
        container.mux(vstream.encode(frame))
        if feeder is not None:
            feeder.feed_until(float(times[k + 1]) if k + 1 < n else float("inf"))
    container.mux(vstream.encode(None))
    if feeder is not None:
        feeder.finish()
    container.close()
    for name, lm in truth.items():
        (job.out / "truth").mkdir(exist_ok=True)
        np.save(job.out / "truth" / f"{name}.npy", lm)
    decoded_start = video_codecs.first_video_time(str(path))
    if decoded_start != video_start:  # the audio was delayed by the start measured beforehand
        raise RuntimeError(f"{path}: first frame at {decoded_start} s, expected {video_start} s")
    return VideoResult(spec.name, n, faceless, first_audio_pts(path), video_start, time.perf_counter() - t0)


def background(job: VideoJob) -> Background:
    """The moving background of a video (its picture depends only on the time)."""
    return Background(job.spec.width, job.spec.height, rng_for(job.seed, job.spec.index, 3))


def render_frame(job: VideoJob, bg: Background, k: int) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """Frame k of a video (RGB, before encoding) and the true landmarks of each face in it, by track."""
    img = bg.render(float(job.times[k]))
    placed = []
    for tr, motion in zip(job.tracks, job.motions):
        ident = identities()[tr.identity]
        face = render_face(ident, int(tr.expr[k]), float(tr.va[k, 0]), tr.au[k])
        if composite(img, face, ident.alpha, motion[k]):
            placed.append((tr.name, apply_affine(motion[k], ident.landmarks)))
    return img, placed


def first_audio_pts(path: Path) -> float | None:
    """Container time of the first decoded audio sample in seconds (None: no audio).

    Decoded, not demuxed: AAC's priming packet has a negative pts that the decoder drops at t=0.
    """
    with av.open(str(path)) as c:
        if not c.streams.audio:
            return None
        stream = c.streams.audio[0]
        for frame in c.decode(stream):
            return round(float(frame.pts * stream.time_base), 6)
    return None
