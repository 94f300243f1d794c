"""Training loop of train.py: any model of ``models.registry``, any semi-supervised method of ``models.ssl``.

One data path: ``data.clips.ClipDataset`` (serving the model's declared input) → DataLoader
(``data.sampling.EpochSampler``: a fixed number of samples per epoch) → the model's ``prepare`` hook on the
device → model (DDP when launched by torchrun) → masked multi-task loss (+ the method's terms and the
model's own regularization) → optimiser (``utils.optim``: parameter groups, accumulation, clipping,
per-step schedule) → the method's step (e.g. the EMA teacher). After every epoch the *selected* model
(student, or the teacher with ``--select teacher``) is validated with the edition's official metrics
through the inference path of test_val_aff2.py (``app.validation``), and that same model's weights are
what ``best.pth`` and ``last.pth`` store under "model", so the score in a file is the score of the weights
in it. ``last.pth`` also holds everything a resume needs (``app.checkpoints``). The flags → datasets, sampler,
model and loss step is ``app.train_setup``.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from app.checkpoints import TrainState, checkpoint, plain, read_resume, save_atomic, set_rng_state
from app.inference import autocast, progress_bar
from app.lsd_run import evaluate_images
from app.train_log import EpochLog, epoch_row
from app.train_setup import (  # noqa: F401 (input_spec, init_weights: re-exported for callers of app.training)
    init_weights,
    input_spec,
    make_datasets,
    make_model,
    make_sampler,
    model_loss,
    resolve,
)
from app.unlabelled_run import UnlabelledStream, build_pool, hide_labels, labelled_pass
from app.validation import evaluate, precise_bn
from data.clips import ClipDataset, DatasetError
from data.lsd import LsdError, LsdImages
from data.sampling import EpochSampler
from models.base import prepare_inputs, unwrap_model
from models.losses import MultiTaskLoss
from models.ssl import METHODS, Supervised, build_method
from tasks import Edition, OutputLayout, get_edition, get_layout, layout_au_columns, parse_task_weights
from utils import dist, run_dir
from utils.checkpoint import CheckpointError
from utils.optim import (
    GradientStep,
    build_optimizer,
    build_scheduler,
    group_lrs,
    lr_columns,
    optimizer_steps_per_epoch,
    restore_optimizer,
    schedule_from_args,
)

# ---------------------------------------------------------------------------------------------------
# Training


def train_one_epoch(model: nn.Module, method: Supervised, criterion: MultiTaskLoss, loader: DataLoader,
                    optimizer, scheduler, scaler, state: TrainState, args: argparse.Namespace,
                    device: torch.device, layout: OutputLayout, tb, progress: bool,
                    unlabelled: UnlabelledStream | None = None) -> dict[str, float]:
    """One pass over the epoch's draws, an optimiser step every --accum-steps batches; mean losses over its batches.

    The schedule and the teacher's EMA advance once per optimiser step. Losses are summed on the device
    (float64) and read back only when logged, so a step does not wait for the device just to log.
    """
    model.train()
    sums: dict[str, torch.Tensor | float] = {}
    batches = len(loader)
    grads = GradientStep(model, optimizer, scaler, args.accum_steps, batches, args.clip_grad)
    bar = progress_bar(loader, progress, f"epoch {state.epoch}")
    extra = unlabelled.epoch(state.epoch, batches) if unlabelled is not None else None
    for i, batch in enumerate(bar):
        if extra is not None:  # the method's unlabelled faces of this batch (weak and strong views)
            batch["unlabelled"] = next(extra)
        with grads.batch(i):  # DDP: no gradient all-reduce until the accumulation group's last batch
            loss, logs = batch_loss(model, method, criterion, batch, args, device, layout, state.epoch + i / batches)
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
        method.after_step(model)
        state.step += 1
        if tb is not None and state.step % args.log_every == 0:
            for k, v in logs.items():
                tb.add_scalar(f"train/{k}", float(v), state.step)
            tb.add_scalar("train/lr", optimizer.param_groups[0]["lr"], state.step)
            for k, v in lr_columns(optimizer).items():
                tb.add_scalar(f"train/{k}", v, state.step)
    return {k: float(v) / max(batches, 1) for k, v in sums.items()}


def batch_loss(model: nn.Module, method: Supervised, criterion: MultiTaskLoss, batch: dict,
               args: argparse.Namespace, device: torch.device, layout: OutputLayout,
               epoch_progress: float) -> tuple[torch.Tensor, dict]:
    """Supervised loss of one batch (+ the method's terms, or else the model's own regularization) and its parts."""
    tasks = [k for k in ("expr", "au", "va") if k in batch]  # LSD images carry EXPR only
    targets = {k: batch[k].to(device, non_blocking=True) for k in tasks}
    valid = {k: batch[f"{k}_valid"].to(device, non_blocking=True) for k in tasks}
    inputs = prepare_inputs(model, batch, device, channels_last=args.channels_last)
    more = [(name, prepare_inputs(model, raw, device, channels_last=args.channels_last))
            for name, raw in method.extra_inputs(batch)]  # one forward pass for all: BatchNorm and DDP see one
    sizes = [len(next(iter(inputs.values())))] + [len(next(iter(x.values()))) for _, x in more]
    if more:
        inputs = {k: torch.cat([inputs[k]] + [x[k] for _, x in more]) for k in inputs}
    with autocast(device, args.amp):
        out = model(inputs)
    extra_out = None
    if more:
        parts_out = torch.split(out, sizes)
        out, extra_out = parts_out[0], {name: o for (name, _), o in zip(more, parts_out[1:], strict=True)}
    loss, parts = method.supervised_loss(out, targets, valid, criterion)
    logs = {"loss_" + k: v.detach() for k, v in parts.items()}

    def view(name: str, raw: dict | None = None) -> dict:  # another view of the same frames (e.g. the teacher's)
        return prepare_inputs(model, batch if raw is None else raw, device, view=name, channels_last=args.channels_last)

    extra, extra_logs = method.extra_loss(out, batch, view, valid, layout, criterion.weights, epoch_progress,
                                          functools.partial(autocast, device, args.amp), extra_out=extra_out)
    if extra is not None:  # a method's terms include the model's regularization (MTMT's formula)
        loss = loss + extra
        logs.update(extra_logs)
    else:
        reg = unwrap_model(model).regularization(out)
        if reg is not None and args.rank_weight:
            loss = loss + args.rank_weight * reg
    return loss, logs


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
    method: Supervised
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    state: TrainState
    unlabelled: UnlabelledStream | None = None  # --ssl pseudo_label's unlabelled faces
    pending_rows: list = field(default_factory=list)  # log rows of epochs since the last checkpoint

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
        except (CheckpointError, DatasetError, LsdError, FileNotFoundError, ValueError) as e:
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
    if layout.has("au"):  # a layout with AUs must have every AU the edition scores (EXPR-only layouts score EXPR)
        layout_au_columns(layout, edition)
    criterion = MultiTaskLoss(layout, parse_task_weights(args.task_weights), args.au_reduction, args.tsav_filter,
                              ccc=args.ccc_loss, expr_classes=args.expr_loss_classes, kind=args.loss)
    train_set, val_set, val_index = make_datasets(args, layout)
    hidden = hide_labels(train_set, args.label_fraction, args.seed) if args.label_fraction < 1 else None
    if hidden is not None:
        log(f"--label-fraction {args.label_fraction}: {int(train_set.labels['expr_valid'].sum())} EXPR labels kept, "
            f"{int((hidden >= 0).sum())} hidden")
    sampler = make_sampler(args, train_set, info)
    batches = len(sampler) // args.batch_size
    if batches < 1:
        raise ValueError(f"{len(sampler)} clips per epoch per process is less than one batch of {args.batch_size}; "
                         "raise --samples-per-epoch/--epoch-fraction or lower --batch-size")
    steps_per_epoch = optimizer_steps_per_epoch(batches, args.accum_steps)
    resume = read_resume(args.resume, args, layout, METHODS[args.ssl]) if args.resume else None
    model = make_model(args, layout, log)
    criterion = model_loss(args, model, criterion)
    if hasattr(model, "seed_views"):  # training views drawn on the device side: one seeded stream per rank
        model.seed_views(args.seed + info.rank)
    log(f"{args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters), layout {layout.name}, "
        f"edition {edition.name}, {info.world_size} process(es) on {info.device}; train {describe(train_set)}, "
        f"{len(sampler) * info.world_size} samples/epoch ({batches} batches/process, {steps_per_epoch} "
        f"optimiser steps); validation {len(val_index)} of {describe(val_set)}")

    if resume is not None:
        model.load_state_dict(resume["student"], strict=True)
    model.to(info.device)
    if args.channels_last:
        model.to_channels_last()
    if info.distributed:
        model = DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    stream = None
    if METHODS[args.ssl].needs_pool:  # unlabelled faces for every batch, drawn apart from the labelled ones
        pool = build_pool(args, train_set, hidden if hidden is not None else np.full(len(train_set), -1), layout, log)
        stream = UnlabelledStream(pool, args.mu * args.batch_size, args.seed + 7, args.workers, info.rank,
                                  info.world_size)
    method = build_method(args.ssl, model, args, pool_size=len(stream.pool) if stream else 0)
    optimizer = build_optimizer(model, args.optimizer, args.lr, args.weight_decay)
    scheduler = build_scheduler(optimizer, schedule_from_args(args, steps_per_epoch))
    if len(optimizer.param_groups) > 1:
        log("parameter groups (lr): " + ", ".join(f"{k} {v:.3g}" for k, v in group_lrs(optimizer).items()))
    scaler = torch.amp.GradScaler(info.device.type, enabled=args.amp == "fp16")
    state = TrainState()
    if resume is not None:
        method.restore(resume)
        restore_optimizer(optimizer, resume["optimizer"], args.resume)
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        sampler.load_state_dict(resume["sampler"])
        state = TrainState(**resume["state"])
        set_rng_state(resume["rng"])
        if resume["rng"].get("views") is not None:  # the model's own view generator (EMMA's crops and jitter)
            unwrap_model(model).set_view_rng_state(resume["rng"]["views"])
        log(f"resumed from {args.resume}: epoch {state.epoch}, step {state.step}, best {state.best_score:.4f}")
    return Run(args, info, layout, edition, criterion, train_set, val_set, val_index, sampler, model, method,
               optimizer, scheduler, scaler, state, stream)


def describe(dataset: ClipDataset | LsdImages) -> str:
    return dataset.describe() if isinstance(dataset, LsdImages) else f"{len(dataset.tracks)} tracks"


def end_of_epoch(r: Run, epoch: int, seconds: float, train_logs: dict, scores: dict, out: Path,
                 logger: EpochLog | None) -> None:
    """Best-score bookkeeping, last.pth (+ best.pth when better) and the epoch's log row.

    ``scores`` is None for an epoch that was not validated (--eval-every): its row (without validation
    columns) waits in ``r.pending_rows`` and is written with the next checkpoint, so log.csv and last.pth
    always describe the same epochs and a killed run resumes from its last validated epoch.
    """
    state, args = r.state, r.args
    improved = scores is not None and not math.isnan(scores["total"]) and scores["total"] > state.best_score
    if improved:
        state.best_score, state.best_epoch, state.bad_epochs = scores["total"], epoch, 0
    elif scores is not None:
        state.bad_epochs += 1
    row = {**epoch_row(epoch, state, r.optimizer.param_groups[0]["lr"], seconds, train_logs, scores),
           **lr_columns(r.optimizer)}
    state.history.append(plain(row))
    if r.info.is_main:
        r.pending_rows.append(row)
        if scores is not None:  # checkpoints (680 MB for TSAV with its teacher and Adam) with validations only
            parts = (r.model, r.method, r.optimizer, r.scheduler, r.scaler, r.sampler, state, scores)
            save_atomic(checkpoint(args, *parts, full=True), out / "last.pth")
            if improved:
                save_atomic(checkpoint(args, *parts, full=False), out / "best.pth")
            for pending in r.pending_rows:
                logger.write(pending)
            r.pending_rows.clear()
        if scores is None:
            r.log(f"epoch {epoch}: loss {train_logs.get('loss', math.nan):.4f} | not validated (--eval-every "
                  f"{args.eval_every}) | best {state.best_score:.4f} (epoch {state.best_epoch}) | {seconds:.0f} s")
            return
        tasks = " ".join(f"{k.upper()} {scores[k]['score']:.4f}" for k in ("va", "expr", "au") if k in scores)
        r.log(f"epoch {epoch}: loss {train_logs.get('loss', math.nan):.4f} | {args.select} val {tasks} "
              f"total {scores['total']:.4f} | best {state.best_score:.4f} (epoch {state.best_epoch}) | {seconds:.0f} s")


def validates(epoch: int, every: int, last_epoch: int, epochs: int) -> bool:
    """Whether epoch ``epoch`` (0-based) ends with a validation: every ``every`` epochs, the run's last
    epoch (also a --stop-after stop) and the final epoch of the schedule."""
    done = epoch + 1
    return done % every == 0 or done == last_epoch or done == epochs


def train(r: Run) -> dict:
    """Epochs until --epochs (or --stop-after, or early stopping); last.pth after each, validation (and best.pth
    when better) after every --eval-every epochs and the last."""
    args, info, state = r.args, r.info, r.state
    out = Path(args.output_dir)
    logger = None
    if info.is_main:
        run_dir.start_run_dir(out, args.overwrite, r.log)
        (out / "config.json").write_text(json.dumps(plain(vars(args)), indent=2) + "\n")
        logger = EpochLog(out, args.tensorboard, r.method.log_fields + getattr(r.criterion, "log_fields", ())
                          + tuple(lr_columns(r.optimizer)))
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
            train_logs = train_one_epoch(r.model, r.method, r.criterion, loader, r.optimizer, r.scheduler, r.scaler,
                                         state, args, info.device, r.layout, logger.tb if logger else None,
                                         args.progress and info.is_main, r.unlabelled)
            train_logs.update(r.method.end_epoch(epoch, functools.partial(
                labelled_pass, train=r.train_set, layout=r.layout, args=args, device=info.device)))
            train_logs = dist.mean_over_ranks(train_logs, info.device)
            dist.broadcast_buffers(unwrap_model(r.model))  # one model on every rank, the one rank 0 saves
            for kept in r.method.models().values():
                dist.broadcast_buffers(kept)
            scores = None
            if validates(epoch, args.eval_every, last_epoch, args.epochs):
                chosen = r.method.evaluated(r.model, args.select)
                if bn_sampler is not None:
                    bn_sampler.set_epoch(epoch)
                    draws, _ = bn_sampler.draws()  # plain ints: clips without augmentation
                    precise_bn(chosen, r.train_set, draws.tolist(), args, info.device)
                    dist.average_buffers(chosen)
                score_fn = evaluate_images if isinstance(r.val_set, LsdImages) else evaluate
                scores = score_fn(chosen, r.val_set, r.val_index, r.edition, args, info)
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
            "model": unwrap_model(r.model), "teacher": r.method.models().get("teacher")}
