"""ABAW4 learning-from-synthetic-data (LSD) images: one folder per class, read as uint8 faces of one size.

Layout of the release (and of ``--lsd`` data): ``ROOT/train/<CLASS>/*.jpg`` (synthetic faces) and
``ROOT/val/<CLASS>/*.jpg`` (real Aff-Wild2 frames), six classes. The published code reads them with torchvision's
``ImageFolder`` (classes in alphabetical folder order, which is Anger, Disgust, Fear, Happiness, Sadness,
Surprise = Aff-Wild2 EXPR codes 1–6). The official folders are not spelt like our class names (the anger folder
is misspelt), so a folder is matched to a class by the first three letters of its name, case-free; a folder
that matches no class, or a class matched twice, is an error naming the folder.

A sample is ``{'pixels': 3×S×S uint8, 'expr': class index 0–5, 'expr_valid': True, 'index': i}``: the image
resized to S×S (area interpolation), the training view (crop, flip) drawn on the device by the model's
``prepare`` hook as for the database's frames. Nothing is random here, so any worker count gives the same data.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from tasks import EXPR_NAMES_6
from utils.inputs import PIXELS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
PREFIX = 3  # letters that tell the six classes apart (ang, dis, fea, hap, sad, sur)


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
    """(image, class index) of every image of a split, in class then file-name order."""
    items = []
    for k, d in sorted(class_folders(split_dir).items()):
        items += [(p, k) for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise LsdError(f"{split_dir}: no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return items


class LsdImages(Dataset):
    """The images of one split of an LSD root, as uint8 faces of ``size`` px with their class."""

    def __init__(self, root: str | Path, split: str, size: int) -> None:
        self.root, self.split, self.size = Path(root), split, size
        self.items = list_images(self.root / split)

    def __len__(self) -> int:
        return len(self.items)

    def labels(self) -> np.ndarray:
        return np.array([k for _, k in self.items], np.int64)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        path, k = self.items[i]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise LsdError(f"{path}: not a readable image")
        if bgr.shape[:2] != (self.size, self.size):
            bgr = cv2.resize(bgr, (self.size, self.size), interpolation=cv2.INTER_AREA)
        rgb = np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))
        return {PIXELS: torch.from_numpy(rgb), "expr": torch.tensor(k), "expr_valid": torch.tensor(True),
                "index": torch.tensor(i)}
