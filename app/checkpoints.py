"""What train.py writes and resumes from: checkpoints (atomic), the random state, the run's bookkeeping.

``last.pth`` holds everything a resume needs (student, the semi-supervised method's state, optimiser,
schedule, scaler, sampler, random generators, ``TrainState``); ``best.pth`` only the selected model with
its settings (arch, layout, input) and scores. Both are plain data: they load with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.base import unwrap_model
from models.ssl import Supervised
from tasks import OutputLayout
from utils import run_dir
from utils.atomic import atomic_path
from utils.checkpoint import CheckpointError, read_checkpoint
from utils.optim import check_resume_options

CHECKPOINT_FORMAT = 1


@dataclass
class TrainState:
    """Everything a resume restores besides the weights."""

    step: int = 0  # optimiser steps over the whole run (the EMA uses its own counter, saved with it)
    epoch: int = 0  # next epoch to run
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],  # plain data: loads with weights_only
            "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    random.setstate(_as_tuples(state["python"]))


def _as_tuples(x):
    return tuple(_as_tuples(v) for v in x) if isinstance(x, list | tuple) else x


def plain(obj):
    """args → JSON-like data (Paths to strings) for checkpoints and config.json."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    return obj if obj is None or isinstance(obj, bool | int | float | str) else str(obj)


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temporary file in the same folder, fsync, then rename over ``path``.

    The temp file's name holds the host and pid (utils.run_dir.temp_path) so that a later run can tell a
    file left by a killed save from one being written.
    """
    with atomic_path(path, temp=run_dir.temp_path(path), fsync=True) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def checkpoint(args: argparse.Namespace, model: nn.Module, method: Supervised, optimizer, scheduler, scaler,
               sampler, state: TrainState, scores: dict | None, full: bool) -> dict:
    """Plain-data checkpoint; "model" holds the selected (evaluated) model's weights, with the settings that
    rebuild it (arch, layout, input) next to them."""
    bare = unwrap_model(model)
    ckpt = {"format": CHECKPOINT_FORMAT, "model": method.evaluated(model, args.select).state_dict(),
            "selected": args.select, **bare.settings(), "edition": args.edition, "epoch": state.epoch - 1,
            "step": state.step, "scores": plain(scores), "args": plain(vars(args))}
    if full:  # what --resume needs (tensors shared with "model" are stored once)
        ckpt.update(student=bare.state_dict(), teacher=None, optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), sampler=sampler.state_dict(),
                    rng=dict(rng_state(), views=bare.view_rng_state()), state=asdict(state))
        ckpt.update(method.checkpoint_entries())
    return ckpt


def read_resume(path: str, args: argparse.Namespace, layout: OutputLayout, method_cls: type[Supervised]) -> dict:
    """A last.pth of this kind of run, checked before anything is trained."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("student") is None:
        raise CheckpointError(f"{path}: not a resumable train.py checkpoint (last.pth); use --init-from "
                              "to start from other weights")
    if ckpt.get("arch") != args.model or ckpt.get("layout") != layout.name:
        raise CheckpointError(f"{path}: a {ckpt.get('arch')} model with layout {ckpt.get('layout')!r}; this run "
                              f"trains {args.model} with layout {layout.name!r}")
    problem = method_cls.check_resume(ckpt)
    if problem:
        raise CheckpointError(f"{path}: {problem}; this run has --ssl {args.ssl}")
    check_resume_options(ckpt.get("args") or {}, args, path)
    return ckpt
