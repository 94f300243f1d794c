"""train.py's set-up from the flags: the 'auto' choices resolved, the datasets, the epoch sampler, the model (with
its initial weights) and the supervised loss — what ``app.training.setup`` assembles into a run."""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from torch import nn

from data.clips import Augment, ClipDataset
from data.lsd import LsdImages
from data.sampling import EpochSampler, class_cycle_size, sampling_weights, validation_indices
from models.base import unwrap_model
from models.losses import MultiTaskLoss
from models.registry import build_model, default_input, default_size, input_kind, load_model
from models.ssl import METHODS
from models.tsav_weights import init_backbones_from
from tasks import OutputLayout, get_layout, parse_task_weights
from utils import dist
from utils.inputs import InputSpec


def resolve(args: argparse.Namespace, device: torch.device) -> argparse.Namespace:
    """Fill the 'auto' choices that depend on other flags or on the device."""
    args = argparse.Namespace(**vars(args))
    if args.lsd:  # the LSD image folders: 6 classes, scored by the lsd edition
        if args.edition not in (None, "lsd"):
            raise ValueError(f"--lsd trains and validates the 6 LSD classes (edition lsd), not --edition "
                             f"{args.edition}")
        if args.precise_bn:
            raise ValueError("--precise-bn re-estimates BatchNorm statistics on database clips; not with --lsd")
        args.layout, args.edition = "lsd", "lsd"
    if (args.model == "cotex") != (args.ssl == "cotex"):
        raise ValueError("--model cotex trains with --ssl cotex (its peers' co-training loss), and --ssl cotex needs "
                         f"--model cotex (got --model {args.model} --ssl {args.ssl})")
    if args.ssl == "pseudo_label" and input_kind(args.model) != "frame":
        raise ValueError(f"--ssl pseudo_label pseudo-labels the faces of a frame model (resnet18, resnet50, emma), "
                         f"not {args.model}")
    if args.edition is None:
        args.edition = get_layout(args.layout).edition
    own_input = default_input(args.model)
    if args.size is None:
        args.size = default_size(args.model)
    if args.clip_len is None:
        args.clip_len = own_input.clip_len
    if args.dilation is None:
        args.dilation = own_input.dilation
    if args.select == "auto":
        args.select = METHODS[args.ssl].select_for(args)
    if args.select == "teacher" and not METHODS[args.ssl].has_teacher(args):
        raise ValueError(f"--select teacher needs a method with a teacher (--ssl mean_teacher, or pseudo_label with "
                         f"--pl-teacher ema), not {args.ssl}")
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    if args.amp == "auto":
        args.amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    if args.amp != "none" and device.type != "cuda":
        raise ValueError(f"--amp {args.amp} needs a CUDA device (this run is on {device})")
    return args


def input_spec(args: argparse.Namespace) -> InputSpec:
    """The input the model will declare, from the geometry flags and its family's input kind."""
    kind = input_kind(args.model)
    if kind == "frame":
        return InputSpec.frame(size=args.size, mask=None)
    if kind == "frame_block":
        return InputSpec.frame_block(args.clip_len, size=args.size, dilation=args.dilation,
                                     block=default_input(args.model).block)
    return InputSpec(clip_len=args.clip_len, dilation=args.dilation, size=args.size, mask=args.mask,
                     audio_seconds=args.audio_seconds, audio_window=args.audio_window)


def make_datasets(args: argparse.Namespace, layout: OutputLayout) -> tuple[ClipDataset, ClipDataset, np.ndarray]:
    """Train and validation datasets and the validation frames (images with --lsd); every data problem is raised
    here."""
    if args.lsd:  # the published view: crop and flip drawn per image (no colour jitter)
        train = LsdImages(args.lsd, "train", args.size, flip=args.flip)
        val = LsdImages(args.lsd, "val", args.size)
        return train, val, validation_indices(val, args.val_samples, args.seed)
    spec = input_spec(args)
    augment = Augment(flip=args.flip, brightness=args.jitter, contrast=args.jitter, saturation=args.jitter,
                      hue=args.hue, shift_scale_rotate=args.shift_scale_rotate,
                      teacher=METHODS[args.ssl].teacher_view, teacher_jitter=args.teacher_jitter)
    train = ClipDataset(args.db, "train", layout, spec, augment)
    val = ClipDataset(args.db, "val", layout, spec)
    return train, val, validation_indices(val, args.val_samples, args.seed)


def make_sampler(args: argparse.Namespace, train: ClipDataset, info: dist.DistInfo) -> EpochSampler:
    # Unless the method learns from them, frames without any label teach nothing: draw only labelled ones.
    weights = sampling_weights(train, args.balance_tasks, args.balance_expr == "weights",
                               labelled_only=not METHODS[args.ssl].uses_unlabelled)
    if args.balance_expr == "max":  # every class in turn, the largest class's count × the classes per epoch
        lab = train.labels
        classes = np.where((weights > 0) & lab["expr_valid"], lab["expr"], -1)
        if not (classes >= 0).any():
            raise ValueError("--balance-expr max: no training frame has an EXPR label")
        n = args.samples_per_epoch or class_cycle_size(classes)
        return EpochSampler(weights, n, args.seed, info.rank, info.world_size, classes=classes)
    n = args.samples_per_epoch or max(args.batch_size * info.world_size,
                                      int(round(args.epoch_fraction * int((weights > 0).sum()))))
    return EpochSampler(weights, n, args.seed, info.rank, info.world_size)


CONSTRUCTOR_NAMES = {"cnu_stage": "stage", "cnu_lstm": "lstm"}  # model flags whose constructor option is named apart


def model_loss(args: argparse.Namespace, model: nn.Module, default: MultiTaskLoss) -> nn.Module:
    """The model's own supervised loss (``make_loss``, e.g. cnu's) with --task-weights and --aux-weight, else
    ``default`` (the --loss flags); flags of the other kind are refused."""
    weights = parse_task_weights(args.task_weights)
    if args.aux_weight is not None:
        weights["aux"] = args.aux_weight
    make_loss = getattr(unwrap_model(model), "make_loss", None)  # models.base.AffectModel's hook
    own = make_loss(weights) if make_loss is not None else None
    if own is None:
        if args.aux_weight is not None:
            raise ValueError(f"--aux-weight is for cnu (its auxiliary VA head), not {args.model}")
        return default
    if args.loss != "ours" or args.ccc_loss != "ours" or args.tsav_filter or args.expr_loss_classes:
        raise ValueError(f"{args.model} trains with its own loss: --loss, --ccc-loss, --tsav-filter and "
                         "--expr-loss-classes do not apply")
    return own


def make_model(args: argparse.Namespace, layout: OutputLayout, log) -> nn.Module:
    """A fresh model as the model flags say (size, initial weights; EMMA's DAN BatchNorm mode, layer decay and
    drop-path; CoTEX's peers and mask ratio)."""
    options = {}
    for flag, key, models in (("--dan-bn", "dan_bn", ("emma",)), ("--layer-decay", "layer_decay", ("emma", "cotex")),
                              ("--drop-path", "drop_path", ("emma", "cotex")), ("--peers", "peers", ("cotex",)),
                              ("--mask-ratio", "mask_ratio", ("cotex",)), ("--cnu-stage", "cnu_stage", ("cnu",)),
                              ("--cnu-lstm", "cnu_lstm", ("cnu",)), ("--no-history-grad", "history_grad", ("cnu",)),
                              ("--face-lr-scale", "face_lr_scale", ("cnu",)),
                              ("--no-face-freeze", "freeze_below_layer3", ("cnu",))):
        value = getattr(args, key)
        if value is None:
            continue
        if args.model not in models:
            raise ValueError(f"{flag} is for {' and '.join(models)}, not {args.model}")
        options[CONSTRUCTOR_NAMES.get(key, key)] = value
    model = build_model(args.model, layout, args.dropout, input_spec(args), args.video_init, args.audio_init,
                        args.backbone_init, dan_init=args.dan_init, variant=args.model_size, options=options)
    if args.init_from:
        init_weights(model, args.init_from, log)
    return model


def init_weights(model: nn.Module, path: str, log) -> None:
    """Same architecture and layout: every weight; otherwise only the two streams (e.g. TSAV → MTMT)."""
    source = load_model(path, trust_pickle=False)
    if type(source) is type(model) and source.layout == model.layout:
        model.load_state_dict(source.state_dict(), strict=True)
        log(f"initialised every weight from {path}")
        return
    fresh = init_backbones_from(model, path)
    log(f"initialised the audio and video streams from {path} ({type(source).__name__}, layout "
        f"{source.layout.name}); heads{' and ' + str(len(fresh)) + ' stream tensors' if fresh else ''} stay fresh")
