"""A mini Aff-Wild2, generated offline: videos, audio, labels in every layout, crops and ground truth.

``python -m data.synthetic --out DIR --seed 0`` writes (≈ 12 videos, < 1 min on 2 CPU cores)::

    DIR/videos/batch1/*.mp4|*.avi, DIR/videos/batch2/...
    DIR/annotations/abaw2020/{VA_Set,EXPR_Set,AU_Set}/{Training_Set,Validation_Set}/<track>.txt  (7 EXPR, 8 AU)
    DIR/annotations/abaw2021/{VA_Set,EXPR_Set,AU_Set}/{Train_Set,Validation_Set}/<track>.txt     (7 EXPR, 12 AU)
    DIR/annotations/abaw3/{VA_Estimation_Challenge,EXPR_Classification_Challenge,AU_Detection_Challenge}/
        {Train_Set,Validation_Set}/<track>.txt                                                  (8 EXPR, 12 AU)
    DIR/annotations/mtl/{training,validation}_set_annotations.txt     (s-Aff-Wild2, every 3rd face frame)
    DIR/test_sets/{VA,EXPR,AU,MTL}_test_set.txt                       (test track names, one per line)
    DIR/cropped_aligned/<track>/%05d.jpg       112x112 ArcFace-template crops, 1-based, no file when no face
    DIR/truth/<track>.npy                      float32 (n_frames, 5, 2): true 5 landmarks in frame pixels
                                               (x, y; eyes, nose tip, mouth corners; NaN when no face)
    DIR/meta.json                              seed, mapping constants, per-video facts (``video_meta``)

The face is the public-domain astronaut photograph shipped with scikit-image (identity 0); identity 1 is
its mirror image with cooler colours. An elliptical, soft-edged cut-out of the face is composited on a
moving background with a per-frame similarity transform, so the true landmarks are known exactly.

Label → signal mapping (what a model can learn; constants below and in ``meta.json["mapping"]``):

- EXPR class k (0..7, Other included) → hue of the face: every face pixel keeps its normalised luminance
  but takes the chroma of ``EXPR_HUES_DEG[k]`` (YCbCr angle, 45° apart); and the pitch of a tone in the
  audio, ``EXPR_TONE_HZ[k]``.
- valence v → face brightness: the face's luminance is scaled by ``0.45 + 0.2 (v + 1)`` (0.45–0.85), and
  the share of the tone's 2nd harmonic, ``0.125 (v + 1)``.
- arousal a → frame-to-frame jitter of the face (translation std ``scale·(0.2 + 1.8 (a + 1))`` px,
  rotation std ``0.5 (a + 1)``°) and the tone's amplitude, ``0.03 + 0.13 (a + 1)`` (full scale 1).
- AU on → a dark dot (radius ``AU_DOT_RADIUS`` source pixels) at each point of ``AU_POINTS`` (the AU's
  facial location: brows, cheeks, lids, lips, chin), drawn on the face before it is warped.

Frame k's pixels and the audio at frame k's timestamp encode frame k's true labels, also on frames whose
annotation is invalid. Audio between frame timestamps: pitch holds, amplitude and harmonic interpolate.
A two-person video's audio is the sum of both persons' tones. Ground truth is drawn for the union of 13
AUs and each edition gets its subset; in 7-class layouts the class Other is written as -1.

Special cases (fixed per video; see ``video_specs``): a two-person video (``_left``/``_right`` tracks), one
without audio, a variable-frame-rate one (frame durations of 33/40 ms, pts in ms; ``frame_times_s`` in
meta), one whose audio starts 0.5 s after the first frame (mp4 only: AVI cannot store a start offset; the
decoded audio starts one AAC priming frame earlier, ``audio_first_pts_s``, and its content is aligned by
pts), one whose face slides out of the frame for ~1 s, label files 1–3 lines longer or shorter than the
video in three videos, audio at 16–48 kHz, AAC (mp4), MP3 and PCM (avi). Video is H.264 in mp4 and
MPEG-4 part 2 in avi, except three videos with B-frames (frames stored in decode order, ``b_frames`` in
meta): H.264 in an mp4, MPEG-4 part 2 in an avi, and H.264 in an avi, whose decoded frames get their
timestamps in decode order (see ``data.synthetic_codecs``). Both B-frame AVIs show their first frame one
frame after the container's zero (``video_first_pts_s``; 0 elsewhere) and their audio is delayed by as
much. In every video, decoded audio at t seconds after the first frame's container time carries the
signal of time t (the MP3 encoder delay is compensated too, see ``AudioFeeder``).
Frame ranges in meta are 1-based and inclusive, like ``%05d.jpg`` and label line k+1.

Public API: ``generate(out, seed, quick, workers) -> meta``, ``generate_timed`` (also returns render
seconds), ``video_specs``, ``plan_video`` (labels and motion without rendering), ``reference_audio``
(the audio before encoding), ``background`` and ``render_frame`` (a frame before encoding),
``identities``, ``similarity_lstsq``, ``align_crop`` and the constants.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import av
import cv2
import numpy as np

from data import synthetic_codecs
from data.annotations import MTL_FILES, MTL_HEADER, TASK_DIRS
from tasks import AU_NAMES_12, TASKS, TEST_SPLIT, TRAIN_SPLIT, VAL_SPLIT, get_edition

FPS = 30
AU_NAMES_ALL = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU20", "AU23", "AU24",
                "AU25", "AU26")

# 5 landmarks of the astronaut photo (skimage.data.astronaut(), 512x512), found once with dlib's frontal
# detector + the 68-point predictor of face_recognition_models: eye centres = mean of points 36-41 and
# 42-47, nose tip = point 30, mouth corners = points 48 and 54. Order: image-left eye, image-right eye,
# nose tip, image-left mouth corner, image-right mouth corner (the ArcFace template's order).
ASTRONAUT_LANDMARKS_5 = ((203.2, 101.5), (246.5, 104.2), (225.0, 127.0), (201.0, 139.0), (246.0, 141.0))
ARCFACE_TEMPLATE_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655),
                        (70.7299, 92.2041))
CROP_SIZE = 112

# Where each AU's dot goes in the astronaut photo, placed from the same dlib 68 points (brows 17-26,
# eyes 36-47, mouth 48-67, jaw 8): one point on the midline or one per side.
AU_POINTS = {
    "AU1": ((214, 86), (238, 87)),    # inner brow ends, raised
    "AU2": ((190, 87), (259, 86)),    # outer brow ends, raised
    "AU4": ((226, 93),),              # between the brows
    "AU6": ((195, 119), (257, 121)),  # cheeks below the outer eye corners
    "AU7": ((204, 109), (245, 111)),  # lower eyelids
    "AU10": ((224, 135),),            # above the upper lip
    "AU12": ((196, 135), (251, 136)),  # lip corners, pulled up and out
    "AU15": ((201, 147), (246, 149)),  # below the lip corners
    "AU20": ((189, 142), (258, 144)),  # beside the mouth, stretched sideways
    "AU23": ((213, 141), (235, 141)),  # upper lip
    "AU24": ((213, 153), (233, 153)),  # lower lip
    "AU25": ((223, 147),),            # between the lips
    "AU26": ((222, 162),),            # chin, just below the lower lip (the crop ends at the chin)
}
AU_DOT_RADIUS = 2.5
AU_DOT_RGB = (15, 15, 15)

# The cut-out: a region of the photo and a soft-edged ellipse in it (hair and collar mostly left out).
FACE_REGION_XYWH = (166, 48, 120, 146)
FACE_ELLIPSE_CENTER = (226.0, 120.0)
FACE_ELLIPSE_AXES = (50.0, 64.0)
FACE_EDGE_SIGMA = 3.0

# Expression → hue and pitch; valence → gain; arousal → jitter and loudness.
EXPR_HUES_DEG = tuple(45.0 * k for k in range(8))
TINT_CHROMA = 0.3         # chroma of the tint relative to luminance (YCbCr units)
TINT_KEEP_ORIGINAL = 0.3  # share of the photo's own colour kept under the tint, for a natural look
LUMA_MEAN, LUMA_STD = 120.0, 38.0  # the face's luminance is standardised to this before the gain
EXPR_TONE_HZ = tuple(round(220.0 * 2 ** (3 * k / 12), 2) for k in range(8))


def valence_gain(v: np.ndarray | float) -> np.ndarray:
    """Face luminance multiplier for valence v (0.45 at -1, 0.85 at +1)."""
    return 0.45 + 0.2 * (np.asarray(v, np.float64) + 1.0)


def arousal_amplitude(a: np.ndarray | float) -> np.ndarray:
    """Tone amplitude (full scale 1) for arousal a."""
    return 0.03 + 0.13 * (np.asarray(a, np.float64) + 1.0)


def arousal_jitter(a: np.ndarray | float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame jitter std of the face for arousal a: (translation px, rotation degrees)."""
    a = np.asarray(a, np.float64)
    return scale * (0.2 + 1.8 * (a + 1.0)), 0.5 * (a + 1.0)


def valence_harmonic(v: np.ndarray | float) -> np.ndarray:
    """Relative amplitude of the tone's 2nd harmonic for valence v."""
    return 0.125 * (np.asarray(v, np.float64) + 1.0)


# Loose FACS prototypes: an AU in the current expression's set is switched on more often.
EXPR_AU_AFFINITY = {
    0: (),
    1: ("AU4", "AU7", "AU23", "AU24"),
    2: ("AU4", "AU10", "AU15"),
    3: ("AU1", "AU2", "AU4", "AU20", "AU25"),
    4: ("AU6", "AU12", "AU25"),
    5: ("AU1", "AU4", "AU15"),
    6: ("AU1", "AU2", "AU25", "AU26"),
    7: ("AU25",),
}
EXPR_PRIOR = (0.2, 0.1, 0.08, 0.08, 0.18, 0.12, 0.12, 0.12)

EDITION_FOLDERS = {
    # edition written → (task folder index in TASK_DIRS, train folder name); its classes and AUs: tasks.EDITIONS
    "abaw2020": (0, "Training_Set"),
    "abaw2021": (0, "Train_Set"),
    "abaw3": (1, "Train_Set"),
}
MTL_EVERY = 3  # the s-Aff-Wild2 file lists every 3rd frame that has a face


# ----------------------------------------------------------------------------------------------------
# The fixed cast of videos


@dataclass(frozen=True)
class VideoSpec:
    """One video's fixed properties; ``split`` maps each track suffix to {task: split or None}."""

    index: int
    name: str
    batch: str
    container: str          # "mp4" or "avi"
    width: int
    height: int
    seconds: float
    audio_codec: str | None  # "aac", "libmp3lame", "pcm_s16le" or None for no audio stream
    audio_rate: int
    split: dict[str, dict[str, str | None]]
    vfr: bool = False
    audio_offset_s: float = 0.0
    face_exit: bool = False
    label_delta: int = 0
    video_codec: str | None = None  # "h264" or "mpeg4"; None: H.264 in mp4, MPEG-4 part 2 in avi
    b_frames: int = 0               # max consecutive B-frames (frames stored in decode order)

    @property
    def two_person(self) -> bool:
        return len(self.split) == 2

    @property
    def codec(self) -> str:
        return self.video_codec or synthetic_codecs.default_codec(self.container)

    @property
    def encoding(self) -> synthetic_codecs.VideoEncoding:
        return synthetic_codecs.VideoEncoding(self.container, self.codec, self.b_frames, self.width, self.height,
                                              FPS, self.vfr)


def _all_tasks(split: str | None, missing: tuple[str, ...] = ()) -> dict[str, str | None]:
    return {t: (None if t in missing else split) for t in TASKS}


def video_specs(quick: bool = False) -> list[VideoSpec]:
    """The 12 videos (13 tracks: 8 train, 3 validation, 2 test); ``quick`` makes every video 3 s long."""
    tr, va, te = TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT
    rows = [
        # idx name            batch     cont  w    h    sec  audio         rate   split / extras
        (0, "1-30-480x270", "batch1", "mp4", 480, 270, 12, "aac", 44100, {"": _all_tasks(tr)}, {}),
        (1, "video2", "batch1", "avi", 320, 240, 10, "pcm_s16le", 22050, {"": _all_tasks(tr)},
         {"label_delta": 2}),
        (2, "3-30-640x360", "batch1", "mp4", 640, 360, 16, "aac", 48000, {"": _all_tasks(tr)},
         {"face_exit": True, "b_frames": 2}),
        (3, "4-30-400x300", "batch1", "mp4", 400, 300, 10, None, 0, {"": _all_tasks(tr, ("AU",))}, {}),
        (4, "video5", "batch1", "avi", 384, 288, 11, "libmp3lame", 44100, {"": _all_tasks(tr, ("VA",))}, {}),
        (5, "6-30-480x272", "batch1", "mp4", 480, 272, 13, "aac", 32000, {"": _all_tasks(tr)},
         {"vfr": True, "label_delta": -3}),
        (6, "7-30-640x360", "batch2", "mp4", 640, 360, 15, "aac", 44100,
         {"_left": _all_tasks(tr), "_right": _all_tasks(tr)}, {}),
        (7, "8-30-416x240", "batch2", "mp4", 416, 240, 10, "aac", 16000, {"": _all_tasks(va)},
         {"audio_offset_s": 0.5}),
        (8, "video9", "batch2", "avi", 448, 336, 12, "pcm_s16le", 32000, {"": _all_tasks(va)},
         {"label_delta": 1, "video_codec": "h264", "b_frames": 2}),
        (9, "10-30-560x316", "batch2", "mp4", 560, 316, 20, "aac", 48000, {"": _all_tasks(va)}, {}),
        (10, "11-30-480x270", "batch2", "mp4", 480, 270, 10, "aac", 44100, {"": _all_tasks(te)}, {}),
        (11, "video12", "batch2", "avi", 320, 240, 10, "pcm_s16le", 48000, {"": _all_tasks(te)},
         {"b_frames": 2}),
    ]
    specs = []
    for idx, name, batch, cont, w, h, sec, codec, rate, split, extra in rows:
        specs.append(VideoSpec(idx, name, batch, cont, w, h, 3.0 if quick else float(sec), codec, rate,
                               split, **extra))
    return specs


# ----------------------------------------------------------------------------------------------------
# Labels


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """An independent stream per (seed, video, purpose) so videos can be rendered in any order."""
    return np.random.default_rng([seed, *keys])


def draw_expression(n: int, rng: np.random.Generator) -> np.ndarray:
    """Piecewise-constant classes 0..7 in segments of 1-3 s, never the same class twice in a row."""
    out = np.empty(n, np.int64)
    pos, prev = 0, -1
    prior = np.array(EXPR_PRIOR)
    while pos < n:
        p = prior.copy()
        if prev >= 0:
            p[prev] = 0.0
        prev = int(rng.choice(8, p=p / p.sum()))
        length = int(rng.integers(FPS, 3 * FPS + 1))
        out[pos:pos + length] = prev
        pos += length
    return out


def smooth_curve(n: int, rng: np.random.Generator) -> np.ndarray:
    """Low-pass random curve in [-1, 1] (Gaussian-smoothed white noise, random spread and offset)."""
    sigma = rng.uniform(10.0, 25.0)
    half = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    x = np.convolve(rng.standard_normal(n + 2 * half), kernel, mode="valid")
    x = (x - x.mean()) / (np.abs(x - x.mean()).max() + 1e-9)
    spread = rng.uniform(0.6, 0.9)
    offset = rng.uniform(-(0.95 - spread), 0.95 - spread)
    return np.clip(offset + spread * x, -1.0, 1.0)


def draw_action_units(expr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """On/off segments (0.3-2 s) per AU; an AU that belongs to the current expression is on more often."""
    n = len(expr)
    out = np.zeros((n, len(AU_NAMES_ALL)), np.int8)
    for j, au in enumerate(AU_NAMES_ALL):
        pos = 0
        while pos < n:
            length = int(rng.integers(10, 2 * FPS + 1))
            p_on = 0.25 + (0.5 if au in EXPR_AU_AFFINITY[int(expr[pos])] else 0.0)
            out[pos:pos + length, j] = rng.random() < p_on
            pos += length
    return out


def random_stretch(n: int, rng: np.random.Generator) -> tuple[int, int]:
    """A 0-based half-open stretch of 8-24 frames somewhere in [0, n)."""
    length = int(rng.integers(8, 25))
    start = int(rng.integers(0, max(1, n - length)))
    return start, min(n, start + length)


@dataclass
class TrackPlan:
    """True labels of one track (length n_frames + max(delta, 0)) and which frames are annotated."""

    name: str
    identity: int
    split: dict[str, str | None]
    n_frames: int
    n_label: int
    expr: np.ndarray   # (N,) 0..7
    va: np.ndarray     # (N, 2) rounded to 3 decimals (what the files say)
    au: np.ndarray     # (N, 13) 0/1 over AU_NAMES_ALL
    valid: dict[str, np.ndarray] = field(default_factory=dict)  # task → (N,) bool
    invalid_stretch: dict[str, tuple[int, int]] = field(default_factory=dict)  # 0-based half-open


def plan_track(name: str, identity: int, split: dict[str, str | None], n_frames: int, delta: int,
               rng: np.random.Generator) -> TrackPlan:
    """Draw one track's labels and its per-task invalid stretch (faceless frames are added later)."""
    n = n_frames + max(delta, 0)
    expr = draw_expression(n, rng)
    va = np.round(np.stack([smooth_curve(n, rng), smooth_curve(n, rng)], axis=1), 3)
    au = draw_action_units(expr, rng)
    plan = TrackPlan(name, identity, split, n_frames, n_frames + delta, expr, va, au)
    for task in TASKS:
        s, e = random_stretch(n_frames, rng)
        plan.invalid_stretch[task] = (s, e)
        valid = np.ones(n, bool)
        valid[s:e] = False
        plan.valid[task] = valid
    return plan


# ----------------------------------------------------------------------------------------------------
# Geometry: faces, motion, alignment


def similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama, no reflection) mapping src points onto dst → 2x3 matrix."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    u, sig, vt = np.linalg.svd(d.T @ s / len(src))
    e = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ e @ vt
    scale = np.trace(np.diag(sig) @ e) / (s ** 2).sum(1).mean()
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def apply_affine(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (..., 2) points."""
    return pts @ m[:, :2].T + m[:, 2]


@dataclass
class Identity:
    """A face cut-out: colour tinted per class at gain 1, alpha, 5 landmarks and AU points (patch px)."""

    tinted: np.ndarray      # (8, h, w, 3) float32
    alpha: np.ndarray       # (h, w) float32 in [0, 1]
    landmarks: np.ndarray   # (5, 2)
    au_points: dict[str, np.ndarray]


def tint_colours() -> np.ndarray:
    """(8, 3) RGB multipliers with luminance 1 and chroma TINT_CHROMA at the expression hues."""
    h = np.deg2rad(np.array(EXPR_HUES_DEG))
    cb, cr = TINT_CHROMA * np.cos(h), TINT_CHROMA * np.sin(h)
    # YCbCr (BT.601) → RGB with Y = 1: the luminance of every row stays exactly 1.
    return np.stack([1 + 1.402 * cr, 1 - 0.344136 * cb - 0.714136 * cr, 1 + 1.772 * cb], axis=1)


def soft_ellipse_alpha(h: int, w: int, center: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    """An ellipse mask whose edge fades over a few pixels (so the cut-out has no hard seam)."""
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (round(center[0] * 4), round(center[1] * 4)),
                (round((axes[0] - FACE_EDGE_SIGMA) * 4), round((axes[1] - FACE_EDGE_SIGMA) * 4)),
                0, 0, 360, 1.0, -1, cv2.LINE_AA, shift=2)
    return cv2.GaussianBlur(mask, (0, 0), FACE_EDGE_SIGMA)


def build_identity(rgb: np.ndarray, alpha: np.ndarray, landmarks: np.ndarray,
                   au_points: dict[str, np.ndarray]) -> Identity:
    """Standardise the face's luminance and precompute its 8 tinted versions."""
    rgb = rgb.astype(np.float32)
    y = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    inside = alpha > 0.5
    z = (y - y[inside].mean()) / y[inside].std()
    luma = np.clip(LUMA_MEAN + LUMA_STD * z, 40.0, 200.0)
    own = np.clip(rgb / np.maximum(y, 8.0)[..., None], 0.0, 3.0)  # the photo's chroma, luminance 1
    colours = tint_colours().astype(np.float32)
    k = TINT_KEEP_ORIGINAL
    tinted = np.stack([luma[..., None] * ((1 - k) * c + k * own) for c in colours])
    return Identity(tinted.astype(np.float32), alpha, landmarks, au_points)


@lru_cache(maxsize=1)
def identities() -> tuple[Identity, Identity]:
    """Identity 0 = the astronaut; identity 1 = her mirror image with cooler skin and hair."""
    from skimage import data as skdata  # imported here: only rendering needs the photo

    x0, y0, w, h = FACE_REGION_XYWH
    rgb = skdata.astronaut()[y0:y0 + h, x0:x0 + w]
    centre = (FACE_ELLIPSE_CENTER[0] - x0, FACE_ELLIPSE_CENTER[1] - y0)
    alpha = soft_ellipse_alpha(h, w, centre, FACE_ELLIPSE_AXES)
    lm = np.array(ASTRONAUT_LANDMARKS_5, np.float64) - (x0, y0)
    aus = {au: np.array(p, np.float64) - (x0, y0) for au, p in AU_POINTS.items()}
    first = build_identity(rgb, alpha, lm, aus)

    def mirror(p: np.ndarray) -> np.ndarray:
        return np.stack([(w - 1) - p[..., 0], p[..., 1]], axis=-1)

    flipped = rgb[:, ::-1].astype(np.float32) * np.array([0.82, 0.95, 1.2], np.float32)
    lm2 = mirror(lm)[[1, 0, 2, 4, 3]]  # mirroring swaps image-left and image-right
    second = build_identity(np.clip(flipped, 0, 255), alpha[:, ::-1].copy(), lm2,
                            {au: mirror(p) for au, p in aus.items()})
    return first, second


def face_scale_for(height: int, two_person: bool) -> float:
    """Source-to-frame scale so the face is ~45 % (two persons: ~40 %) of the frame height."""
    return (0.40 if two_person else 0.45) * height / (2 * FACE_ELLIPSE_AXES[1])


def plan_motion(n: int, arousal: np.ndarray, box: tuple[float, float, float, float], scale: float,
                rng: np.random.Generator, exit_frames: tuple[int, int] | None = None,
                frame_width: int = 0) -> np.ndarray:
    """Per-frame 2x3 similarity (patch → frame): slow drift, zoom and tilt, plus arousal jitter.

    ``box`` = (x0, x1, y0, y1) the face centre stays in; ``exit_frames`` (0-based half-open) pushes the
    face off the right edge of the frame for those frames, sliding out and back in over 6 frames.
    """
    w, h = FACE_REGION_XYWH[2:]
    t = np.arange(n) / FPS
    x0, x1, y0, y1 = box
    f, ph = rng.uniform(0.05, 0.2, 5), rng.uniform(0, 2 * np.pi, 5)
    cx = (x0 + x1) / 2 + 0.3 * (x1 - x0) * np.sin(2 * np.pi * f[0] * t + ph[0])
    cy = (y0 + y1) / 2 + 0.3 * (y1 - y0) * np.sin(2 * np.pi * f[1] * t + ph[1])
    s = scale * (1 + 0.08 * np.sin(2 * np.pi * f[2] * t + ph[2]))
    ang = 6.0 * np.sin(2 * np.pi * f[3] * t + ph[3])
    jit_px, jit_deg = arousal_jitter(arousal[:n], scale)
    cx = cx + jit_px * rng.standard_normal(n)
    cy = cy + jit_px * rng.standard_normal(n)
    ang = ang + jit_deg * rng.standard_normal(n)
    if exit_frames is not None:
        cx = cx + exit_offset(n, exit_frames, cx, frame_width + scale * max(h, w))
    rad = np.deg2rad(ang)
    a, b = s * np.cos(rad), s * np.sin(rad)
    m = np.empty((n, 2, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a, -b, b, a
    pc = np.array([(w - 1) / 2, (h - 1) / 2])
    m[:, 0, 2] = cx - (a * pc[0] - b * pc[1])
    m[:, 1, 2] = cy - (b * pc[0] + a * pc[1])
    return m


def exit_offset(n: int, frames: tuple[int, int], cx: np.ndarray, out_x: float) -> np.ndarray:
    """Horizontal offset that slides the face out of the frame during ``frames`` (ramps of 6 frames)."""
    start, stop = frames
    ramp = 6
    weight = np.zeros(n)
    weight[start:stop] = 1.0
    for i in range(1, ramp + 1):
        if start - i >= 0:
            weight[start - i] = 1 - i / (ramp + 1)
        if stop - 1 + i < n:
            weight[stop - 1 + i] = 1 - i / (ramp + 1)
    return weight * np.maximum(out_x + 20 - cx, 0)


def render_face(ident: Identity, cls: int, valence: float, aus: np.ndarray) -> np.ndarray:
    """The face patch for one frame: tint of the class, gain of the valence, a dot per active AU."""
    face = np.clip(ident.tinted[cls] * valence_gain(valence), 0, 255).astype(np.uint8)
    r = round(AU_DOT_RADIUS * 4)
    for j in np.flatnonzero(aus):
        for x, y in ident.au_points[AU_NAMES_ALL[j]]:
            cv2.circle(face, (round(x * 4), round(y * 4)), r, AU_DOT_RGB, -1, cv2.LINE_AA, shift=2)
    return face


def composite(frame: np.ndarray, face: np.ndarray, alpha: np.ndarray, m: np.ndarray) -> bool:
    """Warp the patch into the frame (only its bounding box) and alpha-blend; False if fully outside."""
    h, w = alpha.shape
    corners = apply_affine(m, np.array([[0, 0], [w, 0], [0, h], [w, h]], np.float64))
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int) + 1
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, frame.shape[1]), min(y1, frame.shape[0])
    if x1 <= x0 or y1 <= y0:
        return False
    mr = m.copy()
    mr[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    wf = cv2.warpAffine(face, mr, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    wa = cv2.warpAffine(alpha, mr, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[..., None]
    roi = frame[y0:y1, x0:x1]
    roi[:] = (roi * (1 - wa) + wf * wa + 0.5).astype(np.uint8)
    return bool(wa.max() > 0.01)


def align_crop(frame: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """112x112 crop whose 5 landmarks best match the ArcFace template (least-squares similarity)."""
    m = similarity_lstsq(landmarks, np.array(ARCFACE_TEMPLATE_112))
    return cv2.warpAffine(frame, m, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT)


def crop_au_points(identity: int) -> dict[str, list[list[float]]]:
    """Where each AU dot of an identity lands in the 112x112 crop (for AU read-out checks)."""
    ident = identities()[identity]
    m = similarity_lstsq(ident.landmarks, np.array(ARCFACE_TEMPLATE_112))
    return {au: np.round(apply_affine(m, p), 1).tolist() for au, p in ident.au_points.items()}


# ----------------------------------------------------------------------------------------------------
# Background and audio


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


def frame_times(spec: VideoSpec, rng: np.random.Generator) -> np.ndarray:
    """Presentation time of every frame in seconds (VFR: random 33/40 ms durations, integer ms)."""
    if not spec.vfr:
        return np.arange(round(spec.seconds * FPS)) / FPS
    durations = rng.choice([33, 40], size=int(spec.seconds * 1000 / 33) + 1, p=[0.6, 0.4])
    ms = np.concatenate([[0], np.cumsum(durations)])
    return ms[ms < spec.seconds * 1000] / 1000.0


def synthesize_audio(spec: VideoSpec, tracks: list[TrackPlan], times: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """Mono float32 audio from ``audio_offset_s`` to the end of the last frame: one tone per person."""
    sr = spec.audio_rate
    end = times[-1] + (times[-1] - times[-2])
    t = spec.audio_offset_s + np.arange(int(round((end - spec.audio_offset_s) * sr))) / sr
    k = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 1)
    out = 0.002 * rng.standard_normal(len(t))
    n = len(times)
    for tr in tracks:
        freq = np.array(EXPR_TONE_HZ)[tr.expr[:n]][k]
        phase = 2 * np.pi * np.cumsum(freq) / sr
        amp = np.interp(t, times, arousal_amplitude(tr.va[:n, 1]))
        harm = np.interp(t, times, valence_harmonic(tr.va[:n, 0]))
        out += amp * (np.sin(phase) + harm * np.sin(2 * phase))
    return np.clip(out, -1, 1).astype(np.float32)


def reference_audio(spec: VideoSpec, seed: int) -> np.ndarray:
    """The audio of a video as synthesised before encoding (starts at ``spec.audio_offset_s``)."""
    job = plan_video(spec, seed, Path("."))
    return synthesize_audio(spec, job.tracks, job.times, _rng(seed, spec.index, 4))


# ----------------------------------------------------------------------------------------------------
# Encoding


def encoder_delay(codec: str, rate: int) -> int:
    """Priming samples an audio encoder puts before the signal (minus the first packet's pts), by a dry run."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.sample_rate, ctx.layout, ctx.format, ctx.time_base = rate, "mono", "fltp", Fraction(1, rate)
    packets = []
    for i in range(3):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, i * 1152, Fraction(1, rate)
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    return max(0, -int(packets[0].pts))


class AudioFeeder:
    """Encodes the audio in 1024-sample chunks as the video advances, so the file is interleaved.

    MP4 records an encoder's priming (AAC, 1024 samples) in an edit list, so decoded pts are exact. AVI
    cannot: its muxer would shift every stream to hide the negative pts, misplacing video frames. There
    the first ``delay`` samples of the signal are dropped and packets shifted by ``delay``, so the decoded
    audio at pts t still carries the content of time t (MP3: the 1105 priming samples replace it).
    ``video_start_s`` (the first frame's container time, > 0 for an AVI with B-frames) delays the signal
    by as much, behind silence: the audio at t seconds after the first frame carries the content of t.
    """

    def __init__(self, container: av.container.OutputContainer, spec: VideoSpec, samples: np.ndarray,
                 video_start_s: float = 0.0):
        self.container, self.pos = container, 0
        self.rate, self.codec = spec.audio_rate, spec.audio_codec
        self.start = int(round(spec.audio_offset_s * spec.audio_rate))
        self.shift = 0
        if spec.container == "avi" and spec.audio_codec != "pcm_s16le":
            self.shift = encoder_delay(spec.audio_codec, spec.audio_rate)
        lead = np.zeros(int(round(video_start_s * spec.audio_rate)), np.float32)
        self.samples = np.concatenate([lead, samples])[self.shift:]
        self.stream = container.add_stream(spec.audio_codec, rate=spec.audio_rate)
        self.stream.layout = "mono"

    def mux(self, packets: list[av.Packet]) -> None:
        for p in packets:
            if self.shift and p.pts is not None:
                p.pts, p.dts = p.pts + self.shift, p.dts + self.shift
        self.container.mux(packets)

    def feed_until(self, t: float) -> None:
        while self.pos < len(self.samples) and (self.start + self.pos) / self.rate < t:
            chunk = self.samples[self.pos:self.pos + 1024]
            if self.codec == "pcm_s16le":
                frame = av.AudioFrame.from_ndarray(np.round(chunk * 32767).astype(np.int16)[None],
                                                   format="s16", layout="mono")
            else:
                frame = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
            frame.sample_rate, frame.time_base = self.rate, Fraction(1, self.rate)
            frame.pts = self.start + self.pos
            self.mux(self.stream.encode(frame))
            self.pos += len(chunk)

    def finish(self) -> None:
        self.feed_until(float("inf"))
        self.mux(self.stream.encode(None))


# ----------------------------------------------------------------------------------------------------
# Rendering one video (runs in a worker process)


@dataclass
class VideoJob:
    spec: VideoSpec
    seed: int
    out: Path
    times: np.ndarray
    tracks: list[TrackPlan]
    motions: list[np.ndarray]  # per track (n, 2, 3)


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
    vstream = synthetic_codecs.add_video_stream(container, spec.encoding)
    video_start = synthetic_codecs.first_frame_time(spec.encoding)
    feeder = None
    if spec.audio_codec:
        audio = synthesize_audio(spec, job.tracks, times, _rng(job.seed, spec.index, 4))
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
        synthetic_codecs.stamp(frame, k, float(times[k]), spec.encoding)
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
    decoded_start = synthetic_codecs.first_video_time(str(path))
    if decoded_start != video_start:  # the audio was delayed by the start measured beforehand
        raise RuntimeError(f"{path}: first frame at {decoded_start} s, expected {video_start} s")
    return VideoResult(spec.name, n, faceless, first_audio_pts(path), video_start, time.perf_counter() - t0)


def background(job: VideoJob) -> Background:
    """The moving background of a video (its picture depends only on the time)."""
    return Background(job.spec.width, job.spec.height, _rng(job.seed, job.spec.index, 3))


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


# ----------------------------------------------------------------------------------------------------
# Planning and writing labels


def plan_video(spec: VideoSpec, seed: int, out: Path) -> VideoJob:
    """Frame times, tracks with labels, and per-track motion for one video."""
    times = frame_times(spec, _rng(seed, spec.index, 0))
    n = len(times)
    label_rng, motion_rng = _rng(seed, spec.index, 1), _rng(seed, spec.index, 2)
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


def apply_faceless(track: TrackPlan, faceless: np.ndarray) -> None:
    """Frames without a visible face have no label in any task."""
    for task in TASKS:
        track.valid[task][:len(faceless)] &= ~faceless


def format_rows(track: TrackPlan, task: str, expr_names: tuple[str, ...],
                au_names: tuple[str, ...]) -> list[str]:
    """Label lines (no header) of one task for one track, in an edition's classes and AUs."""
    n, valid = track.n_label, track.valid[task]
    if task == "VA":
        return [f"{v:.3f},{a:.3f}" if ok else "-5,-5" for (v, a), ok in zip(track.va[:n], valid[:n])]
    if task == "EXPR":
        return [str(c) if ok and c < len(expr_names) else "-1" for c, ok in zip(track.expr[:n], valid[:n])]
    cols = [AU_NAMES_ALL.index(a) for a in au_names]
    bad = ",".join(["-1"] * len(cols))
    return [",".join(map(str, row)) if ok else bad for row, ok in zip(track.au[:n, cols], valid[:n])]


def header(task: str, expr_names: tuple[str, ...], au_names: tuple[str, ...]) -> str:
    return {"VA": "valence,arousal", "EXPR": ",".join(expr_names), "AU": ",".join(au_names)}[task]


def write_edition(root: Path, edition: str, tracks: list[TrackPlan]) -> None:
    """Per-track files of one edition (every task/split folder exists, even if empty)."""
    dir_index, train_name = EDITION_FOLDERS[edition]
    expr_names, au_names = get_edition(edition).expr_names, get_edition(edition).au_names
    split_dirs = {TRAIN_SPLIT: train_name, VAL_SPLIT: "Validation_Set"}
    for task in TASKS:
        for split, folder in split_dirs.items():
            d = root / "annotations" / edition / TASK_DIRS[task][dir_index] / folder
            d.mkdir(parents=True, exist_ok=True)
            for tr in tracks:
                if tr.split[task] == split:
                    lines = [header(task, expr_names, au_names)] + format_rows(tr, task, expr_names, au_names)
                    (d / f"{tr.name}.txt").write_text("\n".join(lines) + "\n")


def mtl_rows(track: TrackPlan, has_face: np.ndarray) -> list[str]:
    """s-Aff-Wild2 rows for every MTL_EVERY-th frame with a face (tasks the track lacks: invalid)."""
    rows = []
    n = min(track.n_frames, track.n_label)
    cols = [AU_NAMES_ALL.index(a) for a in AU_NAMES_12]
    for k in np.flatnonzero(has_face[:n])[::MTL_EVERY]:
        va_ok = track.split["VA"] is not None and track.valid["VA"][k]
        ex_ok = track.split["EXPR"] is not None and track.valid["EXPR"][k]
        au_ok = track.split["AU"] is not None and track.valid["AU"][k]
        va = f"{track.va[k, 0]:.3f},{track.va[k, 1]:.3f}" if va_ok else "-5,-5"
        ex = str(track.expr[k]) if ex_ok else "-1"
        au = ",".join(map(str, track.au[k, cols])) if au_ok else ",".join(["-1"] * len(cols))
        rows.append(f"{track.name}/{k + 1:05d}.jpg,{va},{ex},{au}")
    return rows


def write_mtl(root: Path, tracks: list[TrackPlan], faceless: dict[str, np.ndarray]) -> None:
    d = root / "annotations" / "mtl"
    d.mkdir(parents=True, exist_ok=True)
    for split, fname in MTL_FILES.items():
        rows = [MTL_HEADER]
        for tr in tracks:
            if split in tr.split.values():
                rows += mtl_rows(tr, ~faceless[tr.name])
        (d / fname).write_text("\n".join(rows) + "\n")


def write_test_lists(root: Path, tracks: list[TrackPlan]) -> None:
    d = root / "test_sets"
    d.mkdir(parents=True, exist_ok=True)
    names = [tr.name for tr in tracks if TEST_SPLIT in tr.split.values()]
    for task in ("VA", "EXPR", "AU", "MTL"):
        (d / f"{task}_test_set.txt").write_text("".join(f"{n}\n" for n in names))


# ----------------------------------------------------------------------------------------------------
# Meta and the entry points


def ranges_1based(mask: np.ndarray) -> list[list[int]]:
    """[[first, last], ...] of True runs, 1-based inclusive frame numbers."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [[int(s) + 1, int(e)] for s, e in zip(edges[::2], edges[1::2])]


def mapping_meta() -> dict:
    """The label → signal constants, as exposed in meta.json."""
    return {
        "expr_hue_deg": list(EXPR_HUES_DEG),
        "expr_tint_rgb_multipliers": np.round(tint_colours(), 4).tolist(),
        "tint_chroma": TINT_CHROMA,
        "tint_keep_original": TINT_KEEP_ORIGINAL,
        "expr_tone_hz": list(EXPR_TONE_HZ),
        "valence_gain": "0.45 + 0.2 * (v + 1)",
        "valence_harmonic": "0.125 * (v + 1)",
        "arousal_amplitude": "0.03 + 0.13 * (a + 1)",
        "arousal_jitter": "translation std scale*(0.2 + 1.8*(a + 1)) px, rotation std 0.5*(a + 1) deg",
        "au_names": list(AU_NAMES_ALL),
        "au_dot_radius_src_px": AU_DOT_RADIUS,
        "au_points_crop": {str(i): crop_au_points(i) for i in (0, 1)},
        "landmarks_src_astronaut": [list(p) for p in ASTRONAUT_LANDMARKS_5],
        "arcface_template_112": [list(p) for p in ARCFACE_TEMPLATE_112],
        "truth_files": "truth/<track>.npy float32 (n_frames, 5, 2) x,y frame pixels, NaN = no face",
        "frame_ranges": "1-based inclusive [first, last]",
    }


def video_meta(job: VideoJob, res: VideoResult) -> dict:
    """One video's entry in meta.json.

    Keys: name, path (relative to DIR), batch, container, video_codec, b_frames (max consecutive
    B-frames, 0: none), width, height, fps (nominal), n_frames (decoded count), duration_s, has_audio,
    audio_codec, audio_rate, audio_offset_s (intended start of the audio, after the first frame),
    audio_first_pts_s and video_first_pts_s (container times of the first decoded sample and frame),
    vfr (+ frame_times_s), two_person, and tracks:
    name, identity, split {task: Train_Set|Validation_Set|test|None}, n_label_lines, label_delta
    (label lines − n_frames), faceless_frames and invalid_frames {task: ranges} (1-based, inclusive).
    """
    spec = job.spec
    meta = {
        "name": spec.name,
        "path": f"videos/{spec.batch}/{spec.name}.{spec.container}",
        "batch": spec.batch,
        "container": spec.container,
        "video_codec": spec.codec,
        "b_frames": spec.b_frames,
        "width": spec.width,
        "height": spec.height,
        "fps": FPS,
        "n_frames": res.n_frames,
        "duration_s": round(float(job.times[-1] + (job.times[-1] - job.times[-2])), 6),
        "has_audio": spec.audio_codec is not None,
        "audio_codec": spec.audio_codec,
        "audio_rate": spec.audio_rate or None,
        "audio_offset_s": spec.audio_offset_s,
        "audio_first_pts_s": res.audio_first_pts_s,
        "video_first_pts_s": res.video_first_pts_s,
        "vfr": spec.vfr,
        "two_person": spec.two_person,
        "tracks": [],
    }
    if spec.vfr:
        meta["frame_times_s"] = [round(float(t), 3) for t in job.times]
    for tr in job.tracks:
        meta["tracks"].append({
            "name": tr.name,
            "identity": tr.identity,
            "split": dict(tr.split),
            "n_label_lines": tr.n_label,
            "label_delta": tr.n_label - tr.n_frames,
            "faceless_frames": ranges_1based(res.faceless[tr.name]),
            "invalid_frames": {t: ranges_1based(~tr.valid[t][:tr.n_label]) for t in TASKS},
        })
    return meta


def generate(out: Path, seed: int = 0, quick: bool = False, workers: int | None = None) -> dict:
    """Write the whole mini dataset under ``out`` and return the meta it writes to ``out/meta.json``.

    Deterministic for a seed (labels, meta, crops and, with these single-threaded encoders, video
    bytes), whatever ``workers``. ``quick`` shortens every video to 3 s (for tests); ``workers``
    processes render videos in parallel (default: up to 2).
    """
    return generate_timed(out, seed, quick, workers)[0]


def generate_timed(out: Path, seed: int = 0, quick: bool = False,
                   workers: int | None = None) -> tuple[dict, dict[str, float]]:
    """``generate`` plus the seconds each video took to render (kept out of meta: they vary)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [plan_video(spec, seed, out) for spec in video_specs(quick)]
    workers = workers or min(2, os.cpu_count() or 1)
    if workers > 1:
        # forked workers inherit the caller's uncollected garbage; PyAV objects in it (e.g. held by an
        # exception's traceback) crash a worker that frees them, the FFmpeg threads they use being gone
        gc.collect()
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(render_video, jobs))
    else:
        results = [render_video(job) for job in jobs]
    tracks, faceless = [], {}
    for job, res in zip(jobs, results):
        for tr in job.tracks:
            apply_faceless(tr, res.faceless[tr.name])
            faceless[tr.name] = res.faceless[tr.name]
            tracks.append(tr)
    for edition in EDITION_FOLDERS:
        write_edition(out, edition, tracks)
    write_mtl(out, tracks, faceless)
    write_test_lists(out, tracks)
    meta = {
        "generator": "data.synthetic",
        "seed": seed,
        "quick": quick,
        "fps": FPS,
        "mapping": mapping_meta(),
        "videos": [video_meta(job, res) for job, res in zip(jobs, results)],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta, {res.name: res.seconds for res in results}


def print_summary(meta: dict, timings: dict[str, float], total_s: float) -> None:
    """Per-video table: name, container, frames, seconds of video, seconds to render."""
    print(f"{'video':<18}{'cont':>5}{'frames':>8}{'video s':>9}{'render s':>10}")
    for v in meta["videos"]:
        print(f"{v['name']:<18}{v['container']:>5}{v['n_frames']:>8}{v['duration_s']:>9.1f}"
              f"{timings[v['name']]:>10.1f}")
    frames = sum(v["n_frames"] for v in meta["videos"])
    seconds = sum(v["duration_s"] for v in meta["videos"])
    print(f"{'total':<18}{len(meta['videos']):>5}{frames:>8}{seconds:>9.1f}{total_s:>10.1f}  (wall)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate a mini Aff-Wild2 (videos, labels, crops).")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed → same dataset")
    parser.add_argument("--quick", action="store_true", help="3-second videos instead of 10-20 s (for tests)")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel render processes (default: min(2, CPU count))")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    meta, timings = generate_timed(args.out, args.seed, args.quick, args.workers)
    print_summary(meta, timings, time.perf_counter() - t0)


if __name__ == "__main__":
    main()
