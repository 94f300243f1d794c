"""Mean teacher for semi-supervised multi-task training (MTMT, ABAW 2021), with the published bugs fixed.

- The EMA decay ``min(1 − 1/(step + 1), decay)`` runs over a GLOBAL step that survives epochs and
  resumes (the published code reset it every epoch, overwriting the teacher with the student).
- Parameters AND BatchNorm running statistics are averaged; integer buffers (num_batches_tracked) are
  copied. The teacher runs in eval mode without gradients, on the student's device.
- Consistency per task on the samples that lack that task's label (or on all samples).

For reproductions, ``bn="train"`` (``--teacher-bn train``) is MTMT's teacher as published: its BatchNorm
layers normalise with the statistics of the batch it is given and update its own running statistics from
those forward passes (momentum as set in the layers), and the EMA covers the parameters only, so those
running statistics (what an eval-mode validation of the teacher uses) are never the student's.
``consistency_loss`` takes MTMT's VA loss and 8-logit EXPR cross-entropy too (``models.losses``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from models.base import unwrap_model
from models.losses import (
    DEFAULT_TASK_WEIGHTS,
    expr_logits,
    masked_au_bce,
    masked_cross_entropy,
    rank_regularization,
    va_loss,
)
from tasks import OutputLayout, get_layout
from utils.outputs import split_outputs, va_output

RANK_WEIGHT = 12.0  # MTMT: L_c = 3·C_EX + C_AU + C_VA + 12·RR
TEACHER_BN = ("eval", "train")


def ema_decay(step: int, max_decay: float = 0.99) -> float:
    """Decay for the update after ``step`` earlier updates: a running mean first, then ``max_decay``."""
    return min(1.0 - 1.0 / (step + 1), max_decay)


class MeanTeacher:
    """EMA copy of a student model. Call ``update(student)`` after every optimiser step.

    ``bn``: 'eval' (ours: targets from running statistics, buffers averaged with the parameters) or
    'train' (MTMT: targets from batch statistics, buffers left to the teacher's own forward passes).
    """

    def __init__(self, student: nn.Module, decay: float = 0.99, bn: str = "eval") -> None:
        if bn not in TEACHER_BN:
            raise ValueError(f"teacher BatchNorm mode must be one of {TEACHER_BN}, got {bn!r}")
        self.decay = decay
        self.bn = bn
        self.step = 0  # updates done so far, over the whole run
        self.teacher = copy.deepcopy(unwrap_model(student))
        self.teacher.requires_grad_(False)
        self.teacher.eval()

    @torch.no_grad()
    def update(self, student: nn.Module) -> float:
        """teacher ← α·teacher + (1 − α)·student for parameters and (bn 'eval') float buffers; returns α."""
        student = unwrap_model(student)
        alpha = ema_decay(self.step, self.decay)
        self._follow_device(student)
        for t, s in zip(self.teacher.parameters(), student.parameters(), strict=True):
            t.lerp_(s.detach().to(t.dtype), 1.0 - alpha)
        if self.bn == "eval":
            self._average_buffers(student, alpha)
        self.step += 1
        return alpha

    def _average_buffers(self, student: nn.Module, alpha: float) -> None:
        for (name, t), (s_name, s) in zip(self.teacher.named_buffers(), student.named_buffers(), strict=True):
            if name != s_name:
                raise ValueError(f"student and teacher buffers differ: {name} vs {s_name}")
            if t.is_floating_point():
                t.lerp_(s.to(t.dtype), 1.0 - alpha)
            else:
                t.copy_(s)

    def _follow_device(self, student: nn.Module) -> None:
        device = next(student.parameters()).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)

    @torch.no_grad()
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.teacher.eval()  # in case something switched it to train mode (dropout stays off in both modes)
        if self.bn == "eval":
            return self.teacher(*args, **kwargs)
        for m in self.teacher.modules():
            if isinstance(m, _BatchNorm):
                m.train()
        try:
            return self.teacher(*args, **kwargs)
        finally:
            self.teacher.eval()  # validation and saving see the usual eval-mode teacher

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict(), "step": self.step, "decay": self.decay}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.teacher.load_state_dict(state["teacher"], strict=True)
        self.step = int(state["step"])
        self.decay = float(state.get("decay", self.decay))


def sigmoid_rampup(epoch: float, max_weight: float = 0.4, length: float = 15) -> float:
    """Consistency weight max_weight·exp(−5·(1 − min(epoch, length)/length)²)."""
    if length <= 0:
        return max_weight
    phase = 1.0 - min(max(epoch, 0.0), length) / length
    return max_weight * math.exp(-5.0 * phase * phase)


def _missing(valid: Tensor | None, batch: int, device: torch.device, only_missing: bool) -> Tensor:
    """Boolean mask of the entries the consistency applies to."""
    if not only_missing or valid is None:
        return torch.ones(batch, dtype=torch.bool, device=device)
    return ~valid.to(device).bool()


def consistency_loss(student_out: Tensor | tuple, teacher_out: Tensor | tuple,
                     label_valid_masks: Mapping[str, Tensor], layout: str | OutputLayout,
                     only_missing: bool = True, weights: Mapping[str, float] | None = None,
                     alpha: Tensor | None = None, rank_weight: float = RANK_WEIGHT,
                     au_reduction: str = "sum", ccc: str = "ours",
                     expr_classes: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
    """Student vs (detached) teacher: EXPR CE to the teacher's argmax, AU BCE to its probabilities,
    VA 1 − CCC to its VA values (tanh of the raw outputs for every layout of TSAV and MTMT).

    ``label_valid_masks`` maps 'expr'/'au'/'va' to a bool mask saying which samples HAVE that label
    (B, or B×n_au / B×2 per entry); with ``only_missing`` a task's term uses only the other entries,
    and a task absent from the dict counts as unlabelled everywhere. The self-cure rank term
    (``rank_weight``·RR) is added when ``alpha`` is given or ``student_out`` is an (outputs, alpha) tuple.
    MTMT's variants: ``ccc='reference'`` (its VA loss, the used rows being the batch it divides by) and
    ``expr_classes=8`` (student and teacher over all 8 EXPR logits; a teacher argmax on the unused slot is
    no target). Returns (weighted total, {task: unweighted term}).
    """
    unknown = set(label_valid_masks) - {"expr", "au", "va"}
    if unknown:
        raise ValueError(f"unknown tasks in label_valid_masks: {sorted(unknown)}")
    if isinstance(student_out, tuple):
        if alpha is None:
            alpha = student_out[1]
        student_out = student_out[0]
    weights = {**DEFAULT_TASK_WEIGHTS, **(weights or {})}
    s = split_outputs(student_out, layout)
    t = {k: v.detach().float() for k, v in split_outputs(teacher_out, layout).items()}
    batch, device = student_out.shape[0], student_out.device

    expr_use = _missing(label_valid_masks.get("expr"), batch, device, only_missing)
    au_use = _missing(label_valid_masks.get("au"), batch, device, only_missing)
    va_use = _missing(label_valid_masks.get("va"), batch, device, only_missing)
    if au_use.dim() == 1 and "au" in s:
        au_use = au_use[:, None].expand_as(s["au"])

    terms = {}  # the layout's blocks only
    if "expr" in s:
        if expr_classes:
            s_expr = expr_logits(student_out, layout, expr_classes)
            pseudo = expr_logits(teacher_out, layout, expr_classes).detach().float().argmax(dim=1)
            expr_use = expr_use & (pseudo < get_layout(layout).num_expr_classes)  # MTMT's ignore_index 7
        else:
            s_expr, pseudo = s["expr"], t["expr"].argmax(dim=1)
        terms["expr"] = masked_cross_entropy(s_expr, pseudo, expr_use)
    if "au" in s:
        terms["au"] = masked_au_bce(s["au"], torch.sigmoid(t["au"]), au_use, au_reduction)
    if "va" in s:
        terms["va"] = va_loss(va_output(s["va"].float(), layout, clip=False), va_output(t["va"], layout), va_use,
                              ccc, batch_rows=va_use)
    total = sum(weights[task] * term for task, term in terms.items())
    if alpha is not None and rank_weight:
        terms["rank"] = rank_regularization(alpha)
        total = total + rank_weight * terms["rank"]
    return total, terms
