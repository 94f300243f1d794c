"""Planning one video without rendering it: frame times, tracks with labels, motion, reference audio."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tools.synthetic.audio import synthesize_audio
from tools.synthetic.faces import face_scale_for, plan_motion
from tools.synthetic.labels import TrackPlan, plan_track, rng_for
from tools.synthetic.mapping import FPS
from tools.synthetic.specs import VideoSpec


def frame_times(spec: VideoSpec, rng: np.random.Generator) -> np.ndarray:
    """Presentation time of every frame in seconds (VFR: random 33/40 ms durations, integer ms)."""
    if not spec.vfr:
        return np.arange(round(spec.seconds * FPS)) / FPS
    durations = rng.choice([33, 40], size=int(spec.seconds * 1000 / 33) + 1, p=[0.6, 0.4])
    ms = np.concatenate([[0], np.cumsum(durations)])
    return ms[ms < spec.seconds * 1000] / 1000.0


def reference_audio(spec: VideoSpec, seed: int) -> np.ndarray:
    """The audio of a video as synthesised before encoding (starts at ``spec.audio_offset_s``)."""
    job = plan_video(spec, seed, Path("."))
    return synthesize_audio(spec, job.tracks, job.times, rng_for(seed, spec.index, 4))


@dataclass
class VideoJob:
    spec: VideoSpec
    seed: int
    out: Path
    times: np.ndarray
    tracks: list[TrackPlan]
    motions: list[np.ndarray]  # per track (n, 2, 3)


def plan_video(spec: VideoSpec, seed: int, out: Path) -> VideoJob:
    """Frame times, tracks with labels, and per-track motion for one video."""
    times = frame_times(spec, rng_for(seed, spec.index, 0))
    n = len(times)
    label_rng, motion_rng = rng_for(seed, spec.index, 1), rng_for(seed, spec.index, 2)
    tracks, motions = [], []
    for slot, (suffix, split) in enumerate(spec.split.items()):
        identity = slot if spec.two_person else spec.index % 2
        tr = plan_track(spec.name + suffix, identity, split, n, spec.label_delta, label_rng)
        scale = face_scale_for(spec.height, spec.two_person)
        box = motion_box(spec, slot)
        exit_frames = None
        if spec.face_exit:
            start = int(0.45 * n)
            exit_frames = (start, start + FPS)
        tracks.append(tr)
        motions.append(plan_motion(n, tr.va[:, 1], box, scale, motion_rng, exit_frames, spec.width))
    return VideoJob(spec, seed, out, times, tracks, motions)


def motion_box(spec: VideoSpec, slot: int) -> tuple[float, float, float, float]:
    """Region the face centre drifts in: the central part of the frame, or of one half for two persons."""
    w, h = spec.width, spec.height
    if spec.two_person:
        x0 = slot * w / 2
        return x0 + 0.35 * w / 2, x0 + 0.65 * w / 2, 0.4 * h, 0.6 * h
    return 0.3 * w, 0.7 * w, 0.4 * h, 0.6 * h
