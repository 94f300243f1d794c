"""ABAW4 learning-from-synthetic-data (LSD) images: one folder per class, read as uint8 faces of one size.

Layout of the release (and of ``--lsd`` data): ``ROOT/train/<CLASS>/*.jpg`` (synthetic faces) and
``ROOT/val/<CLASS>/*.jpg`` (real Aff-Wild2 frames), six classes. The published code reads them with torchvision's
``ImageFolder`` (classes in alphabetical folder order, which is Anger, Disgust, Fear, Happiness, Sadness,
Surprise = Aff-Wild2 EXPR codes 1–6). The official folders are not spelt like our class names (the anger folder
is misspelt), so a folder is matched to a class by the first three letters of its name, case-free; a folder
that matches no class, or a class matched twice, is an error naming the folder.

A split without class folders (images directly in it, e.g. a test set) is unlabelled: every class is −1.

A sample is ``{'pixels': 3×S×S uint8, 'expr': class index 0–5 (−1: none), 'expr_valid', 'index': i}``. Evaluation
(a plain index): the image resized to S×S (area interpolation). Training (an ``(index, seed)`` key, as
``data.sampling.EpochSampler`` draws them): resized to ``round(S · resize_ratio)`` (the published 228/224) and
a random S×S crop and a horizontal flip drawn from the sample's own seed, so any worker count gives the same
views and a resumed run the same draws. ``labels`` holds the arrays the sampler's weights read.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from tasks import EXPR_NAMES_6, OutputLayout, get_layout
from utils.inputs import PIXELS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PREFIX = 3  # letters that tell the six classes apart (ang, dis, fea, hap, sad, sur)
RESIZE_RATIO = 228 / 224  # the published training view: resize 228, random crop 224


class LsdError(ValueError):
    """An unusable LSD folder (the message names it)."""


def match_class(folder: str) -> int | None:
    """Index in EXPR_NAMES_6 of a class folder's name ('ANGRY', 'anger', 'Happy' ...), None if none matches."""
    key = folder.strip().lower()[:PREFIX]
    hits = [i for i, name in enumerate(EXPR_NAMES_6) if name.lower()[:PREFIX] == key]
    return hits[0] if len(key) == PREFIX and hits else None


def class_folders(split_dir: Path) -> dict[int, Path]:
    """{class index: folder} of one split; LsdError for a folder of no class, a class twice, or a class missing."""
    if not split_dir.is_dir():
        raise LsdError(f"{split_dir}: no such folder (an LSD root holds train/ and val/ class folders)")
    found: dict[int, Path] = {}
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        k = match_class(d.name)
        if k is None:
            raise LsdError(f"{d}: a folder of no class (expected one per class: {', '.join(EXPR_NAMES_6)})")
        if k in found:
            raise LsdError(f"{d}: a second folder for {EXPR_NAMES_6[k]} (first: {found[k].name})")
        found[k] = d
    missing = [EXPR_NAMES_6[k] for k in range(len(EXPR_NAMES_6)) if k not in found]
    if missing:
        raise LsdError(f"{split_dir}: no folder for {', '.join(missing)}")
    return found


def list_images(split_dir: Path) -> list[tuple[Path, int]]:
    """(image, class index) of every image of a split, in class then file-name order; a split of bare images
    (no class folders) gives class −1 to each."""
    if split_dir.is_dir() and not any(p.is_dir() for p in split_dir.iterdir()):
        items = [(p, -1) for p in sorted(split_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    else:
        items = []
        for k, d in sorted(class_folders(split_dir).items()):
            items += [(p, k) for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise LsdError(f"{split_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in it or its class folders")
    return items


def read_rgb(path: Path) -> np.ndarray:
    """H×W×3 uint8 RGB; LsdError naming the file when it is not a readable image."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise LsdError(f"{path}: not a readable image")
    return bgr[:, :, ::-1]


def square(rgb: np.ndarray, size: int) -> np.ndarray:
    return rgb if rgb.shape[:2] == (size, size) else cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


class LsdImages(Dataset):
    """The images of one split of an LSD root, as uint8 faces of ``size`` px with their class.

    ``flip``: probability of a horizontal flip in training draws; ``resize_ratio``: the training resize over the
    crop size (1 = no crop)."""

    layout: OutputLayout = get_layout("lsd")

    def __init__(self, root: str | Path, split: str, size: int, flip: float = 0.5,
                 resize_ratio: float = RESIZE_RATIO) -> None:
        self.root, self.split, self.size = Path(root), split, size
        self.flip, self.resize_ratio = flip, resize_ratio
        self.items = list_images(self.root / split)
        expr = np.array([k for _, k in self.items], np.int64)
        n = len(expr)
        self.labels = {"expr": expr, "expr_valid": expr >= 0, "au": np.zeros((n, 0), np.int64),
                       "au_valid": np.zeros((n, 0), bool), "va": np.zeros((n, 2), np.float32),
                       "va_valid": np.zeros(n, bool)}

    def __len__(self) -> int:
        return len(self.items)

    def labelled(self) -> np.ndarray:
        return self.labels["expr_valid"]

    def names(self) -> list[str]:
        """Each image's path relative to the split folder, '/'-separated (the prediction file's image column)."""
        return [p.relative_to(self.root / self.split).as_posix() for p, _ in self.items]

    def describe(self) -> str:
        return f"{len(self)} images of {self.root / self.split}"

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        i, seed = (key, None) if np.isscalar(key) else key
        path, k = self.items[int(i)]
        rgb = read_rgb(path)
        if seed is None:
            rgb = square(rgb, self.size)
        else:
            rgb = self.training_view(rgb, np.random.default_rng(seed))
        chw = np.ascontiguousarray(rgb.transpose(2, 0, 1))
        return {PIXELS: torch.from_numpy(chw), "expr": torch.tensor(k), "expr_valid": torch.tensor(k >= 0),
                "index": torch.tensor(int(i))}

    def training_view(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Resize to round(S · ratio), a random S×S crop, a flip with probability ``flip``: one draw each."""
        big = max(self.size, round(self.size * self.resize_ratio))
        rgb = square(rgb, big)
        y, x = (int(v) for v in rng.integers(0, big - self.size + 1, size=2))
        rgb = rgb[y:y + self.size, x:x + self.size]
        return rgb[:, ::-1] if rng.random() < self.flip else rgb
