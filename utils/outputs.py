"""Model outputs → per-task scores → decisions, one way for every caller.

A model's raw output is B×K columns in its ``OutputLayout`` (tasks.py), or a tuple whose first element
is that (MTMT's self-cure model also returns its attention weights). From it:

1. ``split_outputs``: {'expr': B×C class logits, 'va': B×2 raw, 'au': B×n_au logits}, the layout's blocks;
2. ``output_scores``: continuous per-frame scores, the contract with the writers and post-processing
   (smoothing, flip averaging): {'va': B×2 in [−1, 1], 'expr_prob': B×C, 'au_prob': B×n_au, 'logits': B×K};
3. ``decide`` (for an edition: its classes and AU columns) or ``decide_layout`` (the layout's own classes
   and AUs, e.g. a per-frame CSV): {'VA', 'EXPR' class codes, 'AU' 0/1}.

A ``DecisionProfile`` says how 2 and 3 are done. The one profile today, ``default``: VA by the layout's
activation (tanh, or the raw value clipped to [−1, 1]), EXPR = argmax over the classes served, AU = 1
where its probability (sigmoid) ≥ the threshold (0.5 unless a flag says otherwise). Training validation,
test_val_aff2.py, the --video report and the bench all call these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tasks import Edition, OutputLayout, get_layout, layout_au_columns, registered


@dataclass(frozen=True)
class DecisionProfile:
    """How raw outputs become scores and decisions (see the module docstring)."""

    name: str
    description: str


PROFILES = {
    "default": DecisionProfile("default", "VA = the layout's activation (tanh, or raw clipped to [-1, 1]); EXPR = "
                               "argmax over the classes served; AU = 1 where sigmoid(logit) >= the threshold"),
}


def get_profile(profile: str | DecisionProfile) -> DecisionProfile:
    if isinstance(profile, DecisionProfile):
        return profile
    return registered(PROFILES, profile, "decision profile")


def split_outputs(out: Tensor | tuple, layout: str | OutputLayout) -> dict[str, Tensor]:
    """B×K outputs → {'expr': B×C class logits, 'va': B×2 raw, 'au': B×n_au logits}, the layout's blocks only.

    Unused EXPR slots are dropped. A tuple (outputs, …) is accepted.
    """
    if isinstance(out, tuple):
        out = out[0]
    layout = get_layout(layout)
    if out.shape[-1] != layout.num_outputs:
        raise ValueError(f"layout {layout.name!r} has {layout.num_outputs} outputs, got {out.shape[-1]}")
    parts = {task: out[..., s] for task, s in layout.slices.items()}
    if "expr" in parts:
        parts["expr"] = parts["expr"][..., : layout.num_expr_classes]
    return parts


def va_output(va_raw: Tensor, layout: str | OutputLayout, clip: bool = True) -> Tensor:
    """VA values from the raw B×2 VA block, by the layout's VA activation: tanh, or the raw values, clipped
    to [−1, 1] unless ``clip`` is False (losses: a clip would stop the gradient outside the range)."""
    if get_layout(layout).va_activation == "tanh":
        return torch.tanh(va_raw)
    return va_raw.clamp(-1, 1) if clip else va_raw


def output_scores(out: Tensor | tuple, layout: str | OutputLayout,
                  profile: str | DecisionProfile = "default") -> dict[str, Tensor]:
    """Per-frame scores of a batch of outputs (float32, same device): the blocks the layout has, plus 'logits'."""
    get_profile(profile)
    layout = get_layout(layout)
    parts = {k: v.float() for k, v in split_outputs(out, layout).items()}
    scores = {}
    if "va" in parts:
        scores["va"] = va_output(parts["va"], layout)
    if "expr" in parts:
        scores["expr_prob"] = parts["expr"].softmax(dim=1)
    if "au" in parts:
        scores["au_prob"] = torch.sigmoid(parts["au"])
    scores["logits"] = (out[0] if isinstance(out, tuple) else out).float()
    return scores


def _decide(scores: dict[str, np.ndarray], n_classes: int, au_cols: list[int] | None,
            au_threshold: float) -> dict[str, np.ndarray]:
    out = {}
    if "va" in scores:
        out["VA"] = np.clip(scores["va"], -1, 1)
    if "expr_prob" in scores:
        out["EXPR"] = scores["expr_prob"][:, :n_classes].argmax(1)
    if "au_prob" in scores:
        au = scores["au_prob"] if au_cols is None else scores["au_prob"][:, au_cols]
        out["AU"] = (au >= au_threshold).astype(np.int64)
    return out


def decide(scores: dict[str, np.ndarray], layout: str | OutputLayout, edition: Edition,
           profile: str | DecisionProfile = "default", au_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Scores → {'VA': (n, 2), 'EXPR': (n,) the edition's class codes, 'AU': (n, k) 0/1 in the edition's AU order}.

    EXPR is an argmax over the classes both the layout and the edition have; raises MissingAUError when the
    layout lacks an AU the edition scores.
    """
    get_profile(profile)
    layout = get_layout(layout)
    au_cols = layout_au_columns(layout, edition) if "au_prob" in scores else None
    return _decide(scores, min(layout.num_expr_classes, len(edition.expr_names)), au_cols, au_threshold)


def decide_layout(scores: dict[str, np.ndarray], layout: str | OutputLayout,
                  profile: str | DecisionProfile = "default", au_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Scores → decisions in the layout's own classes and AU order (e.g. a per-frame report of one video)."""
    get_profile(profile)
    return _decide(scores, get_layout(layout).num_expr_classes, None, au_threshold)
