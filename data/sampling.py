"""Which samples an epoch draws: per-frame draw weights (task / class balancing), the seeded epoch sampler
(frame index + augmentation seed per draw, split over DDP ranks) and the fixed validation frames."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Sampler

from data.clips import ClipDataset, DatasetError


def sampling_weights(dataset: ClipDataset, balance_tasks: bool = False, balance_expr: bool = False,
                     labelled_only: bool = True) -> np.ndarray:
    """Draw weight of every frame of ``dataset``.

    Plain: uniform over the frames with any label (``labelled_only``) or over all frames.
    ``balance_tasks``: every task gets the same total weight, spread over the frames labelled for it (a
    frame labelled for several tasks adds up its shares; frames without labels are then never drawn).
    ``balance_expr``: within the EXPR share, every class present gets the same weight.
    """
    lab = dataset.labels
    n = len(dataset)
    valid = {"expr": lab["expr_valid"], "au": lab["au_valid"].any(axis=1), "va": lab["va_valid"]}
    expr_factor = np.ones(n)
    if balance_expr and valid["expr"].any():
        counts = np.bincount(lab["expr"][valid["expr"]], minlength=dataset.layout.num_expr_classes)
        present = counts > 0
        per_class = np.zeros(len(counts))
        per_class[present] = valid["expr"].sum() / (present.sum() * counts[present])
        expr_factor[valid["expr"]] = per_class[lab["expr"][valid["expr"]]]
    if balance_tasks:
        w = np.zeros(n)
        for task, v in valid.items():
            if v.any():
                share = (expr_factor if task == "expr" else 1.0) / v.sum()
                w += np.where(v, share, 0.0)
        return w
    w = np.where(valid["expr"], expr_factor, 1.0)
    if labelled_only:
        w = w * dataset.labelled()
    return w


class EpochSampler(Sampler):
    """``num_samples`` (frame index, augmentation seed) pairs per epoch, a function of (seed, epoch) only.

    Uniform weights draw without replacement (each frame at most once per epoch, like MTMT's 1 %);
    balanced weights draw with replacement; ``classes`` (per-frame class id, −1 = never) cycles through the
    classes instead (``cycle_classes``; the weights are then unused). Under DDP each rank takes every
    world_size-th draw, so the ranks see disjoint parts of one global draw. ``set_epoch`` before each epoch;
    the state to resume is ``state_dict()``.
    """

    def __init__(self, weights: np.ndarray, num_samples: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, classes: np.ndarray | None = None) -> None:
        weights = np.asarray(weights, np.float64)
        if num_samples < 1 or not (weights > 0).any():
            raise DatasetError("nothing to sample: no frame has a positive weight (no labels in this split?)")
        # class cycle: draw k takes class k mod C of the present ones, each class's frames in fresh shuffles
        self.members = None
        if classes is not None:
            self.members = [np.flatnonzero(classes == c) for c in np.unique(classes[classes >= 0])]
        if self.members is not None and not self.members:
            raise DatasetError("nothing to sample: no frame has a class to cycle through")
        self.p = weights / weights.sum()
        self.uniform = bool(np.allclose(self.p[self.p > 0], self.p[self.p > 0][0]))
        self.replace = not self.uniform or num_samples > int((self.p > 0).sum())
        self.per_rank = -(-num_samples // world_size)
        self.total = self.per_rank * world_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draws(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.members is not None:
            index = cycle_classes(self.members, self.total, rng)
        else:
            index = rng.choice(len(self.p), size=self.total, replace=self.replace, p=self.p)
        seeds = rng.integers(0, 2**31 - 1, size=self.total)
        return index[self.rank::self.world_size], seeds[self.rank::self.world_size]

    def __iter__(self):
        index, seeds = self.draws()
        return iter(zip(index.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.per_rank

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])


def cycle_classes(members: list[np.ndarray], total: int, rng: np.random.Generator) -> np.ndarray:
    """``total`` frame indices: draw k from class k mod C (``members[c]``: its frames), each class walking through
    shuffles of its frames, reshuffled whenever used up (CNU_ADL's class-balanced "max" generator)."""
    per_class = -(-total // len(members))
    columns = []
    for frames in members:
        rounds = -(-per_class // len(frames))
        columns.append(np.concatenate([rng.permutation(frames) for _ in range(rounds)])[:per_class])
    return np.stack(columns, axis=1).reshape(-1)[:total]


def class_cycle_size(classes: np.ndarray) -> int:
    """The epoch of the class cycle: the largest class's count × the number of classes present."""
    counts = np.bincount(classes[classes >= 0])
    return int(counts.max() * (counts > 0).sum())


def validation_indices(dataset: ClipDataset, num: int | None = None, seed: int = 0) -> np.ndarray:
    """Frames that validation scores: every labelled frame, or a fixed seeded subset of ``num`` of them."""
    index = np.flatnonzero(dataset.labelled())
    if num and num < len(index):
        index = np.sort(np.random.default_rng(seed).choice(index, size=num, replace=False))
    if len(index) == 0:
        where = getattr(dataset, "db_path", None) or getattr(dataset, "root", "dataset")
        raise DatasetError(f"{where}: no labelled sample in {dataset.split}; nothing to validate on")
    return index
