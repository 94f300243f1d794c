"""Training loop of train.py: two-stream model, optional multi-task mean teacher, from the LMDB database.

One data path: ``data.clips.ClipDataset`` → DataLoader (``EpochSampler``: a fixed number of clips per
epoch) → model (DDP when launched by torchrun) → masked multi-task loss (+ ramped consistency to the EMA
teacher) → Adam → EMA update. After every epoch the *selected* model (student, or the teacher with
``--select teacher``) is evaluated deterministically on the validation frames with the edition's official
metrics, and that same model's weights are what ``best.pth`` and ``last.pth`` store under "model", so the
score in a file is the score of the weights in it. ``last.pth`` also holds everything a resume needs.
Checkpoints are written to a temporary file and renamed, so a kill never leaves half a file.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from data.clips import (
    Augment,
    ClipConfig,
    ClipDataset,
    DatasetError,
    EpochSampler,
    prepare_batch,
    sampling_weights,
    validation_indices,
)
from models.losses import MultiTaskLoss, rank_regularization
from models.mean_teacher import MeanTeacher, consistency_loss, sigmoid_rampup
from models.tsav import (
    CheckpointError,
    build_model,
    init_backbones_from,
    load_published,
    read_checkpoint,
    to_channels_last,
    unwrap_model,
)
from tasks import Edition, OutputLayout, get_edition, get_layout, layout_au_columns, parse_task_weights
from utils import dist, run_dir
from utils.atomic import atomic_path
from utils.metrics import au_scores, expr_scores, total_score, va_scores
from utils.optim import (
    GradientStep,
    build_optimizer,
    build_scheduler,
    check_resume_options,
    group_lrs,
    lr_columns,
    optimizer_steps_per_epoch,
    restore_optimizer,
    schedule_from_args,
)
from utils.predict import autocast, predict_indices, progress_bar

CHECKPOINT_FORMAT = 1
CSV_FIELDS = ("epoch", "step", "lr", "seconds", "loss", "loss_expr", "loss_au", "loss_va", "consistency",
              "consistency_weight", "val_total", "val_va", "val_expr", "val_au", "ccc_valence", "ccc_arousal",
              "expr_f1", "expr_accuracy", "au_f1", "au_accuracy", "best_total")


@dataclass
class TrainState:
    """Everything a resume restores besides the weights."""

    step: int = 0  # optimiser steps over the whole run (the EMA uses its own counter, saved with it)
    epoch: int = 0  # next epoch to run
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    history: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------
# Set-up


def resolve(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill the 'auto' choices that depend on other flags or on the device."""
    args = argparse.Namespace(**vars(args))
    if args.edition is None:
        args.edition = get_layout(args.layout).edition
    if args.select == "auto":
        args.select = "teacher" if args.ssl == "mean_teacher" else "student"
    if args.select == "teacher" and args.ssl != "mean_teacher":
        raise ValueError("--select teacher needs --ssl mean_teacher")
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    if args.amp == "auto":
        args.amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    if args.amp != "none" and device.type != "cuda":
        raise ValueError(f"--amp {args.amp} needs a CUDA device (this run is on {device})")
    return args


def clip_config(args: argparse.Namespace) -> ClipConfig:
    return ClipConfig(clip_len=args.clip_len, dilation=args.dilation, size=args.size, mask=args.mask,
                      audio_seconds=args.audio_seconds)


def make_datasets(args: argparse.Namespace, layout: OutputLayout) -> tuple[ClipDataset, ClipDataset, np.ndarray]:
    """Train and validation datasets and the validation frames; every data problem is raised here."""
    clip = clip_config(args)
    augment = Augment(flip=args.flip, brightness=args.jitter, contrast=args.jitter, saturation=args.jitter,
                      hue=args.hue, teacher=args.ssl == "mean_teacher", teacher_jitter=args.teacher_jitter)
    train = ClipDataset(args.db, "train", layout, clip, augment)
    val = ClipDataset(args.db, "val", layout, clip)
    return train, val, validation_indices(val, args.val_samples, args.seed)


def make_sampler(args: argparse.Namespace, train: ClipDataset, info: dist.DistInfo) -> EpochSampler:
    # Without a teacher, frames without any label teach nothing: draw only labelled ones.
    weights = sampling_weights(train, args.balance_tasks, args.balance_expr,
                               labelled_only=args.ssl != "mean_teacher")
    n = args.samples_per_epoch or max(args.batch_size * info.world_size,
                                      int(round(args.epoch_fraction * int((weights > 0).sum()))))
    return EpochSampler(weights, n, args.seed, info.rank, info.world_size)


def make_model(args: argparse.Namespace, layout: OutputLayout, log) -> nn.Module:
    model = build_model(args.model, layout, args.dropout, args.video_init, args.audio_init)
    for name in ("alpha_au", "alpha_va"):  # kept for checkpoint compatibility, never used: no gradient
        if hasattr(model, name):
            getattr(model, name).requires_grad_(False)
    if args.init_from:
        init_weights(model, args.init_from, log)
    return model


def init_weights(model: nn.Module, path: str, log) -> None:
    """Same architecture and layout: every weight; otherwise only the two streams (e.g. TSAV → MTMT)."""
    source = load_published(path, trust_pickle=False)
    if type(source) is type(model) and source.layout == model.layout:
        model.load_state_dict(source.state_dict(), strict=True)
        log(f"initialised every weight from {path}")
        return
    fresh = init_backbones_from(model, path)
    log(f"initialised the audio and video streams from {path} ({type(source).__name__}, layout "
        f"{source.layout.name}); heads{' and ' + str(len(fresh)) + ' stream tensors' if fresh else ''} stay fresh")


# ---------------------------------------------------------------------------------------------------
# Checkpoints


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


def selected_model(model: nn.Module, teacher: MeanTeacher | None, select: str) -> nn.Module:
    return teacher.teacher if select == "teacher" else unwrap_model(model)


def checkpoint(args, layout, model, teacher, optimizer, scheduler, scaler, sampler, state: TrainState,
               scores: dict | None, full: bool) -> dict:
    """Plain-data checkpoint; "model" holds the selected (evaluated) model's weights."""
    ckpt = {"format": CHECKPOINT_FORMAT, "model": selected_model(model, teacher, args.select).state_dict(),
            "selected": args.select, "arch": args.model, "layout": layout.name, "edition": args.edition,
            "clip": asdict(clip_config(args)), "epoch": state.epoch - 1, "step": state.step,
            "scores": plain(scores), "args": plain(vars(args))}
    if full:  # what --resume needs (tensors shared with "model" are stored once)
        ckpt.update(student=unwrap_model(model).state_dict(),
                    teacher=teacher.state_dict() if teacher is not None else None,
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict(), sampler=sampler.state_dict(), rng=rng_state(),
                    state=asdict(state))
    return ckpt


def read_resume(path: str, args: argparse.Namespace, layout: OutputLayout) -> dict:
    """A last.pth of this kind of run, checked before anything is trained."""
    ckpt = read_checkpoint(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("student") is None:
        raise CheckpointError(f"{path}: not a resumable train.py checkpoint (last.pth); use --init-from "
                              "to start from other weights")
    if ckpt.get("arch") != args.model or ckpt.get("layout") != layout.name:
        raise CheckpointError(f"{path}: a {ckpt.get('arch')} model with layout {ckpt.get('layout')!r}; this run "
                              f"trains {args.model} with layout {layout.name!r}")
    if (ckpt.get("teacher") is None) != (args.ssl != "mean_teacher"):
        raise CheckpointError(f"{path}: saved {'with' if ckpt.get('teacher') else 'without'} a mean teacher; "
                              f"this run has --ssl {args.ssl}")
    check_resume_options(ckpt.get("args") or {}, args, path)
    return ckpt


# ---------------------------------------------------------------------------------------------------
# Training and validation


def train_one_epoch(model: nn.Module, teacher: MeanTeacher | None, criterion: MultiTaskLoss, loader: DataLoader,
                    optimizer, scheduler, scaler, state: TrainState, args: argparse.Namespace,
                    device: torch.device, layout: OutputLayout, tb, progress: bool) -> dict[str, float]:
    """One pass over the epoch's draws, an optimiser step every --accum-steps batches; mean losses over its batches.

    The schedule and the teacher's EMA advance once per optimiser step. Losses are summed on the device
    (float64) and read back only when logged, so a step does not wait for the device just to log.
    """
    model.train()
    sums: dict[str, torch.Tensor | float] = {}
    batches = len(loader)
    grads = GradientStep(model, optimizer, scaler, args.accum_steps, batches, args.clip_grad)
    bar = progress_bar(loader, progress, f"epoch {state.epoch}")
    for i, batch in enumerate(bar):
        with grads.batch(i):  # DDP: no gradient all-reduce until the accumulation group's last batch
            loss, logs = batch_loss(model, teacher, criterion, batch, args, device, layout, state.epoch + i / batches)
            if not torch.isfinite(loss) and args.amp != "fp16":  # fp16 overflows are the scaler's to skip
                raise FloatingPointError(f"non-finite loss at step {state.step} (epoch {state.epoch}): {loss.item()}")
            grads.backward(loss, i)
        logs["loss"] = loss.detach()
        for k, v in logs.items():
            sums[k] = sums.get(k, 0.0) + (v.double() if torch.is_tensor(v) else v)
        if progress:
            bar.set_postfix(loss=f"{float(logs['loss']):.3f}")
        if not grads.ends_group(i):
            continue
        grads.step()
        scheduler.step()
        if teacher is not None:
            teacher.update(model)
        state.step += 1
        if tb is not None and state.step % args.log_every == 0:
            for k, v in logs.items():
                tb.add_scalar(f"train/{k}", float(v), state.step)
            tb.add_scalar("train/lr", optimizer.param_groups[0]["lr"], state.step)
            for k, v in lr_columns(optimizer).items():
                tb.add_scalar(f"train/{k}", v, state.step)
    return {k: float(v) / max(batches, 1) for k, v in sums.items()}


def batch_loss(model: nn.Module, teacher: MeanTeacher | None, criterion: MultiTaskLoss, batch: dict,
               args: argparse.Namespace, device: torch.device, layout: OutputLayout,
               epoch_progress: float) -> tuple[torch.Tensor, dict]:
    """Supervised loss of one batch (+ ramped consistency to the teacher, or the MTMT rank term) and its parts."""
    batch = prepare_batch(batch, device, args.channels_last)
    inputs = {"clip": batch["clip"], "audio_features": batch["audio_features"]}
    targets = {k: batch[k] for k in ("expr", "au", "va")}
    valid = {k: batch[f"{k}_valid"] for k in ("expr", "au", "va")}
    with autocast(device, args.amp):
        out = model(inputs)
    loss, parts = criterion(out, targets, valid)
    logs = {"loss_" + k: v.detach() for k, v in parts.items()}
    if teacher is not None and args.consistency_weight > 0:  # weight 0: the teacher is only an EMA model
        with autocast(device, args.amp):
            t_out = teacher({"clip": batch["teacher_clip"], "audio_features": batch["audio_features"]})
        cons, _ = consistency_loss(out, t_out, valid, layout, only_missing=args.consistency == "missing",
                                   weights=criterion.weights, rank_weight=args.rank_weight,
                                   au_reduction=args.au_reduction)
        weight = sigmoid_rampup(epoch_progress, args.consistency_weight, args.rampup_epochs)
        loss = loss + weight * cons
        logs.update(consistency=cons.detach(), consistency_weight=weight)
    elif isinstance(out, tuple) and args.rank_weight:  # MTMT head without a teacher: rank term alone
        loss = loss + args.rank_weight * rank_regularization(out[1])
    return loss, logs


@torch.no_grad()
def precise_bn(model: nn.Module, dataset: ClipDataset, index: list[int], args: argparse.Namespace,
               device: torch.device) -> None:
    """Replace BatchNorm running statistics by plain averages over un-augmented training clips ``index``.

    The momentum averages collected while the weights moved lag behind the final weights; at CPU-demo scale
    that shifts eval-mode outputs (arousal by ~0.4). Only BatchNorm layers run in train mode here (no dropout).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
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
        batch = prepare_batch({k: batch[k] for k in ("clip", "audio_db")}, device, args.channels_last)
        with autocast(device, args.amp):
            model(batch)
    for b, m in zip(bns, momenta):
        b.momentum = m
    model.train(was_training)


def score_predictions(preds: dict[str, np.ndarray], dataset: ClipDataset, indices: np.ndarray,
                      edition: Edition) -> dict:
    """Official scores of predictions for ``indices`` against the dataset's labels (all frames concatenated)."""
    lab = {k: v[indices] for k, v in dataset.labels.items()}
    cols = layout_au_columns(dataset.layout, edition)
    out: dict = {"edition": edition.name,
                 "va": va_scores(preds["VA"], lab["va"], lab["va_valid"]),
                 "expr": expr_scores(preds["EXPR"], lab["expr"], lab["expr_valid"], edition),
                 "au": au_scores(preds["AU"], lab["au"][:, cols].astype(np.int64), lab["au_valid"][:, cols], edition)}
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
    merged = {k: np.concatenate([p[1][k] for p in parts]) for k in preds}
    sort = np.argsort(order, kind="stable")
    return score_predictions({k: v[sort] for k, v in merged.items()}, dataset, order[sort], edition)


# ---------------------------------------------------------------------------------------------------
# Logging


class EpochLog:
    """log.csv (one row per epoch, appended across resumes) and TensorBoard; rank 0 only."""

    def __init__(self, out: Path, tensorboard: bool, extra_fields: tuple[str, ...] = ()) -> None:
        self.csv_path = out / "log.csv"
        self.fields = CSV_FIELDS + extra_fields  # e.g. each parameter group's lr (lr_<name>) when there are several
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:
                print("tensorboard is not installed: logging to log.csv only", file=sys.stderr)

    def write(self, row: dict) -> None:
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        if self.tb is not None:
            for k, v in row.items():
                if k.startswith(("val_", "ccc_", "expr_", "au_")) and isinstance(v, float):
                    self.tb.add_scalar(f"val/{k}", v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def epoch_row(epoch: int, state: TrainState, lr: float, seconds: float, train: dict, scores: dict) -> dict:
    return {"epoch": epoch, "step": state.step, "lr": lr, "seconds": seconds, **train,
            "val_total": scores["total"], "val_va": scores["va"]["score"], "val_expr": scores["expr"]["score"],
            "val_au": scores["au"]["score"], "ccc_valence": scores["va"]["ccc_valence"],
            "ccc_arousal": scores["va"]["ccc_arousal"], "expr_f1": scores["expr"]["f1"],
            "expr_accuracy": scores["expr"]["accuracy"], "au_f1": scores["au"]["f1"],
            "au_accuracy": scores["au"]["accuracy"], "best_total": state.best_score}


# ---------------------------------------------------------------------------------------------------
# The run


class SetupError(ValueError):
    """Bad arguments or inputs found before training (database, split, mask, checkpoint, layout)."""


@dataclass
class Run:
    """Everything a training run holds; built by ``setup``."""

    args: argparse.Namespace
    info: dist.DistInfo
    layout: OutputLayout
    edition: Edition
    criterion: MultiTaskLoss
    train_set: ClipDataset
    val_set: ClipDataset
    val_index: np.ndarray
    sampler: EpochSampler
    model: nn.Module
    teacher: MeanTeacher | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    state: TrainState

    def log(self, msg: str) -> None:
        log_main(self.info, msg)


def log_main(info: dist.DistInfo, msg: str) -> None:
    """Print ``msg`` on rank 0 only."""
    if info.is_main:
        print(msg, flush=True)


def run(args: argparse.Namespace) -> dict:
    """Train as ``args`` say (see opts.train_parser); returns a summary (best score and epoch, epochs run).

    Raises SetupError, before any step, when the inputs cannot work.
    """
    info = dist.init(args.device)
    try:
        try:
            r = setup(args, info)
        except (CheckpointError, DatasetError, FileNotFoundError, ValueError) as e:
            raise SetupError(str(e)) from e
        return train(r)
    finally:
        dist.cleanup()


def setup(args: argparse.Namespace, info: dist.DistInfo) -> Run:
    """Data, model, teacher, optimiser, schedule; restored from ``--resume``. Every input check happens here."""
    args = resolve(args, info.device)
    log = functools.partial(log_main, info)
    # Rank 0 alone looks at the output folder; every rank gets its answer, so all stop or none.
    problem = run_dir.output_dir_problem(args.output_dir, args.resume, args.overwrite) if info.is_main else None
    problem = dist.broadcast_object(problem)
    if problem:
        raise ValueError(problem)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    elif info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    layout = get_layout(args.layout)
    edition = get_edition(args.edition)
    layout_au_columns(layout, edition)  # the layout must have every AU the edition scores
    criterion = MultiTaskLoss(layout, parse_task_weights(args.task_weights), args.au_reduction, args.tsav_filter)
    train_set, val_set, val_index = make_datasets(args, layout)
    sampler = make_sampler(args, train_set, info)
    batches = len(sampler) // args.batch_size
    if batches < 1:
        raise ValueError(f"{len(sampler)} clips per epoch per process is less than one batch of {args.batch_size}; "
                         "raise --samples-per-epoch/--epoch-fraction or lower --batch-size")
    steps_per_epoch = optimizer_steps_per_epoch(batches, args.accum_steps)
    resume = read_resume(args.resume, args, layout) if args.resume else None
    model = make_model(args, layout, log)
    log(f"{args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters), layout {layout.name}, "
        f"edition {edition.name}, {info.world_size} process(es) on {info.device}; train {len(train_set.tracks)} "
        f"tracks, {len(sampler) * info.world_size} clips/epoch ({batches} batches/process, {steps_per_epoch} "
        f"optimiser steps); "
        f"validation {len(val_index)} frames of {len(val_set.tracks)} tracks")

    if resume is not None:
        model.load_state_dict(resume["student"], strict=True)
    model.to(info.device)
    if args.channels_last:
        to_channels_last(model)
    if info.distributed:
        model = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    teacher = MeanTeacher(model, args.ema_decay) if args.ssl == "mean_teacher" else None
    optimizer = build_optimizer(model, args.optimizer, args.lr, args.weight_decay)
    scheduler = build_scheduler(optimizer, schedule_from_args(args, steps_per_epoch))
    if len(optimizer.param_groups) > 1:
        log("parameter groups (lr): " + ", ".join(f"{k} {v:.3g}" for k, v in group_lrs(optimizer).items()))
    scaler = torch.amp.GradScaler(info.device.type, enabled=args.amp == "fp16")
    state = TrainState()
    if resume is not None:
        if teacher is not None:
            teacher.load_state_dict(resume["teacher"])
        restore_optimizer(optimizer, resume["optimizer"], args.resume)
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        sampler.load_state_dict(resume["sampler"])
        state = TrainState(**resume["state"])
        set_rng_state(resume["rng"])
        log(f"resumed from {args.resume}: epoch {state.epoch}, step {state.step}, best {state.best_score:.4f}")
    return Run(args, info, layout, edition, criterion, train_set, val_set, val_index, sampler, model, teacher,
               optimizer, scheduler, scaler, state)


def end_of_epoch(r: Run, epoch: int, seconds: float, train_logs: dict, scores: dict, out: Path,
                 logger: EpochLog | None) -> None:
    """Best-score bookkeeping, last.pth (+ best.pth when better) and the epoch's log row."""
    state, args = r.state, r.args
    improved = not math.isnan(scores["total"]) and scores["total"] > state.best_score
    if improved:
        state.best_score, state.best_epoch, state.bad_epochs = scores["total"], epoch, 0
    else:
        state.bad_epochs += 1
    row = {**epoch_row(epoch, state, r.optimizer.param_groups[0]["lr"], seconds, train_logs, scores),
           **lr_columns(r.optimizer)}
    state.history.append(plain(row))
    if r.info.is_main:
        parts = (r.model, r.teacher, r.optimizer, r.scheduler, r.scaler, r.sampler, state, scores)
        save_atomic(checkpoint(args, r.layout, *parts, full=True), out / "last.pth")
        if improved:
            save_atomic(checkpoint(args, r.layout, *parts, full=False), out / "best.pth")
        logger.write(row)
        r.log(f"epoch {epoch}: loss {train_logs.get('loss', math.nan):.4f} | {args.select} val "
              f"VA {scores['va']['score']:.4f} EXPR {scores['expr']['score']:.4f} AU {scores['au']['score']:.4f} "
              f"total {scores['total']:.4f} | best {state.best_score:.4f} (epoch {state.best_epoch}) | {seconds:.0f} s")


def train(r: Run) -> dict:
    """Epochs until --epochs (or --stop-after, or early stopping); validation and checkpoints after each."""
    args, info, state = r.args, r.info, r.state
    out = Path(args.output_dir)
    logger = None
    if info.is_main:
        run_dir.start_run_dir(out, args.overwrite, r.log)
        (out / "config.json").write_text(json.dumps(plain(vars(args)), indent=2) + "\n")
        logger = EpochLog(out, args.tensorboard, tuple(lr_columns(r.optimizer)))
    dist.barrier()  # the other ranks wait until rank 0 has cleared and created the folder
    loader = DataLoader(r.train_set, batch_size=args.batch_size, sampler=r.sampler, num_workers=args.workers,
                        pin_memory=info.device.type == "cuda", drop_last=True,
                        persistent_workers=args.workers > 0, generator=torch.Generator().manual_seed(args.seed))
    last_epoch = args.epochs if not args.stop_after else min(args.epochs, state.epoch + args.stop_after)
    stopped_early = False
    bn_sampler = None
    if args.precise_bn:  # un-augmented training clips for precise BN; its draws depend on (seed + 1, epoch) only
        bn_sampler = EpochSampler(r.sampler.p, args.precise_bn * args.batch_size * info.world_size,
                                  args.seed + 1, info.rank, info.world_size)
    try:
        while state.epoch < last_epoch:
            epoch, t0 = state.epoch, time.time()
            r.sampler.set_epoch(epoch)
            train_logs = train_one_epoch(r.model, r.teacher, r.criterion, loader, r.optimizer, r.scheduler, r.scaler,
                                         state, args, info.device, r.layout, logger.tb if logger else None,
                                         args.progress and info.is_main)
            train_logs = dist.mean_over_ranks(train_logs, info.device)
            dist.broadcast_buffers(unwrap_model(r.model))  # one model on every rank, the one rank 0 saves
            if r.teacher is not None:
                dist.broadcast_buffers(r.teacher.teacher)
            chosen = selected_model(r.model, r.teacher, args.select)
            if bn_sampler is not None:
                bn_sampler.set_epoch(epoch)
                draws, _ = bn_sampler.draws()  # plain ints: clips without augmentation
                precise_bn(chosen, r.train_set, draws.tolist(), args, info.device)
                dist.average_buffers(chosen)
            scores = evaluate(chosen, r.val_set, r.val_index, r.edition, args, info)
            state.epoch += 1
            end_of_epoch(r, epoch, time.time() - t0, train_logs, scores, out, logger)
            dist.barrier()
            if args.patience and state.bad_epochs >= args.patience:
                r.log(f"early stop: no improvement for {args.patience} epochs")
                stopped_early = True
                break
    finally:
        if logger is not None:
            logger.close()
    return {"best_score": state.best_score, "best_epoch": state.best_epoch, "epochs": state.epoch,
            "steps": state.step, "stopped_early": stopped_early, "output_dir": str(out), "history": state.history,
            "model": unwrap_model(r.model), "teacher": r.teacher.teacher if r.teacher is not None else None}
