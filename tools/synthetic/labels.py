"""True labels of a track: expression segments, smooth valence/arousal, AU segments, invalid stretches."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tasks import TASKS
from tools.synthetic.mapping import AU_NAMES_ALL, EXPR_AU_AFFINITY, EXPR_PRIOR, FPS


def rng_for(seed: int, *keys: int) -> np.random.Generator:
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
