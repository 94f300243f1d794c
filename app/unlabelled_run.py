"""What a pseudo-labelling run (``--ssl pseudo_label``) adds to the training engine: the EXPR labels it hides
(``--label-fraction``), the unlabelled pool and its per-batch stream, and the pass over the labelled training
frames that Ada-CM's thresholds are made from.

- ``hide_labels``: keep a seeded fraction of the training split's valid EXPR labels; the others become
  invalid for training and are kept apart as hidden truth (pseudo-label precision, never a training label).
- ``build_pool``: the training frames without a valid EXPR label (``data.unlabelled.unlabelled_frames``: a
  face, no label, never a frame whose EXPR labels belong to another split) and every ``--unlabelled DIR`` of
  aligned faces, or of photos aligned once here with ``--unlabelled-align`` (``--unlabelled-truth FILE``: their
  hidden classes, e.g. the mini dataset's truth file).
- ``UnlabelledStream``: ``--mu`` × batch size unlabelled faces per labelled batch; batch k of the run (k =
  epoch × batches per epoch + i) draws from (seed, k) only, so any worker count and a resumed run (resumes
  start at an epoch) see the same faces and views.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from app.inference import autocast
from data.clips import ClipDataset, DatasetError
from data.unlabelled import UnlabelledFaces, UnlabelledSampler, unlabelled_frames
from models.base import prepare_inputs
from tasks import EXPR_NAMES_8, OutputLayout
from utils.outputs import split_outputs

HIDE_KEY = 5  # second key of the --label-fraction draw (the first is --seed)


def hide_labels(train: ClipDataset, fraction: float, seed: int) -> np.ndarray:
    """Keep ``round(fraction · n)`` of the n valid EXPR labels of ``train`` (at least one, drawn from the seed),
    make the others invalid in place; returns the hidden classes per frame (−1 where nothing was hidden)."""
    lab = train.labels
    valid = np.flatnonzero(lab["expr_valid"])
    hidden = np.full(len(lab["expr"]), -1, np.int64)
    if fraction >= 1 or len(valid) == 0:
        return hidden
    keep = np.random.default_rng([seed, HIDE_KEY]).choice(valid, size=max(1, round(fraction * len(valid))),
                                                           replace=False)
    hide = np.zeros(len(hidden), bool)
    hide[valid] = True
    hide[keep] = False
    hidden[hide] = lab["expr"][hide]
    lab["expr_valid"] = lab["expr_valid"] & ~hide
    lab["expr"] = np.where(lab["expr_valid"], lab["expr"], -1)
    return hidden


def read_truth(path: str | Path, classes: tuple[str, ...]) -> dict[str, int]:
    """{image name: class index in ``classes``} of a truth file: ``{"faces": {name: {"expr": code}}}`` (the mini
    dataset's, Aff-Wild2 codes 0–7) or ``{name: code}``; a class the layout lacks (e.g. Other under 7 classes)
    is −1 (unknown)."""
    try:
        obj = json.loads(Path(path).read_text())
        faces = obj.get("faces", obj)
        codes = {str(k): int(v["expr"] if isinstance(v, Mapping) else v) for k, v in faces.items()}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise DatasetError(f"{path}: not a truth file ({{name: code}} or {{'faces': {{name: {{'expr': code}}}}}}): "
                           f"{e}") from None
    names = {c: i for i, c in enumerate(classes)}
    return {k: names.get(EXPR_NAMES_8[c], -1) if 0 <= c < len(EXPR_NAMES_8) else -1 for k, c in codes.items()}


def build_pool(args: argparse.Namespace, train: ClipDataset, hidden: np.ndarray, layout: OutputLayout,
               log) -> UnlabelledFaces:
    """The training frames without an EXPR label (their hidden class as truth) + every --unlabelled folder."""
    views = {"n_ops": args.strong_ops}
    pools = []
    frames = unlabelled_frames(train)
    if len(frames):
        pools.append(UnlabelledFaces.from_clip_dataset(train, frames, hidden[frames], **views))
    truth = read_truth(args.unlabelled_truth, layout.expr_names) if args.unlabelled_truth else None
    for folder in args.unlabelled or []:
        pools.append(UnlabelledFaces.from_folder(folder, args.size, layout.expr_names, truth,
                                                 align=args.unlabelled_align, **views))
    if not pools:
        raise DatasetError("--ssl pseudo_label: no unlabelled face (every training frame has an EXPR label and no "
                           "--unlabelled folder was given)")
    pool = pools[0]
    for p in pools[1:]:
        pool = pool + p
    log(f"pseudo-labelling: {pool.describe()}; {int((pool.truth >= 0).sum())} with a hidden class (for precision)")
    return pool


class UnlabelledStream:
    """``mu × batch_size`` unlabelled keys per labelled batch; batch k of the run from (seed, k) only."""

    def __init__(self, pool: UnlabelledFaces, per_batch: int, seed: int, workers: int, rank: int = 0,
                 world_size: int = 1) -> None:
        self.pool = pool
        self.sampler = UnlabelledSampler(len(pool), per_batch * world_size, seed, rank, world_size)
        self.workers = workers

    def epoch(self, epoch: int, batches: int) -> Iterator[dict]:
        """The unlabelled batches that go with the ``batches`` labelled batches of ``epoch``."""
        start = epoch * batches
        keys = [self.sampler.draws(start + i) for i in range(batches)]
        return iter(DataLoader(self.pool, batch_sampler=keys, num_workers=self.workers))


@torch.no_grad()
def labelled_pass(model: nn.Module, train: ClipDataset, layout: OutputLayout, args: argparse.Namespace,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(softmax over the EXPR classes, labels) of every training frame with a valid EXPR label, eval view,
    ``model`` in eval mode (its mode restored): what Ada-CM's thresholds are made from."""
    index = np.flatnonzero(train.labels["expr_valid"])
    was = model.training
    model.eval()
    probs = []
    try:
        for batch in DataLoader(train, batch_size=args.eval_batch_size, sampler=index.tolist(),
                                num_workers=args.workers):
            with autocast(device, args.amp):
                out = model(prepare_inputs(model, batch, device))
            probs.append(split_outputs(out, layout)["expr"].float().softmax(dim=1).cpu())
    finally:
        model.train(was)
    return torch.cat(probs), torch.from_numpy(train.labels["expr"][index])
