"""Optimiser, parameter groups, learning-rate schedule and the gradient step of train.py.

- Parameter groups: a model may declare them with ``param_groups(base_lr) -> list[dict]`` (keys: params,
  lr_scale, weight_decay, schedule, name; all but params optional) and may name parameters that take no
  weight decay with ``no_weight_decay() -> set[str]`` (as timm models do). Without the hook: one group.
  With AdamW every group is split in two: 1-D parameters (biases, norms) and the named ones get none.
- Schedule: one factor per optimiser step (``Schedule.factor``) applied to every group's own learning rate
  (base lr × lr_scale), so the cosine floor scales like the group; a group with ``schedule: False`` stays
  at its learning rate throughout (no warm-up either).
- Gradient step: ``--accum-steps`` batches per optimiser step, the loss divided by the group's size, DDP
  gradients synchronised on the group's last batch only, clipping after the AMP scaler unscaled them.
  Groups never straddle an epoch (the last one of an epoch may be shorter), so a checkpoint written at
  the end of an epoch is always between two optimiser steps.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("none", "cosine", "step")
GROUP_KEYS = {"params", "lr_scale", "weight_decay", "schedule", "name"}


# ---------------------------------------------------------------------------------------------------
# Parameter groups and the optimiser


def _bare(model: nn.Module) -> nn.Module:
    # DDP (and similar wrappers) hold the real model as .module; names and hooks are the real model's.
    return model.module if isinstance(model, DistributedDataParallel) else model


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Parameter (or module) names the model exempts from weight decay; empty without the hook."""
    hook = getattr(_bare(model), "no_weight_decay", None)
    return set(hook()) if callable(hook) else set()


def takes_no_decay(name: str, param: torch.Tensor, exempt: set[str]) -> bool:
    """1-D tensors (biases, norm weights) and the model's exempt names, or parameters under an exempt module."""
    return param.ndim <= 1 or name in exempt or any(name.startswith(e + ".") for e in exempt)


def declared_groups(model: nn.Module, base_lr: float, weight_decay: float) -> list[dict]:
    """The model's groups (``param_groups`` hook) or one group of every parameter; trainable parameters only.

    Every trainable parameter must be in exactly one group: ValueError naming the model class otherwise.
    """
    bare = _bare(model)
    hook = getattr(bare, "param_groups", None)
    if not callable(hook):
        raw = [{"name": "all", "params": list(bare.parameters())}]
    else:
        raw = list(hook(base_lr))
    kind = type(bare).__name__
    groups = []
    for i, g in enumerate(raw):
        unknown = set(g) - GROUP_KEYS
        if "params" not in g or unknown:
            raise ValueError(f"{kind}.param_groups(): group {i} needs 'params' and only {sorted(GROUP_KEYS)} "
                             f"(got {sorted(g)})")
        groups.append({"name": str(g.get("name", f"group{i}")),
                       "params": [p for p in g["params"] if p.requires_grad],
                       "lr_scale": float(g.get("lr_scale", 1.0)),
                       "weight_decay": float(g.get("weight_decay", weight_decay)),
                       "schedule": bool(g.get("schedule", True))})
    _check_cover(bare, groups)
    return groups


def _check_cover(model: nn.Module, groups: list[dict]) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[int, str] = {}
    for g in groups:
        for p in g["params"]:
            if id(p) in seen:
                raise ValueError(f"{type(model).__name__}.param_groups(): parameter {names.get(id(p), '?')} is in "
                                 f"groups {seen[id(p)]!r} and {g['name']!r}")
            seen[id(p)] = g["name"]
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ValueError(f"{type(model).__name__}.param_groups(): {len(missing)} trainable parameter(s) in no group "
                         f"(first: {missing[0]}); freeze them with requires_grad_(False) instead")


def split_no_decay(model: nn.Module, groups: list[dict]) -> list[dict]:
    """Each group with weight decay → itself without the no-decay parameters + '<name>_no_decay' holding them."""
    bare = _bare(model)
    names = {id(p): n for n, p in bare.named_parameters()}
    exempt = no_weight_decay_names(bare)
    out = []
    for g in groups:
        if g["weight_decay"] == 0:
            out.append(g)
            continue
        free = [p for p in g["params"] if takes_no_decay(names[id(p)], p, exempt)]
        out.append({**g, "params": [p for p in g["params"] if not takes_no_decay(names[id(p)], p, exempt)]})
        out.append({**g, "name": g["name"] + "_no_decay", "params": free, "weight_decay": 0.0})
    return [g for g in out if g["params"]]


def build_optimizer(model: nn.Module, kind: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Adam (L2 penalty, as before) or AdamW (decoupled decay, none on 1-D/exempt parameters), per group.

    Each torch param group keeps its 'name', 'lr_scale' and 'schedule' (saved with the optimiser state).
    """
    if kind not in OPTIMIZERS:
        raise ValueError(f"--optimizer: expected one of {', '.join(OPTIMIZERS)}, got {kind!r}")
    groups = declared_groups(model, lr, weight_decay)
    if kind == "adamw":
        groups = split_no_decay(model, groups)
    groups = [{**g, "lr": lr * g["lr_scale"]} for g in groups if g["params"]]
    if not groups:
        raise ValueError(f"{type(_bare(model)).__name__}: no trainable parameters")
    make = torch.optim.AdamW if kind == "adamw" else torch.optim.Adam
    return make(groups, lr=lr, weight_decay=weight_decay)


def group_name(group: dict, index: int) -> str:
    return str(group.get("name", f"group{index}"))  # optimiser states saved before groups had names


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current learning rate of each group by name, in group order."""
    return {group_name(g, i): g["lr"] for i, g in enumerate(optimizer.param_groups)}


def lr_columns(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """{'lr_<name>': lr} of every group when there are several (log.csv, TensorBoard); {} for one group."""
    lrs = group_lrs(optimizer)
    return {f"lr_{k}": v for k, v in lrs.items()} if len(lrs) > 1 else {}


def restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict, path: str) -> None:
    """Load a saved optimiser state; a different group layout is one line naming ``path``."""
    now = [group_name(g, i) for i, g in enumerate(optimizer.param_groups)]
    then = [group_name(g, i) for i, g in enumerate(saved.get("param_groups", []))]
    sizes_now = [len(g["params"]) for g in optimizer.param_groups]
    sizes_then = [len(g["params"]) for g in saved.get("param_groups", [])]
    if len(now) != len(then) or sizes_now != sizes_then:
        raise ValueError(f"{path}: the saved optimiser has groups {then} of {sizes_then} parameters, this run builds "
                         f"{now} of {sizes_now}; resume with the same --optimizer and model")
    optimizer.load_state_dict(saved)


def check_resume_options(saved_args: dict, args: argparse.Namespace, path: str) -> None:
    """The optimiser kind and the accumulation (which sets the schedule's length) must match the checkpoint."""
    for flag, key, default in (("--optimizer", "optimizer", "adam"), ("--accum-steps", "accum_steps", 1)):
        then, now = saved_args.get(key, default), getattr(args, key)
        if then != now:
            raise ValueError(f"{path}: saved with {flag} {then}; this run has {flag} {now} (resume with the same)")


# ---------------------------------------------------------------------------------------------------
# Learning-rate schedule


@dataclass(frozen=True)
class Schedule:
    """Factor on each group's learning rate at optimiser step ``step`` (0-based) of the whole run.

    Linear warm-up over ``warmup`` steps (step s uses (s+1)/warmup, so the first step already learns), then
    'none': 1; 'cosine': half-cosine from 1 down to ``floor`` (min_lr / lr) at step ``total``;
    'step': ×gamma every ``decay_every`` steps.
    """

    kind: str = "none"
    warmup: int = 0
    total: int = 1
    floor: float = 0.0
    gamma: float = 0.1
    decay_every: int = 1

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.kind == "cosine":
            progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "step":
            return self.gamma ** (step // max(1, self.decay_every))
        return 1.0


def optimizer_steps_per_epoch(batches: int, accum_steps: int) -> int:
    """Optimiser steps of an epoch of ``batches`` batches: the last group may be shorter."""
    return -(-batches // accum_steps)


def schedule_from_args(args: argparse.Namespace, steps_per_epoch: int) -> Schedule:
    """--sched, --warmup-epochs (fractional), --epochs, --min-lr, --gamma, --step-epochs in optimiser steps."""
    if args.sched not in SCHEDULES:
        raise ValueError(f"--sched: expected one of {', '.join(SCHEDULES)}, got {args.sched!r}")
    return Schedule(kind=args.sched, warmup=int(args.warmup_epochs * steps_per_epoch),
                    total=max(1, args.epochs * steps_per_epoch), floor=args.min_lr / args.lr, gamma=args.gamma,
                    decay_every=args.step_epochs * steps_per_epoch)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule) -> torch.optim.lr_scheduler.LambdaLR:
    """One LambdaLR over every group: the schedule's factor, or 1 for groups with schedule=False."""
    def scheduled(step: int) -> float:
        return schedule.factor(step)

    def constant(step: int) -> float:
        return 1.0

    # Plain functions (not callable objects): LambdaLR then saves no closure data in its state.
    factors: list[Callable[[int], float]] = [scheduled if g.get("schedule", True) else constant
                                             for g in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


# ---------------------------------------------------------------------------------------------------
# Gradient step with accumulation


class GradientStep:
    """Backward passes of an epoch's batches and an optimiser step after every ``accum_steps`` of them.

    Per batch i of ``batches``: ``with gs.batch(i):`` around forward and backward (DDP skips the gradient
    all-reduce unless the batch ends a group), ``gs.backward(loss, i)``, then ``if gs.ends_group(i):
    gs.step()``. The loss is divided by its group's size, so a group's gradient is the mean over its
    batches, as one batch that many times larger.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 accum_steps: int, batches: int, clip_grad: float = 0.0) -> None:
        if accum_steps < 1:
            raise ValueError(f"--accum-steps: expected a positive integer, got {accum_steps}")
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.accum, self.batches, self.clip_grad = accum_steps, batches, clip_grad

    def group_size(self, i: int) -> int:
        """Batches in the accumulation group of batch ``i`` (fewer for the epoch's last group)."""
        return min(self.accum, self.batches - (i - i % self.accum))

    def ends_group(self, i: int) -> bool:
        return (i + 1) % self.accum == 0 or i + 1 == self.batches

    @contextlib.contextmanager
    def batch(self, i: int) -> Iterator[None]:
        """Context of batch ``i``'s forward and backward: gradients cleared at a group's start, DDP no_sync inside."""
        if i % self.accum == 0:
            self.optimizer.zero_grad(set_to_none=True)
        syncs = self.ends_group(i) or not isinstance(self.model, DistributedDataParallel)
        with contextlib.nullcontext() if syncs else self.model.no_sync():
            yield

    def backward(self, loss: torch.Tensor, i: int) -> None:
        self.scaler.scale(loss / self.group_size(i)).backward()

    def step(self) -> torch.Tensor | None:
        """Unscale, clip over all groups (when --clip-grad), step and update the scaler.

        Returns the gradient norm before clipping (a tensor: reading it would wait for the device), or None.
        """
        norm = None
        if self.clip_grad:
            self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the loss-scaled one
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            norm = nn.utils.clip_grad_norm_(params, self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return norm
