"""Model outputs → per-task scores → decisions, one way for every caller.

A model's raw output is B×K columns in its ``OutputLayout`` (tasks.py), or a tuple whose first element
is that (MTMT's self-cure model also returns its attention weights). From it:

1. ``split_outputs``: {'expr': B×C class logits, 'va': B×2 raw, 'au': B×n_au logits}, the layout's blocks;
2. ``output_scores``: continuous per-frame scores, the contract with the writers and post-processing
   (smoothing, flip averaging): {'va': B×2 in [−1, 1], 'expr_prob': B×C, 'au_prob': B×n_au, 'logits': B×K};
3. ``decide`` (for an edition: its classes and AU columns) or ``decide_layout`` (the layout's own classes
   and AUs, e.g. a per-frame CSV): {'VA', 'EXPR' class codes, 'AU' 0/1}.

A ``DecisionProfile`` says how 2 and 3 are done (plain data, ``PROFILES``):

- ``default`` (ours): VA by the layout's activation (tanh, or the raw value clipped to [−1, 1]), EXPR = argmax
  over the classes served, AU = 1 where its probability (sigmoid) ≥ the threshold (0.5 unless a flag says
  otherwise);
- ``tsav2020`` (TSAV's test script): VA = the raw outputs clipped to [−1, 1], no tanh; AU score = the raw
  output clipped to [0, 1] and AU = round(score), i.e. 1 only where raw > 0.5; EXPR = argmax;
- ``mtmt2021`` (MTMT's test script): VA = tanh, AU = round(sigmoid), i.e. 1 only where sigmoid > 0.5; EXPR =
  argmax over the 7 classes served (MTMT's argmax over 8 logits can pick the unused slot 7, which no
  submission may contain: README says where this differs);
- ``emma`` (EMMA, ABAW4): VA = the raw outputs clipped to [−1, 1] (a linear head, no tanh); EXPR = argmax over
  the 8 classes; AU = 1 where sigmoid(logit) ≥ the threshold (0.5 unless a flag says otherwise);
- ``emma_thresholds``: as ``emma``, but AU = 1 where the raw logit ≥ EMMA's own per-AU threshold
  (``EMMA_AU_LOGIT_THRESHOLDS``, from its validation code), i.e. sigmoid ≥ sigmoid(threshold); these replace
  the threshold flag.

Training validation, test_val_aff2.py, the --video report and the bench all call these functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tasks import AU_NAMES_12, Edition, OutputLayout, get_layout, layout_au_columns, registered


@dataclass(frozen=True)
class DecisionProfile:
    """How raw outputs become scores and decisions (see the module docstring).

    ``va``: 'layout' (the layout's activation), 'tanh' or 'clamp' (raw, clipped to [−1, 1]); ``au_score``:
    'sigmoid' or 'clamp01' (raw clipped to [0, 1]); ``au_strict``: AU = 1 where score > threshold (a round())
    instead of ≥; ``au_logit_thresholds``: (AU name, raw-logit threshold) pairs that replace the threshold
    argument for those AUs (compared as sigmoid(logit) ≥ sigmoid(threshold), so they hold for averaged
    probabilities too).
    """

    name: str
    description: str
    va: str = "layout"
    au_score: str = "sigmoid"
    au_strict: bool = False
    au_logit_thresholds: tuple[tuple[str, float], ...] = ()


# EMMA's validation code binarises the AU logits at these values (AU1, 2, 4, 6, 7, 10, 12, 15, 23, 24, 25, 26).
EMMA_AU_LOGIT_THRESHOLDS = tuple(zip(AU_NAMES_12, (0.8, 0.8, 0.7, 0.5, 0.5, 0.5, 0.6, 0.8, 0.8, 0.8, 0.3, 0.7),
                                     strict=True))

PROFILES = {
    "default": DecisionProfile("default", "ours: VA = the layout's activation (tanh, or raw clipped to [-1, 1]); "
                               "EXPR = argmax over the classes served; AU = 1 where sigmoid(logit) >= the threshold"),
    "tsav2020": DecisionProfile("tsav2020", "TSAV 2020: VA = raw clipped to [-1, 1] (no tanh); EXPR = argmax; "
                                "AU = round(clip(raw, 0, 1)), 1 only where raw > 0.5", va="clamp", au_score="clamp01",
                                au_strict=True),
    "mtmt2021": DecisionProfile("mtmt2021", "MTMT 2021: VA = tanh; EXPR = argmax over the 7 classes served; "
                                "AU = round(sigmoid), 1 only where sigmoid > 0.5", va="tanh", au_strict=True),
    "emma": DecisionProfile("emma", "EMMA (ABAW4): VA = raw clipped to [-1, 1] (no tanh); EXPR = argmax over 8; "
                            "AU = 1 where sigmoid(logit) >= the threshold", va="clamp"),
    "emma_thresholds": DecisionProfile("emma_thresholds", "EMMA with its validation code's per-AU thresholds on the "
                                       "raw AU logits (0.3-0.8) instead of the threshold flag", va="clamp",
                                       au_logit_thresholds=EMMA_AU_LOGIT_THRESHOLDS),
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


def va_output(va_raw: Tensor, layout: str | OutputLayout, clip: bool = True, activation: str = "layout") -> Tensor:
    """VA values from the raw B×2 VA block, by the layout's VA activation (or ``activation``: 'tanh', 'clamp'):
    tanh, or the raw values, clipped to [−1, 1] unless ``clip`` is False (losses: a clip would stop the
    gradient outside the range)."""
    if activation == "layout":
        activation = "tanh" if get_layout(layout).va_activation == "tanh" else "clamp"
    if activation == "tanh":
        return torch.tanh(va_raw)
    return va_raw.clamp(-1, 1) if clip else va_raw


def output_scores(out: Tensor | tuple, layout: str | OutputLayout,
                  profile: str | DecisionProfile = "default") -> dict[str, Tensor]:
    """Per-frame scores of a batch of outputs (float32, same device): the blocks the layout has, plus 'logits'.

    'au_prob' is the profile's AU score: sigmoid(logit), or (tsav2020) the raw output clipped to [0, 1].
    """
    profile = get_profile(profile)
    layout = get_layout(layout)
    parts = {k: v.float() for k, v in split_outputs(out, layout).items()}
    scores = {}
    if "va" in parts:
        scores["va"] = va_output(parts["va"], layout, activation=profile.va)
    if "expr" in parts:
        scores["expr_prob"] = parts["expr"].softmax(dim=1)
    if "au" in parts:
        scores["au_prob"] = parts["au"].clamp(0, 1) if profile.au_score == "clamp01" else torch.sigmoid(parts["au"])
    scores["logits"] = (out[0] if isinstance(out, tuple) else out).float()
    return scores


def au_thresholds(profile: str | DecisionProfile, au_names: tuple[str, ...], au_threshold: float = 0.5
                  ) -> float | np.ndarray:
    """The AU threshold on the score (probability) of each of ``au_names``: the profile's per-AU logit thresholds
    as sigmoid(threshold) where it has them (an array, one per AU), else ``au_threshold``."""
    own = dict(get_profile(profile).au_logit_thresholds)
    if not own:
        return au_threshold
    return np.array([1 / (1 + np.exp(-own[a])) if a in own else au_threshold for a in au_names])


def _decide(scores: dict[str, np.ndarray], expr_cols: list[int], au_cols: list[int] | None,
            au_threshold: float | np.ndarray, strict: bool) -> dict[str, np.ndarray]:
    """``expr_cols[k]``: the layout column of output class k (−1: the layout lacks it, never chosen)."""
    out = {}
    if "va" in scores:
        out["VA"] = np.clip(scores["va"], -1, 1)
    if "expr_prob" in scores:
        cols = np.array(expr_cols)
        prob = scores["expr_prob"][:, np.maximum(cols, 0)]
        out["EXPR"] = np.where(cols >= 0, prob, -np.inf).argmax(1)
    if "au_prob" in scores:
        au = scores["au_prob"] if au_cols is None else scores["au_prob"][:, au_cols]
        out["AU"] = ((au > au_threshold) if strict else (au >= au_threshold)).astype(np.int64)
    return out


def decide(scores: dict[str, np.ndarray], layout: str | OutputLayout, edition: Edition,
           profile: str | DecisionProfile = "default", au_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Scores → {'VA': (n, 2), 'EXPR': (n,) the edition's class codes, 'AU': (n, k) 0/1 in the edition's AU order}.

    EXPR is an argmax over the classes both the layout and the edition have, matched by name (an 8-class model
    under the six classes of the lsd edition: the best of Anger ... Surprise); raises MissingAUError when the
    layout lacks an AU the edition scores.
    """
    profile = get_profile(profile)
    layout = get_layout(layout)
    au_cols = layout_au_columns(layout, edition) if "au_prob" in scores else None
    expr_cols = [layout.expr_names.index(c) if c in layout.expr_names else -1 for c in edition.expr_names]
    return _decide(scores, expr_cols, au_cols,
                   au_thresholds(profile, edition.au_names, au_threshold), profile.au_strict)


def decide_layout(scores: dict[str, np.ndarray], layout: str | OutputLayout,
                  profile: str | DecisionProfile = "default", au_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Scores → decisions in the layout's own classes and AU order (e.g. a per-frame report of one video)."""
    layout, profile = get_layout(layout), get_profile(profile)
    return _decide(scores, list(range(layout.num_expr_classes)), None,
                   au_thresholds(profile, layout.au_names, au_threshold),
                   profile.au_strict)
