"""The unlabelled pool of pseudo-labelling: face images served as a weak and a strong view, and its sampler.

A pool is a list of sources, each a sequence of face images read by its eval view (no augmentation):

- ``ClipFrames``: frames of a training-split ``ClipDataset`` with a frame ``InputSpec`` (kind 'frame', no
  mask), given by flat frame indices — the training frames without a valid EXPR label (``unlabelled_frames``
  lists them). Never frames of another split: a dataset of any split but Train_Set is refused, and so is a
  frame of a track whose EXPR labels belong to another split (a Validation_Set EXPR track that is in
  Train_Set for VA), since pseudo-labelling it would train on validation faces.
- ``FolderFaces``: every image of a folder, flat or with class folders (matched to the class names by their
  first three letters, case-free, as ``data.lsd`` does; loose images beside them have no class), resized to
  S×S. The class (or a given ``truth`` mapping) is the hidden truth: carried for pseudo-label precision, never
  a training label. Photos that are not aligned crops are aligned once when the pool is built (``align``:
  create_database.py's detector, landmarks and template), faceless ones left out.

``UnlabelledFaces`` numbers the pool's images 0..N−1 (uid: the sources in order, each in its own order, so a
uid is stable for the same sources) and serves key (uid, seed) as ``{'weak', 'strong': uint8 3×S×S, 'uid',
'truth': class or −1}``, both views drawn from ``default_rng(seed)`` (``data.strong_aug``: the weak view's
draws, then the strong view's). A plain uid gives the eval image as both views.

``UnlabelledSampler`` draws the unlabelled keys of each optimiser step as a function of (seed, step) only, so
a resumed run draws what the uninterrupted run would have drawn, whatever the worker count.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from data.align import five_points, similarity_to_template, warp_face
from data.clips import ClipDataset, DatasetError
from data.faces import DlibBackend
from data.lsd import IMAGE_SUFFIXES, PREFIX, LsdError, read_rgb, square
from data.reader import open_store
from data.strong_aug import CUTOUT, MAGNITUDE_SCALE, WEAK_CROP, strong_view, weak_view
from data.tracks import stored_tracks
from tasks import EXPR_NAMES_8, TRAIN_SPLIT
from utils.inputs import PIXELS

NO_CLASS = -1


class FaceSource(Protocol):
    """A sequence of face images (uint8 3×S×S, eval view) with their hidden classes."""

    size: int
    truth: np.ndarray  # (n,) int64, −1 where unknown

    def __len__(self) -> int: ...
    def image(self, i: int) -> torch.Tensor: ...
    def describe(self) -> str: ...


def _truth_array(truth: Sequence[int] | np.ndarray | None, n: int, what: str) -> np.ndarray:
    if truth is None:
        return np.full(n, NO_CLASS, np.int64)
    out = np.asarray(truth, np.int64).reshape(-1)
    if len(out) != n:
        raise DatasetError(f"{what}: {len(out)} truth classes for {n} images")
    return out


# --- frames of the database ---------------------------------------------------------------------------------
def _check_training_frames(ds: ClipDataset) -> None:
    """DatasetError unless ``ds`` is a training-split dataset of single RGB frames."""
    if ds.split != TRAIN_SPLIT:
        raise DatasetError(f"{ds.db_path}: the unlabelled pool takes training frames only (split {TRAIN_SPLIT}), "
                           f"not a dataset of split {ds.split or 'None (every track, test tracks included)'}")
    if ds.spec.kind != "frame" or ds.spec.mask is not None:
        raise DatasetError(f"{ds.db_path}: the unlabelled pool serves single RGB frames; the dataset's input is "
                           f"kind {ds.spec.kind!r} with mask {ds.spec.mask!r} (use InputSpec.frame(size))")


def _other_split_expr(ds: ClipDataset) -> np.ndarray:
    """(len(ds),) bool: frames of tracks whose EXPR labels are in another split than the dataset's."""
    names = [t.name for t in ds.tracks]
    split_of = {s.name: s.labels.get("EXPR", {}).get("split") for s in stored_tracks(open_store(ds.db_path), names)}
    lengths = np.diff(ds.starts)
    other = np.array([split_of.get(n) not in (None, ds.split) for n in names])
    return np.repeat(other, lengths)


def unlabelled_frames(ds: ClipDataset) -> np.ndarray:
    """Flat indices of the training frames that may feed the pool: a face, no valid EXPR label, on a track whose
    EXPR labels (if any) are training labels."""
    _check_training_frames(ds)
    face = np.concatenate([t.face for t in ds.tracks])
    return np.flatnonzero(face & ~ds.labels["expr_valid"] & ~_other_split_expr(ds))


class ClipFrames:
    """Frames ``indices`` of a training ``ClipDataset`` (frame kind, no mask), read without augmentation."""

    def __init__(self, ds: ClipDataset, indices: Sequence[int] | np.ndarray,
                 truth: Sequence[int] | np.ndarray | None = None) -> None:
        _check_training_frames(ds)
        self.indices = np.asarray(indices, np.int64).reshape(-1)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= len(ds)):
            raise DatasetError(f"{ds.db_path}: frame indices outside 0..{len(ds) - 1}")
        leaked = self.indices[_other_split_expr(ds)[self.indices]]
        if len(leaked):
            t, f = ds.locate(int(leaked[0]))
            raise DatasetError(f"{ds.db_path}: {len(leaked)} frames (first: track {ds.tracks[t].name} frame {f}) are "
                               "on tracks whose EXPR labels are in another split; they cannot be unlabelled training "
                               "frames (data.unlabelled.unlabelled_frames lists the ones that can)")
        self.ds, self.size = ds, ds.spec.size
        self.truth = _truth_array(truth, len(self.indices), f"{ds.db_path} frames")

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, i: int) -> torch.Tensor:
        return self.ds[int(self.indices[i])][PIXELS]

    def describe(self) -> str:
        return f"{len(self)} training frames of {self.ds.db_path}"


# --- a folder of faces ---------------------------------------------------------------------------------------
def match_name(folder: str, classes: Sequence[str]) -> int | None:
    """Index in ``classes`` of a class folder's name by its first three letters, case-free (None: no class)."""
    key = folder.strip().lower()[:PREFIX]
    hits = [k for k, name in enumerate(classes) if name.lower()[:PREFIX] == key]
    return hits[0] if len(key) == PREFIX and hits else None


def folder_images(root: Path, classes: Sequence[str]) -> list[tuple[Path, int]]:
    """(image, class) of every image of ``root``: loose images (class −1) then each class folder's, in class
    order, files in name order. DatasetError for a folder of no class, a class twice, or no image at all."""
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder of face images")
    items = [(p, NO_CLASS) for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    found: dict[int, Path] = {}
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        k = match_name(d.name, classes)
        if k is None:
            raise DatasetError(f"{d}: a folder of no class (class folders are named after {', '.join(classes)})")
        if k in found:
            raise DatasetError(f"{d}: a second folder for {classes[k]} (first: {found[k].name})")
        found[k] = d
    for k, d in sorted(found.items()):
        items += [(p, k) for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not items:
        raise DatasetError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) in it or its class folders")
    return items


class FolderFaces:
    """Every image of a folder (``folder_images``), resized to ``size`` (area interpolation).

    ``truth``: {image path relative to the folder ('/'-separated): class} for a flat folder whose classes are
    kept apart (e.g. a generator's truth file); it overrides the class folders' classes.
    ``align``: the images are photos, not aligned crops: each is aligned once here as create_database.py aligns
    video frames (dlib ``detector``, the 68 landmarks, the 5-point similarity to the 112×112 template); the
    pool keeps each image's matrix (6 numbers) and warps the image with it when served; an image where no face
    is found is left out (``skipped``)."""

    def __init__(self, root: str | Path, size: int, classes: Sequence[str] = EXPR_NAMES_8,
                 truth: Mapping[str, int] | None = None, align: bool = False, detector: str = "hog") -> None:
        self.root, self.size = Path(root), size
        self.items = folder_images(self.root, classes)
        self.matrices: np.ndarray | None = None
        self.skipped: list[str] = []
        if align:
            self._align(detector)
        names = self.names()
        if truth is not None:
            unknown = sorted(set(truth) - set(names))
            if unknown:
                raise DatasetError(f"{self.root}: truth for images that are not there: {', '.join(unknown[:5])}")
        given = {} if truth is None else truth
        self.truth = np.array([given.get(n, k) for n, (_, k) in zip(names, self.items)], np.int64)

    def __len__(self) -> int:
        return len(self.items)

    def names(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p, _ in self.items]

    def _align(self, detector: str) -> None:
        """One face per image (the detector's best), its alignment matrix; images without a face dropped."""
        backend = DlibBackend(detector)
        kept, matrices = [], []
        for path, k in tqdm(self.items, desc=f"aligning {self.root.name}", unit="image", dynamic_ncols=True):
            rgb = self._read(path)
            found = backend.detect(rgb)
            if not found:
                self.skipped.append(path.relative_to(self.root).as_posix())
                continue
            kept.append((path, k))
            matrices.append(similarity_to_template(five_points(backend.landmarks(rgb, found[0].box))))
        if not kept:
            raise DatasetError(f"{self.root}: no face found in any of its {len(self.items)} images")
        self.items, self.matrices = kept, np.stack(matrices).astype(np.float64)

    @staticmethod
    def _read(path: Path) -> np.ndarray:
        try:
            return read_rgb(path)
        except LsdError as e:
            raise DatasetError(str(e)) from None

    def image(self, i: int) -> torch.Tensor:
        rgb = self._read(self.items[i][0])
        if self.matrices is not None:
            rgb = warp_face(np.ascontiguousarray(rgb), self.matrices[i])
        return torch.from_numpy(np.ascontiguousarray(square(rgb, self.size).transpose(2, 0, 1)))

    def describe(self) -> str:
        aligned = f" (aligned here; {len(self.skipped)} without a face left out)" if self.matrices is not None else ""
        return f"{len(self)} images of {self.root}{aligned}"


# --- the pool --------------------------------------------------------------------------------------------------
class UnlabelledFaces(Dataset):
    """The pool: its sources' images numbered 0..N−1, served as weak and strong views (module docstring).

    ``crop``, ``n_ops``, ``magnitude_max``, ``cutout``: the views' settings (``data.strong_aug``)."""

    def __init__(self, sources: Sequence[FaceSource], crop: float = WEAK_CROP, n_ops: int = 2,
                 magnitude_max: float = MAGNITUDE_SCALE, cutout: float = CUTOUT) -> None:
        self.sources = list(sources)
        if not self.sources or not sum(len(s) for s in self.sources):
            raise DatasetError("the unlabelled pool is empty: no frame or image to pseudo-label")
        sizes = sorted({s.size for s in self.sources})
        if len(sizes) > 1:
            raise DatasetError(f"the unlabelled pool's sources serve different sizes {sizes}: "
                               + "; ".join(f"{s.describe()}: {s.size}" for s in self.sources))
        if not 0 <= magnitude_max <= MAGNITUDE_SCALE:
            raise ValueError(f"magnitude_max must be in [0, {MAGNITUDE_SCALE}], got {magnitude_max}")
        self.size = sizes[0]
        self.crop, self.n_ops, self.magnitude_max, self.cutout = crop, n_ops, magnitude_max, cutout
        self.starts = np.concatenate([[0], np.cumsum([len(s) for s in self.sources])])
        self.truth = np.concatenate([s.truth for s in self.sources])  # hidden: for precision, never for training

    @classmethod
    def from_clip_dataset(cls, ds: ClipDataset, indices: Sequence[int] | np.ndarray,
                          truth: Sequence[int] | np.ndarray | None = None, **views) -> UnlabelledFaces:
        """Frames ``indices`` of a training ClipDataset (``ClipFrames``); ``truth``: their hidden classes."""
        return cls([ClipFrames(ds, indices, truth)], **views)

    @classmethod
    def from_folder(cls, root: str | Path, size: int, classes: Sequence[str] = EXPR_NAMES_8,
                    truth: Mapping[str, int] | None = None, align: bool = False, **views) -> UnlabelledFaces:
        """Every image of a folder (``FolderFaces``; ``align``: photos aligned here)."""
        return cls([FolderFaces(root, size, classes, truth, align)], **views)

    def __add__(self, other: UnlabelledFaces) -> UnlabelledFaces:
        """The two pools' sources in order (this one's uids kept, the other's after them), this one's settings."""
        return UnlabelledFaces(self.sources + other.sources, self.crop, self.n_ops, self.magnitude_max, self.cutout)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, uid: int) -> tuple[int, int]:
        """uid → (source number, index in the source)."""
        if not 0 <= uid < len(self):
            raise IndexError(f"uid {uid} outside the pool 0..{len(self) - 1}")
        k = int(np.searchsorted(self.starts, uid, side="right")) - 1
        return k, int(uid - self.starts[k])

    def describe(self) -> str:
        return f"{len(self)} unlabelled faces: " + "; ".join(s.describe() for s in self.sources)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        uid, seed = (key, None) if np.isscalar(key) else key
        k, i = self.locate(int(uid))
        img = self.sources[k].image(i)
        if seed is None:
            weak = strong = img
        else:
            rng = np.random.default_rng(int(seed))
            weak = weak_view(img, rng, self.crop)
            strong = strong_view(img, rng, self.n_ops, self.magnitude_max, self.cutout, self.crop)
        return {"weak": weak, "strong": strong, "uid": torch.tensor(int(uid)),
                "truth": torch.tensor(int(self.truth[int(uid)]))}


def concat_pools(pools: Sequence[UnlabelledFaces]) -> UnlabelledFaces:
    """One pool of several (uids in the given order; the first pool's view settings)."""
    out = pools[0]
    for p in pools[1:]:
        out = out + p
    return out


# --- the sampler -------------------------------------------------------------------------------------------
class UnlabelledSampler(Sampler):
    """Keys (uid, sample seed) of the unlabelled samples of each optimiser step; step s's are a function of
    (seed, s) only: ``default_rng([seed, s])`` picks ``per_step`` uids (without replacement within the step
    when the pool is large enough) and one seed each. Under DDP each rank takes every world_size-th key.

    The engine owns the step count: ``set_step(s)`` (or ``batches(s)``) before iterating; iterating does not
    advance the stored step (a DataLoader runs ahead of the optimiser), so ``state_dict()`` is the step the
    engine last set. As a DataLoader's ``batch_sampler`` it is endless: one list of keys per step from its step.
    """

    def __init__(self, n_pool: int, per_step: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if n_pool < 1 or per_step < 1:
            raise DatasetError(f"nothing to sample: a pool of {n_pool} for {per_step} unlabelled samples per step")
        self.n_pool, self.seed, self.rank, self.world_size = n_pool, seed, rank, world_size
        self.per_rank = -(-per_step // world_size)
        self.total = self.per_rank * world_size
        self.step = 0

    def draws(self, step: int) -> list[tuple[int, int]]:
        """This rank's keys of optimiser step ``step``."""
        rng = np.random.default_rng([self.seed, step])
        uids = rng.choice(self.n_pool, size=self.total, replace=self.total > self.n_pool)
        seeds = rng.integers(0, 2**31 - 1, size=self.total)
        return list(zip(uids[self.rank::self.world_size].tolist(), seeds[self.rank::self.world_size].tolist()))

    def batches(self, start_step: int | None = None) -> Iterator[list[tuple[int, int]]]:
        """Endless: the keys of step start_step (default: the set step), start_step + 1, ..."""
        step = self.step if start_step is None else start_step
        while True:
            yield self.draws(step)
            step += 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        return self.batches()

    def set_step(self, step: int) -> None:
        self.step = int(step)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.step = int(state["seed"]), int(state["step"])
