"""Semi-supervised methods as plug-ins of the training engine (``--ssl``).

A method may ask the dataset for extra views of a sample (``teacher_view``), may want frames without
any label drawn too (``uses_unlabelled``), adds its loss terms to the supervised loss of a batch
(``extra_loss``), acts after every optimiser step (``after_step``), may offer another model to validate and
save (``evaluated``), and keeps a state that checkpoints store and ``--resume`` restores. Today:

- ``none``: supervised training only;
- ``mean_teacher`` (MTMT, ABAW 2021): an EMA teacher of the student (``models.mean_teacher``); with
  ``--consistency-weight`` > 0 the student also matches the teacher's outputs on its own view of the same
  frames (on the entries without a label, or all of them), ramped up over ``--rampup-epochs``; with weight
  0 it is only a steadier model to validate. MTMT's published variants: ``--teacher-bn train``,
  ``--rampup-by epoch`` (the weight of the whole epoch number, constant within an epoch), ``--ccc-loss
  reference`` and ``--expr-loss-classes 8`` (README, reproducing MTMT).

- ``cotex`` (masked CoTEX, ABAW4 LSD): co-training of the peers of ``--model cotex`` (``models.cotex``): the
  method replaces the supervised loss (``supervised_loss``) by the peers' mean cross-entropy over the labelled
  rows plus ``--lambda-js`` × their Jensen–Shannon agreement over every row, so rows without a label teach
  through the agreement only (that extension is ours).

A method may replace the supervised loss of a batch (``supervised_loss``); pseudo-labelling plugs in the same way.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from models.base import unwrap_model
from models.cotex import cotex_loss
from models.mean_teacher import MeanTeacher, consistency_loss, sigmoid_rampup
from tasks import OutputLayout


class Supervised:
    """``--ssl none``: no extra view, no extra term, the student is the model."""

    name = "none"
    teacher_view = False
    uses_unlabelled = False
    default_select = "student"
    log_fields: tuple[str, ...] = ()  # columns of log.csv the method's terms add

    def __init__(self, model: nn.Module, args: argparse.Namespace) -> None:
        self.args = args

    def supervised_loss(self, out: Tensor | tuple, targets: Mapping[str, Tensor], valid: Mapping[str, Tensor],
                        criterion: Callable) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, parts) of a batch's labels; the engine's masked multi-task loss unless a method replaces it."""
        return criterion(out, targets, valid)

    def extra_loss(self, out: Tensor | tuple, raw: Mapping[str, Tensor], prepare: Callable[[str], dict],
                   valid: Mapping[str, Tensor], layout: OutputLayout, weights: Mapping[str, float],
                   epoch_progress: float, autocast) -> tuple[Tensor | None, dict]:
        """(term to add to the batch loss or None, logs). ``prepare(view)`` gives the model inputs of a view."""
        return None, {}

    def after_step(self, model: nn.Module) -> None:
        pass

    def models(self) -> dict[str, nn.Module]:
        """Models besides the student that the method keeps (their buffers are synchronised across ranks)."""
        return {}

    def evaluated(self, model: nn.Module, select: str) -> nn.Module:
        return unwrap_model(model)

    def checkpoint_entries(self) -> dict:
        return {}

    def restore(self, ckpt: Mapping) -> None:
        pass

    @staticmethod
    def check_resume(ckpt: Mapping) -> str | None:
        """A reason the checkpoint was not saved by this method, or None."""
        if ckpt.get("teacher") is not None:
            return "saved with a mean teacher"
        return None


class MeanTeacherMethod(Supervised):
    name = "mean_teacher"
    teacher_view = True
    uses_unlabelled = True  # frames without labels still teach through the consistency term
    default_select = "teacher"

    def __init__(self, model: nn.Module, args: argparse.Namespace) -> None:
        super().__init__(model, args)
        # Namespaces built without the reproduction flags (older callers) get today's behaviour.
        bn = getattr(args, "teacher_bn", "eval")
        if bn == "train" and args.consistency_weight <= 0:  # its statistics would never move from the start
            raise ValueError("--teacher-bn train needs --consistency-weight > 0: the teacher's BatchNorm statistics "
                             "come only from the forward passes that make its targets")
        self.teacher = MeanTeacher(model, args.ema_decay, bn=bn)

    def extra_loss(self, out, raw, prepare, valid, layout, weights, epoch_progress, autocast):
        args = self.args
        if args.consistency_weight <= 0:  # the teacher is only an EMA model
            return None, {}
        with autocast():
            t_out = self.teacher(prepare("teacher"))
        # MTMT's formula ramps the self-cure rank term together with the consistency terms.
        cons, _ = consistency_loss(out, t_out, valid, layout, only_missing=args.consistency == "missing",
                                   weights=weights, rank_weight=args.rank_weight, au_reduction=args.au_reduction,
                                   ccc=getattr(args, "ccc_loss", "ours"),
                                   expr_classes=getattr(args, "expr_loss_classes", 0))
        weight = sigmoid_rampup(ramp_position(epoch_progress, getattr(args, "rampup_by", "step")),
                                args.consistency_weight, args.rampup_epochs)
        return weight * cons, {"consistency": cons.detach(), "consistency_weight": weight}

    def after_step(self, model: nn.Module) -> None:
        self.teacher.update(model)

    def models(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher.teacher}

    def evaluated(self, model: nn.Module, select: str) -> nn.Module:
        return self.teacher.teacher if select == "teacher" else unwrap_model(model)

    def checkpoint_entries(self) -> dict:
        return {"teacher": self.teacher.state_dict()}

    def restore(self, ckpt: Mapping) -> None:
        self.teacher.load_state_dict(ckpt["teacher"])

    @staticmethod
    def check_resume(ckpt: Mapping) -> str | None:
        return None if ckpt.get("teacher") is not None else "saved without a mean teacher"


class CoTraining(Supervised):
    """``--ssl cotex``: the model's peers learn from the labels and from each other's predictions."""

    name = "cotex"
    uses_unlabelled = True  # rows without a label still teach through the agreement term
    log_fields = ("loss_js",)  # the agreement term before its weight (loss_expr: the peers' mean CE)

    def __init__(self, model: nn.Module, args: argparse.Namespace) -> None:
        super().__init__(model, args)
        bare = unwrap_model(model)
        if not hasattr(bare, "peer_logits"):
            raise ValueError(f"--ssl cotex co-trains the peers of --model cotex, not {type(bare).__name__}")
        self.lambda_js, self.js = getattr(args, "lambda_js", 100.0), getattr(args, "js", "published")

    def supervised_loss(self, out, targets, valid, criterion):
        if out.dim() != 3:
            raise ValueError("--ssl cotex needs each peer's logits (N×B×C, the model in training mode), got "
                             f"{tuple(out.shape)}")
        target = torch.where(valid["expr"].bool(), targets["expr"].long(), torch.full_like(targets["expr"].long(), -1))
        total, parts = cotex_loss(out, target, self.lambda_js, self.js)
        return total, {"expr": parts["ce"], "js": parts["js"]}

    @staticmethod
    def check_resume(ckpt: Mapping) -> str | None:
        return "saved with a mean teacher" if ckpt.get("teacher") is not None else None


def ramp_position(epoch_progress: float, by: str) -> float:
    """Where the ramp-up stands: the fractional epoch of the step ('step', ours) or the whole epoch number
    ('epoch', MTMT: one weight per epoch, w(0) for the whole first epoch)."""
    if by == "step":
        return epoch_progress
    if by == "epoch":
        return float(math.floor(epoch_progress))
    raise ValueError(f"--rampup-by must be 'step' or 'epoch', got {by!r}")


METHODS: dict[str, type[Supervised]] = {"none": Supervised, "mean_teacher": MeanTeacherMethod, "cotex": CoTraining}


def build_method(name: str, model: nn.Module, args: argparse.Namespace) -> Supervised:
    if name not in METHODS:
        raise ValueError(f"unknown semi-supervised method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name](model, args)


def uses_teacher_view(name: str) -> bool:
    return METHODS[name].teacher_view


def default_select(name: str) -> str:
    return METHODS[name].default_select
