"""Weak and strong views of a face for pseudo-labelling (FixMatch-style: the teacher sees the weak view, the student
learns from the strong one).

Both work on uint8 C×S×S RGB tensors and take every random draw from a ``numpy.random.Generator`` that the caller
seeds per sample, so a sample's views are the same for any number of DataLoader workers and after a resume.

- ``weak_view``: a random translation (pad by round(crop·S) with reflection, random S×S crop) then a horizontal
  flip with probability 0.5, as FixMatch's weak augmentation (its paper: flip and translation by up to 12.5 %).
- ``strong_view``: a weak view of its own, then RandAugment as FixMatch and FlexMatch draw it — ``n`` operations
  chosen uniformly, with replacement, from ``OPS``, each with its value drawn uniformly in its range — then
  cutout: a square of side up to ``cutout``·S, centred anywhere (clipped at the border), filled with grey 127.

Where the numbers come from: the op list and the ranges of ``OPS`` are those of FlexMatch's code base
(TorchSSL ``datasets/augmentation/randaugment.py``, ``augment_list``; the same list and ranges as the FixMatch
paper's RandAugment table, its Solarize threshold [0, 1] being [0, 256] on 8-bit levels); TorchSSL draws each
value uniformly over the whole range (its magnitude argument is unused) and applies the cutout with a side
drawn uniformly in [0, 0.5]·S after the ops. Translations are fractions of S; shears are the x (or y) offset per
pixel of the other axis, about the top-left corner as PIL's affine transform does; rotations, shears and
translations fill with black. Our cutout grey is 127 (TorchSSL fills (125, 123, 114)).

``magnitude_max`` (0–10, default 10) scales every drawn value towards the op's identity (``IDENTITY``):
value = identity + (drawn − identity)·magnitude_max/10; at 10 the draws are the published ones, at 0 every op
but the parameter-free ones (AutoContrast, Equalize) is the identity.

The ops are torchvision's (``transforms.v2.functional``); the one adjustment: torchvision refuses a Solarize
threshold above 255, where nothing would be inverted, so such a threshold returns the image unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.v2.functional as F

# (name, low, high) of every RandAugment op; None: the op takes no value.
OPS: tuple[tuple[str, float | None, float | None], ...] = (
    ("AutoContrast", None, None),
    ("Brightness", 0.05, 0.95),
    ("Color", 0.05, 0.95),
    ("Contrast", 0.05, 0.95),
    ("Equalize", None, None),
    ("Identity", None, None),
    ("Posterize", 4, 8),  # bits kept (the drawn value rounded down)
    ("Rotate", -30, 30),  # degrees
    ("Sharpness", 0.05, 0.95),
    ("ShearX", -0.3, 0.3),
    ("ShearY", -0.3, 0.3),
    ("Solarize", 0, 256),  # threshold: levels >= it are inverted
    ("TranslateX", -0.3, 0.3),  # fraction of S
    ("TranslateY", -0.3, 0.3),
)
OP_NAMES = tuple(name for name, _, _ in OPS)
RANGES = {name: (low, high) for name, low, high in OPS}
# The value at which each op with a value leaves the image unchanged (what magnitude_max shrinks towards).
IDENTITY = {"Brightness": 1.0, "Color": 1.0, "Contrast": 1.0, "Sharpness": 1.0, "Posterize": 8, "Rotate": 0.0,
            "ShearX": 0.0, "ShearY": 0.0, "Solarize": 256, "TranslateX": 0.0, "TranslateY": 0.0}
MAGNITUDE_SCALE = 10  # RandAugment's magnitude scale: magnitude_max = 10 is the whole published range
WEAK_CROP = 0.125  # FixMatch: translation by up to 12.5 % of the side
CUTOUT = 0.5  # FixMatch/FlexMatch: cutout side up to half the image side
CUTOUT_FILL = 127


def weak_view(img: torch.Tensor, rng: np.random.Generator, crop: float = WEAK_CROP) -> torch.Tensor:
    """uint8 C×S×S → a random translation (reflect-pad round(crop·S), random S×S crop) then a flip with p 0.5.

    Three draws from ``rng``, always (crop top, crop left, flip), so later draws do not depend on the image."""
    s = img.shape[-1]
    pad = min(round(crop * s), s - 1)  # reflection needs a pad under the side
    top, left = (int(v) for v in rng.integers(0, 2 * pad + 1, size=2))
    flip = rng.random() < 0.5
    if pad:
        img = F.crop(F.pad(img, [pad, pad, pad, pad], padding_mode="reflect"), top, left, s, s)
    return (F.horizontal_flip(img) if flip else img).contiguous()


def op_value(name: str, u: float, magnitude_max: float = MAGNITUDE_SCALE) -> float:
    """The value of op ``name`` at position ``u`` ∈ [0, 1] of its range, scaled towards its identity by
    magnitude_max / 10 (see the module docstring); 0 for the ops without a value."""
    low, high = RANGES[name]
    if low is None:
        return 0.0
    drawn = low + (high - low) * u
    if magnitude_max == MAGNITUDE_SCALE:  # the published draw, exactly
        return drawn
    return IDENTITY[name] + (drawn - IDENTITY[name]) * magnitude_max / MAGNITUDE_SCALE


def apply_op(img: torch.Tensor, name: str, value: float) -> torch.Tensor:
    """One RandAugment op with its value (as ``op_value`` gives it) on a uint8 C×S×S tensor."""
    s = img.shape[-1]
    if name == "Identity":
        return img
    if name == "AutoContrast":
        return F.autocontrast(img)
    if name == "Equalize":
        return F.equalize(img)
    if name == "Brightness":
        return F.adjust_brightness(img, value)
    if name == "Color":
        return F.adjust_saturation(img, value)
    if name == "Contrast":
        return F.adjust_contrast(img, value)
    if name == "Sharpness":
        return F.adjust_sharpness(img, value)
    if name == "Posterize":
        return F.posterize(img, max(1, int(value)))
    if name == "Solarize":
        return img if value > 255 else F.solarize(img, float(value))
    if name == "Rotate":
        return F.rotate(img, float(value), fill=[0.0])
    if name in ("ShearX", "ShearY"):
        deg = math.degrees(math.atan(value))
        shear = [deg, 0.0] if name == "ShearX" else [0.0, deg]
        return F.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, fill=[0.0], center=[0.0, 0.0])
    if name in ("TranslateX", "TranslateY"):
        shift = int(round(value * s))
        move = [shift, 0] if name == "TranslateX" else [0, shift]
        return F.affine(img, angle=0.0, translate=move, scale=1.0, shear=[0.0, 0.0], fill=[0.0])
    raise ValueError(f"unknown RandAugment op {name!r}; known: {', '.join(OP_NAMES)}")


def apply_cutout(img: torch.Tensor, rng: np.random.Generator, fraction: float = CUTOUT) -> torch.Tensor:
    """A grey square of side u·fraction·S (u uniform in [0, 1]) centred at a uniform point, clipped at the border.

    Three draws from ``rng``, always (side, centre x, centre y)."""
    s = img.shape[-1]
    side = int(round(rng.random() * fraction * s))
    cx, cy = rng.uniform(0, s, size=2)
    x0, y0 = int(max(0.0, cx - side / 2)), int(max(0.0, cy - side / 2))
    x1, y1 = min(s, x0 + side), min(s, y0 + side)
    if side == 0 or x1 <= x0 or y1 <= y0:
        return img
    grey = torch.tensor(CUTOUT_FILL, dtype=img.dtype)
    return F.erase(img, y0, x0, y1 - y0, x1 - x0, grey)


def strong_view(img: torch.Tensor, rng: np.random.Generator, n: int = 2, magnitude_max: float = MAGNITUDE_SCALE,
                cutout: float = CUTOUT, crop: float = WEAK_CROP) -> torch.Tensor:
    """uint8 C×S×S → weak view, ``n`` RandAugment ops (uniform over ``OPS``, with replacement, each value uniform
    in its range), cutout (see the module docstring). The draws: the weak view's, the n op indices, one position
    per op, the cutout's."""
    if not 0 <= magnitude_max <= MAGNITUDE_SCALE:
        raise ValueError(f"magnitude_max must be in [0, {MAGNITUDE_SCALE}], got {magnitude_max}")
    img = weak_view(img, rng, crop)
    for k in rng.integers(0, len(OPS), size=n):
        name = OP_NAMES[int(k)]
        img = apply_op(img, name, op_value(name, float(rng.random()), magnitude_max))
    return apply_cutout(img, rng, cutout).contiguous()
