"""CNU_ADL's temporal-statistics features (ABAW 2020, issue 16) as pure torch functions.

The published system (issue 16, "Features"): *[max_t, min_t, mean_t of the block's 7-class softmax (21),
the current frame's 2048-d features, its softmax (7)] = 2,076*, and an auxiliary 5-d head regressed on
*[a, v, (a+v)/2, |a − m|, |v − m|], m = (a+v)/2 (arousal first)*. The face network was fine-tuned in
EmotiW's class order (Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise); Aff-Wild2's order is
``tasks.EXPR_NAMES_7``.

Inference runs the face network once per frame and ``sliding_statistics`` gathers each block's rows from
those cached outputs, which equals evaluating ``block_statistics`` on every block separately.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tasks import EXPR_NAMES_7

EMOTIW_NAMES = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")
# EmotiW name → the same expression's Aff-Wild2 name (tasks.EXPR_NAMES_7 spelling).
_AFFWILD2_NAME = {"Angry": "Anger", "Disgust": "Disgust", "Fear": "Fear", "Happy": "Happiness",
                  "Neutral": "Neutral", "Sad": "Sadness", "Surprise": "Surprise"}

# Gather permutations on the class axis (built from the names, so no hand-typed indices):
# EMOTIW_TO_AFFWILD2[j] = the EmotiW index of Aff-Wild2 class j, i.e. p_affwild2 = p_emotiw[..., EMOTIW_TO_AFFWILD2]
# → (4, 0, 1, 2, 3, 5, 6). AFFWILD2_TO_EMOTIW is its inverse → (1, 2, 3, 4, 0, 5, 6).
# For class ids (not probabilities) the roles swap: an Aff-Wild2 label y is EmotiW label EMOTIW_TO_AFFWILD2[y].
EMOTIW_TO_AFFWILD2 = tuple(EMOTIW_NAMES.index(next(e for e, a in _AFFWILD2_NAME.items() if a == name))
                           for name in EXPR_NAMES_7)
AFFWILD2_TO_EMOTIW = tuple(EXPR_NAMES_7.index(_AFFWILD2_NAME[name]) for name in EMOTIW_NAMES)

NUM_CLASSES = 7
NUM_STATS = 3 * NUM_CLASSES  # max, min, mean per class
AUX_DIM = 5


def _permute_classes(probs: Tensor, perm: tuple[int, ...]) -> Tensor:
    if probs.shape[-1] != len(perm):
        raise ValueError(f"expected {len(perm)} classes on the last axis, got shape {tuple(probs.shape)}")
    return probs[..., torch.tensor(perm, device=probs.device)]


def to_affwild2(probs_emotiw: Tensor) -> Tensor:
    """Per-class values (probabilities, logits) in EmotiW order → Aff-Wild2's 7-class order, last axis."""
    return _permute_classes(probs_emotiw, EMOTIW_TO_AFFWILD2)


def to_emotiw(probs_affwild2: Tensor) -> Tensor:
    """Per-class values in Aff-Wild2's 7-class order → EmotiW order, last axis (inverse of ``to_affwild2``)."""
    return _permute_classes(probs_affwild2, AFFWILD2_TO_EMOTIW)


def block_statistics(probs: Tensor) -> Tensor:
    """[..., T, C] per-frame probabilities of a block → [..., 3C]: [max_t, min_t, mean_t] (21 for C = 7).

    The published feature order: the element-wise maximum over the block's frames, then the minimum, then the
    mean, each in class order.
    """
    if probs.dim() < 2 or probs.shape[-2] < 1:
        raise ValueError(f"expected [..., T, C] with T ≥ 1, got shape {tuple(probs.shape)}")
    return torch.cat([probs.amax(dim=-2), probs.amin(dim=-2), probs.mean(dim=-2)], dim=-1)


def sliding_statistics(frame_probs: Tensor, blocks: Tensor) -> Tensor:
    """Statistics of every block from per-frame outputs computed once: [n, C] and [m, T] indices → [m, 3C].

    ``blocks`` holds row indices into ``frame_probs`` (``data.blocks.block_indices`` for one track); one
    gather and one reduction, no per-block loop, so each frame goes through the network once, not T times.
    """
    if frame_probs.dim() != 2 or blocks.dim() != 2:
        raise ValueError(f"expected frame_probs [n, C] and blocks [m, T], got {tuple(frame_probs.shape)} and "
                         f"{tuple(blocks.shape)}")
    if blocks.numel() and (int(blocks.min()) < 0 or int(blocks.max()) >= frame_probs.shape[0]):
        raise IndexError(f"block indices outside [0, {frame_probs.shape[0]})")
    return block_statistics(frame_probs[blocks.long()])  # [m, T, C] → [m, 3C]


def cnu_features(stats21: Tensor, feat2048: Tensor, probs7: Tensor) -> Tensor:
    """The head input [stats (21), the current frame's features (2048), its softmax (7)] → [..., 2076].

    The published order: block statistics first, then the ``features`` layer's output, then the current
    frame's softmax. The feature width is not checked (a small demo trunk has fewer than 2048).
    """
    if stats21.shape[-1] != 3 * probs7.shape[-1]:
        raise ValueError(f"statistics ({stats21.shape[-1]}) must be 3 × the classes ({probs7.shape[-1]})")
    if not stats21.shape[:-1] == feat2048.shape[:-1] == probs7.shape[:-1]:
        raise ValueError(f"leading shapes differ: {tuple(stats21.shape)}, {tuple(feat2048.shape)}, "
                         f"{tuple(probs7.shape)}")
    return torch.cat([stats21, feat2048, probs7], dim=-1)


def aux_targets(a: Tensor, v: Tensor) -> Tensor:
    """The auxiliary head's 5-d target [a, v, m, |a − m|, |v − m|], m = (a + v) / 2, arousal first: [...] → [..., 5]."""
    a, v = torch.broadcast_tensors(torch.as_tensor(a), torch.as_tensor(v))
    m = (a + v) / 2
    return torch.stack([a, v, m, (a - m).abs(), (v - m).abs()], dim=-1)
