"""Validation during training: the selected model's official scores on the validation frames, through the one
inference path (``app.inference``) and the model's decision profile — the numbers test_val_aff2.py would give
for the same frames — and the precise-BN pass before it."""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from app.inference import autocast, db_track_source, predict_sources
from data.clips import ClipDataset
from models.base import prepare_inputs, unwrap_model
from tasks import Edition, layout_au_columns
from utils import dist
from utils.metrics import au_scores, expr_scores, total_score, va_scores
from utils.outputs import decide


def predict_indices(model: nn.Module, dataset: ClipDataset, indices: np.ndarray, edition: Edition,
                    batch_size: int = 64, device: torch.device | str = "cpu", workers: int = 0, amp: str = "none",
                    channels_last: bool = False, progress: bool = False) -> dict[str, np.ndarray]:
    """Decisions {'VA', 'EXPR', 'AU'} for flat frame ``indices`` of ``dataset``, in that order (sorted or not)."""
    indices = np.asarray(indices, np.int64)
    located = [dataset.locate(int(i)) for i in indices]
    per_track: dict[int, list[int]] = {}
    for t, frame in located:
        per_track.setdefault(t, []).append(frame)
    tracks = sorted(per_track)
    sources = [db_track_source(dataset.db_path, dataset.tracks[t].name) for t in tracks]
    wanted = [np.unique(per_track[t]) for t in tracks]
    scores = predict_sources(model, sources, wanted, batch_size=batch_size, workers=workers, device=device,
                             amp=amp, channels_last=channels_last, progress=progress)
    bare = unwrap_model(model)
    decided = [decide(s, bare.layout, edition, getattr(bare, "decision", "default")) for s in scores]
    if not located:
        return {}
    # back to the order of ``indices``: the rows of all tracks concatenated, track k's frame f at
    # start[k] + its position in wanted[k]
    start = np.concatenate([[0], np.cumsum([len(w) for w in wanted])])
    slot = {t: k for k, t in enumerate(tracks)}
    rows = np.array([start[slot[t]] + np.searchsorted(wanted[slot[t]], f) for t, f in located])
    return {key: np.concatenate([d[key] for d in decided])[rows] for key in decided[0]}


def score_predictions(preds: dict[str, np.ndarray], dataset: ClipDataset, indices: np.ndarray,
                      edition: Edition) -> dict:
    """Official scores of decisions for ``indices`` against the dataset's labels, for the tasks predicted."""
    lab = {k: v[indices] for k, v in dataset.labels.items()}
    out: dict = {"edition": edition.name}
    if "VA" in preds:
        out["va"] = va_scores(preds["VA"], lab["va"], lab["va_valid"])
    if "EXPR" in preds:
        out["expr"] = expr_scores(preds["EXPR"], lab["expr"], lab["expr_valid"], edition)
    if "AU" in preds:
        cols = layout_au_columns(dataset.layout, edition)
        out["au"] = au_scores(preds["AU"], lab["au"][:, cols].astype(np.int64), lab["au_valid"][:, cols], edition)
    out["total"] = total_score(out)
    return out


def evaluate(model: nn.Module, dataset: ClipDataset, indices: np.ndarray, edition: Edition,
             args: argparse.Namespace, info: dist.DistInfo) -> dict:
    """Deterministic validation of ``model`` on ``indices``, split over the ranks; scores on every rank."""
    mine = indices[info.rank::info.world_size]
    preds = predict_indices(model, dataset, mine, edition, args.eval_batch_size, info.device, args.workers,
                            args.amp, args.channels_last, progress=args.progress and info.is_main)
    parts = dist.all_gather_objects((mine, preds))  # every rank gets every rank's predictions
    order = np.concatenate([p[0] for p in parts])
    keys = next((list(p[1]) for p in parts if len(p[0])), [])  # a rank without frames predicted nothing
    merged = {k: np.concatenate([p[1][k] for p in parts if len(p[0])]) for k in keys}
    sort = np.argsort(order, kind="stable")
    return score_predictions({k: v[sort] for k, v in merged.items()}, dataset, order[sort], edition)


@torch.no_grad()
def precise_bn(model: nn.Module, dataset: ClipDataset, index: list[int], args: argparse.Namespace,
               device: torch.device) -> None:
    """Replace BatchNorm running statistics by plain averages over un-augmented training samples ``index``.

    The momentum averages collected while the weights moved lag behind the final weights; at CPU-demo scale
    that shifts eval-mode outputs (arousal by ~0.4). Only BatchNorm layers run in train mode here (no dropout).
    """
    # Frozen BatchNorms (e.g. EMMA's DAN, no trainable parameters) keep their pretrained statistics.
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
           and any(p.requires_grad for p in m.parameters())]
    if not bns or not index:
        return
    was_training = model.training
    model.eval()
    momenta = [b.momentum for b in bns]
    for b in bns:
        b.reset_running_stats()
        b.momentum = None  # cumulative average
        b.train()
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=index, num_workers=args.workers,
                        drop_last=len(index) > args.batch_size, generator=torch.Generator().manual_seed(args.seed))
    for batch in loader:
        raw = {k: v for k, v in batch.items() if k not in ("jitter", "teacher_jitter")}  # un-augmented view
        inputs = prepare_inputs(model, raw, device, channels_last=args.channels_last)
        with autocast(device, args.amp):
            model(inputs)
    for b, m in zip(bns, momenta, strict=True):
        b.momentum = m
    model.train(was_training)
