"""Geometry and face rendering: the two identities, per-frame motion, compositing and aligned crops."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from tools.synthetic.mapping import (
    ARCFACE_TEMPLATE_112,
    ASTRONAUT_LANDMARKS_5,
    AU_DOT_RADIUS,
    AU_DOT_RGB,
    AU_NAMES_ALL,
    AU_POINTS,
    CROP_SIZE,
    EXPR_HUES_DEG,
    FACE_EDGE_SIGMA,
    FACE_ELLIPSE_AXES,
    FACE_ELLIPSE_CENTER,
    FACE_REGION_XYWH,
    FPS,
    LUMA_MEAN,
    LUMA_STD,
    TINT_CHROMA,
    TINT_KEEP_ORIGINAL,
    arousal_jitter,
    valence_gain,
)


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
