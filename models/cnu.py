"""CNU_ADL (ABAW 2020, issue 16): a face network shared by the frames of a causal block, the block's
temporal statistics and multi-task heads.

- ``face``: torchvision ResNet-50 (``trunk``, fc removed) → ``features`` Linear(2048, 2048) + ReLU →
  ``predictions`` Linear(2048, 7), whose softmax is in EmotiW's class order (Angry, Disgust, Fear, Happy,
  Neutral, Sad, Surprise), as the published face network was fine-tuned. The layers before conv4_x
  (torchvision ``conv1``, ``bn1``, ``layer1``, ``layer2``) are frozen unless ``freeze_below_layer3=False``;
  their BatchNorms then stay in eval mode too (frozen statistics, as Keras runs non-trainable BN layers).
- per frame of the block: softmax → Aff-Wild2 order (``models.cnu_stats.to_affwild2``); the block's
  [max_t, min_t, mean_t] (21) + the current (last) frame's ``features`` (2048) + its softmax (7) = 2,076
  head inputs (+ 2,048 from an optional 2-layer BiLSTM-1024 over the block's softmax, ``lstm=True``; PyTorch's
  LSTM has no recurrent dropout, so only the dropout between the two layers is kept).
- heads, dropout 0.1 before every Linear: EXPR 1024-ReLU-7 (logits, trained on Aff-Wild2 labels directly);
  arousal and valence each 1024-ReLU-1024-ReLU-1; aux 5 (tanh).

Outputs: ``forward`` returns the tuple (B×K outputs in the layout's order, B×5 aux or None), like MTMT's
(outputs, alpha): ``utils.outputs.split_outputs`` and ``output_scores`` read element 0, ``CNULoss`` both.
The VA columns are the pre-tanh values of the arousal/valence heads: the layout's "tanh" activation then
gives the published tanh output (a layout with "identity" VA gets tanh applied here). Valence comes first in
our layouts; the published arousal-first order survives only in the aux head and its targets.

Weights (``load_face_net``): a torchvision ``resnet50`` state dict (``fc`` dropped); a VGGFace2 ResNet-50 in the
Caffe naming of the common PyTorch conversions (``conv1_7x7_s2``, ``conv{s}_{b}_1x1_reduce|3x3|1x1_increase|
1x1_proj`` and their ``_bn``; ``classifier`` dropped), renamed to torchvision's keys (``caffe_key``); or a
whole face network (``trunk.``/``features.``/``predictions.``, optionally under ``face.``: e.g. from a
CNU checkpoint, the second training stage). That Caffe network downsamples in the 1×1 reduce convolution
and pools with ceil mode and no padding; ``caffe_strides=True`` builds the trunk that way (torchvision puts
the stride in the 3×3 convolution). The VGGFace2 → AffectNet → RAF-DB fine-tuned file of the paper is Keras
and is not offered.

Training stages (``stage``; CNU_ADL trained the face network first, then the block model on it):
``'joint'`` (default): everything end to end (the layers before conv4_x frozen as above); ``'face'``: the face
network alone on the current frame, its ``predictions`` trained as the EXPR output (an EXPR-only 7-class layout,
e.g. ``expr7``; no block heads); ``'block'``: the whole face network frozen (e.g. loaded from a 'face' run by
``load_face_net``), only the block heads learn. ``history_grad=False`` runs the T − 1 history frames without
gradient (the statistics are constants; memory and time of the backward pass for the current frame only).

Input (``frame_block``, T = 16 by default): ``prepare`` turns uint8 B×T×3×S×S RGB into VGGFace2's input:
BGR, 0–255, minus the BGR means (91.4953, 103.8827, 131.0912), no std; colour jitter factors the batch
carries are applied first (one set per sample, B×4, or per frame, B×T×4).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet18, resnet50

from models import cnu_stats
from models.base import AffectModel
from models.cnu_stats import AUX_DIM, NUM_CLASSES, aux_targets, block_statistics, cnu_features, to_affwild2
from models.losses import _zero_like_graph, ccc_loss, entry_mask, masked_cross_entropy, va_valid_mask
from models.prepare import jitter_rgb
from tasks import EXPR_NAMES_7, OutputLayout, get_layout
from utils.checkpoint import check_keys, read_state_dict
from utils.inputs import JITTER, PIXELS, TEACHER_JITTER, InputSpec
from utils.outputs import split_outputs, va_output

BLOCK_LEN = 16
DROPOUT = 0.1
VGGFACE2_MEAN_BGR = (91.4953, 103.8827, 131.0912)
LSTM_HIDDEN = 1024
FROZEN_PARTS = ("conv1", "bn1", "layer1", "layer2")  # torchvision names of the layers before conv4_x
DEFAULT_LOSS_WEIGHTS = {"expr": 1.0, "va": 1.0, "aux": 1.0}  # the published weights are unknown
STAGES = ("joint", "face", "block")


@dataclass(frozen=True)
class Variant:
    """Face network and head widths of a model size."""

    trunk: Callable[..., nn.Module]
    trunk_dim: int
    features: int
    head: int


# base: the published sizes. small: ours, a ResNet-18 face network and narrower heads for demos and CPU tests.
VARIANTS = {"base": Variant(resnet50, 2048, 2048, 1024), "small": Variant(resnet18, 512, 512, 256)}


def mlp(width: int, hidden: tuple[int, ...], out: int, dropout: float) -> nn.Sequential:
    """Dropout → Linear → ReLU per hidden layer, then Dropout → Linear(out), no output activation."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Dropout(dropout), nn.Linear(width, h), nn.ReLU(inplace=True)]
        width = h
    return nn.Sequential(*layers, nn.Dropout(dropout), nn.Linear(width, out))


class FaceNet(nn.Module):
    """Trunk → ``features`` (Linear + ReLU) → ``predictions`` (EmotiW-order logits)."""

    def __init__(self, variant: Variant, caffe_strides: bool = False) -> None:
        super().__init__()
        self.trunk = variant.trunk(weights=None)
        self.trunk.fc = nn.Identity()
        if caffe_strides:
            use_caffe_strides(self.trunk)
        self.features = nn.Sequential(nn.Linear(variant.trunk_dim, variant.features), nn.ReLU(inplace=True))
        self.predictions = nn.Linear(variant.features, NUM_CLASSES)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        feats = self.features(self.trunk(x))
        return feats, self.predictions(feats)


def use_caffe_strides(trunk: nn.Module) -> None:
    """A torchvision ResNet-50 → the Caffe geometry of VGGFace2's: stride 2 in the first 1×1 convolution of
    layer2–4 (not the 3×3), max-pool without padding in ceil mode (the same 56 px grid at 224 px)."""
    if not hasattr(trunk.layer1[0], "conv3"):
        raise ValueError("caffe_strides applies to a bottleneck ResNet (ResNet-50), not a basic-block one")
    for layer in (trunk.layer2, trunk.layer3, trunk.layer4):
        layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
    trunk.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)


class CNU(AffectModel):
    """CNU_ADL's STAT model; see the module docstring."""

    arch = "cnu"

    def __init__(self, layout: str | OutputLayout, dropout: float = DROPOUT, input_spec: InputSpec | None = None,
                 variant: str = "base", lstm: bool = False, freeze_below_layer3: bool = True,
                 history_grad: bool = True, face_lr_scale: float = 1.0, caffe_strides: bool = False,
                 stage: str = "joint") -> None:
        super().__init__()
        spec = input_spec or InputSpec.frame_block(BLOCK_LEN, size=224)
        if spec.kind != "frame_block":
            raise ValueError(f"{self.arch} takes a causal block of frames (input kind 'frame_block'), not {spec}")
        if variant not in VARIANTS:
            raise ValueError(f"{self.arch}: unknown size {variant!r} (known: {', '.join(VARIANTS)})")
        if stage not in STAGES:
            raise ValueError(f"{self.arch}: unknown training stage {stage!r} (known: {', '.join(STAGES)})")
        self.layout = get_layout(layout)
        check_layout(self.layout)
        if stage == "face" and self.layout.order != ("expr",):
            raise ValueError(f"{self.arch}: stage 'face' trains the face network's 7 expression outputs alone: use "
                             f"an EXPR-only layout (expr7), not {self.layout.name!r}")
        self.stage = stage
        self.input_spec = spec
        self.variant, self.lstm, self.caffe_strides = variant, lstm, caffe_strides
        self.freeze_below_layer3, self.history_grad = freeze_below_layer3, history_grad
        self.face_lr_scale = face_lr_scale
        self._channels_last = False
        v = VARIANTS[variant]
        self.face = FaceNet(v, caffe_strides)
        if freeze_below_layer3:
            for name in FROZEN_PARTS:
                getattr(self.face.trunk, name).requires_grad_(False)
        if stage == "block":
            self.face.requires_grad_(False)
        if stage == "face":  # no block heads: the face network's own predictions are the output
            self.head_width = 0
            self.train()
            return
        width = 3 * NUM_CLASSES + v.features + NUM_CLASSES
        if lstm:
            self.temporal = nn.LSTM(NUM_CLASSES, LSTM_HIDDEN, num_layers=2, batch_first=True, bidirectional=True,
                                    dropout=dropout)
            width += 2 * LSTM_HIDDEN
        self.head_width = width
        if self.layout.has("expr"):
            self.expr_head = mlp(width, (v.head,), NUM_CLASSES, dropout)
        if self.layout.has("va"):
            self.arousal_head = mlp(width, (v.head, v.head), 1, dropout)
            self.valence_head = mlp(width, (v.head, v.head), 1, dropout)
            self.aux_head = mlp(width, (), AUX_DIM, dropout)
        self.train()

    # --- modes and inputs ---------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> CNU:
        super().train(mode)
        if mode and self.stage == "block":  # a frozen face network keeps its BatchNorm statistics too
            self.face.eval()
        elif mode and self.freeze_below_layer3:
            for name in FROZEN_PARTS:
                getattr(self.face.trunk, name).eval()
        return self

    def prepare(self, raw: Mapping[str, Tensor], device: torch.device, view: str = "student",
                channels_last: bool = False) -> dict[str, Tensor]:
        """uint8 B×T×3×S×S RGB → {'frames': B×T×3×S×S float32}, VGGFace2's input (module docstring)."""
        pixels = raw[PIXELS]
        if pixels.dim() != 5 or pixels.shape[2] != 3:
            raise ValueError(f"{self.arch}: expected B×T×3×S×S frames, got {tuple(pixels.shape)}")
        frames = pixels.to(device, non_blocking=True).float()
        factors = raw.get(TEACHER_JITTER if view == "teacher" else JITTER)
        if factors is not None:
            frames = jitter_block(frames / 255, factors) * 255
        return {"frames": vggface2_input(frames)}

    def to_channels_last(self) -> CNU:
        self.face.to(memory_format=torch.channels_last)
        self._channels_last = True
        return self

    # --- network --------------------------------------------------------------------------------------------
    def frame_outputs(self, frames: Tensor) -> tuple[Tensor, Tensor]:
        """Prepared frames N×3×S×S → (``features`` N×F, softmax N×7 in Aff-Wild2 order): one face-network pass
        per frame, what cached inference keeps for ``block_head``."""
        if self._channels_last:
            frames = frames.contiguous(memory_format=torch.channels_last)
        feats, logits = self.face(frames)
        return feats, to_affwild2(logits.float().softmax(dim=-1))

    def forward(self, inputs: Mapping[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """{'frames': B×T×3×S×S} (the current frame last) → (B×K outputs, B×5 aux or None)."""
        frames = inputs["frames"]
        b, t = frames.shape[:2]
        if self.stage == "face":  # the current frame's face-network logits, in Aff-Wild2's class order
            current = frames[:, -1]
            if self._channels_last:
                current = current.contiguous(memory_format=torch.channels_last)
            return to_affwild2(self.face(current)[1]), None
        if self.history_grad or t == 1:
            feats, probs = self.frame_outputs(frames.flatten(0, 1))
            feats, probs = feats.unflatten(0, (b, t))[:, -1], probs.unflatten(0, (b, t))
        else:  # the T − 1 history frames only as constants: gradient (and its memory) through the current frame
            with torch.no_grad():
                _, history = self.frame_outputs(frames[:, :-1].flatten(0, 1))
            feats, current = self.frame_outputs(frames[:, -1])
            probs = torch.cat([history.unflatten(0, (b, t - 1)), current[:, None]], dim=1)
        return self._heads(block_statistics(probs), feats, probs[:, -1], probs)

    def block_head(self, frame_feats: Tensor, frame_probs: Tensor, blocks: Tensor) -> tuple[Tensor, Tensor | None]:
        """The heads of m blocks from per-frame outputs computed once (``frame_outputs`` of n frames):
        ``blocks`` [m, T] row indices, the current frame last → what ``forward`` gives on those blocks."""
        if frame_feats.shape[0] != frame_probs.shape[0]:
            raise ValueError(f"{frame_feats.shape[0]} feature rows but {frame_probs.shape[0]} probability rows")
        if self.stage == "face":  # log-probabilities: the same softmax as the face network's logits
            return frame_probs[blocks[:, -1].long()].clamp_min(1e-30).log(), None
        stats = cnu_stats.sliding_statistics(frame_probs, blocks)
        current = blocks[:, -1].long()
        sequence = frame_probs[blocks.long()] if self.lstm else None
        return self._heads(stats, frame_feats[current], frame_probs[current], sequence)

    def _heads(self, stats: Tensor, feats: Tensor, probs: Tensor, sequence: Tensor | None
               ) -> tuple[Tensor, Tensor | None]:
        x = cnu_features(stats, feats.to(stats.dtype), probs)
        if self.lstm:
            _, (h, _) = self.temporal(sequence.to(x.dtype))
            x = torch.cat([x, h[-2], h[-1]], dim=1)  # the last layer's forward and backward final states
        blocks, aux = {}, None
        if self.layout.has("expr"):
            blocks["expr"] = self.expr_head(x)
        if self.layout.has("va"):
            va = torch.cat([self.valence_head(x), self.arousal_head(x)], dim=1)  # pre-tanh, valence first
            blocks["va"] = va if self.layout.va_activation == "tanh" else torch.tanh(va)
            aux = torch.tanh(self.aux_head(x))
        return torch.cat([blocks[b] for b in self.layout.order], dim=1), aux

    # --- optimiser and checkpoints --------------------------------------------------------------------------
    def param_groups(self, base_lr: float) -> list[dict]:
        """The face network (lr × ``face_lr_scale``; frozen layers are in no group) and the rest (heads, LSTM)."""
        face = [p for p in self.face.parameters() if p.requires_grad]
        face_ids = {id(p) for p in self.face.parameters()}
        heads = [p for p in self.parameters() if p.requires_grad and id(p) not in face_ids]
        return [{"name": "face", "params": face, "lr_scale": self.face_lr_scale},
                {"name": "heads", "params": heads}]

    def settings(self) -> dict:
        return {**super().settings(), "options": {"variant": self.variant, "lstm": self.lstm,
                                                  "caffe_strides": self.caffe_strides, "stage": self.stage}}

    def make_loss(self, weights: Mapping[str, float] | None = None) -> CNULoss:
        """The training loss this model declares (``models.base``): CNU_ADL's, ``CNULoss``."""
        return CNULoss(self.layout, weights)


def check_layout(layout: OutputLayout) -> None:
    """CNU outputs the 7 Aff-Wild2 classes and/or VA; ValueError for any other layout."""
    if not set(layout.order) <= {"expr", "va"}:
        raise ValueError(f"cnu: layout {layout.name!r} has blocks {layout.order}; cnu outputs EXPR and/or VA only")
    if layout.has("expr") and (layout.expr_slots != NUM_CLASSES or layout.expr_names != EXPR_NAMES_7):
        raise ValueError(f"cnu: layout {layout.name!r} must have the 7 Aff-Wild2 classes in 7 EXPR slots")


def vggface2_input(frames: Tensor) -> Tensor:
    """RGB floats in 0–255, channels on axis −3 → BGR minus VGGFace2's BGR means, no std."""
    mean = torch.tensor(VGGFACE2_MEAN_BGR, device=frames.device, dtype=frames.dtype)[:, None, None]
    return frames.flip(-3) - mean


def jitter_block(frames: Tensor, factors: Tensor) -> Tensor:
    """B×T×3×S×S floats in [0, 1] with colour-jitter factors per sample (B×k, every frame alike) or per frame
    (B×T×k); k = 4 (brightness, contrast, saturation, hue) or 2 (brightness, contrast)."""
    if factors.dim() == 2:
        return jitter_rgb(frames, factors)
    b, t = frames.shape[:2]
    if factors.shape[:2] != (b, t):
        raise ValueError(f"jitter factors {tuple(factors.shape)} do not fit a B×T = {b}×{t} block")
    return jitter_rgb(frames.flatten(0, 1)[:, None], factors.flatten(0, 1))[:, 0].unflatten(0, (b, t))


# ---------------------------------------------------------------------------------------------------
# Loss


def cnu_loss(outputs: tuple[Tensor, Tensor | None], targets: Mapping[str, Tensor], layout: OutputLayout,
             valid: Mapping[str, Tensor] | None = None, weights: Mapping[str, float] | None = None
             ) -> tuple[Tensor, dict[str, Tensor]]:
    """(total, {task: unweighted loss}): EXPR cross-entropy, Σ over valence and arousal of 1 − CCC on the
    tanh outputs, and the aux head's MSE to ``aux_targets`` on rows with both VA labels valid. Masked like
    ``models.losses.MultiTaskLoss``; a task missing from ``targets`` or the layout adds nothing."""
    weights = {**DEFAULT_LOSS_WEIGHTS, **(weights or {})}
    parts, valid = split_outputs(outputs, layout), dict(valid or {})
    losses = {}
    if "expr" in targets and "expr" in parts:
        losses["expr"] = masked_cross_entropy(parts["expr"], targets["expr"], valid.get("expr"))
    if "va" in targets and "va" in parts:
        va = targets["va"]
        losses["va"] = ccc_loss(va_output(parts["va"].float(), layout, clip=False), va, valid.get("va"))
        aux = outputs[1] if isinstance(outputs, tuple) else None
        if aux is not None:
            rows = entry_mask(valid.get("va"), va, va, va_valid_mask).all(dim=1)
            if rows.any():
                target = aux_targets(va[rows, 1].float(), va[rows, 0].float())  # arousal first
                losses["aux"] = F.mse_loss(aux[rows].float(), target)
            else:
                losses["aux"] = _zero_like_graph(aux)
    if not losses:
        raise ValueError("no targets of the layout's tasks given (expected 'expr' and/or 'va')")
    return sum(weights[k] * v for k, v in losses.items()), losses


class CNULoss(nn.Module):
    """``cnu_loss`` with ``models.losses.MultiTaskLoss``'s call: criterion(outputs, targets, valid) →
    (total, parts); ``weights`` for 'expr', 'va', 'aux' (default 1 each: CNU_ADL did not publish theirs)."""

    log_fields = ("loss_aux",)  # the log.csv column of the part MultiTaskLoss does not have

    def __init__(self, layout: str | OutputLayout, weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.layout = get_layout(layout)
        unknown = set(weights or {}) - set(DEFAULT_LOSS_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown cnu loss weights {sorted(unknown)} (known: {', '.join(DEFAULT_LOSS_WEIGHTS)})")
        self.weights = {**DEFAULT_LOSS_WEIGHTS, **(weights or {})}

    def forward(self, outputs: tuple[Tensor, Tensor | None], targets: Mapping[str, Tensor],
                valid: Mapping[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        return cnu_loss(outputs, targets, self.layout, valid, self.weights)


# ---------------------------------------------------------------------------------------------------
# Weights and checkpoints

_CAFFE_BLOCK = re.compile(r"^conv(\d)_(\d+)_(1x1_reduce|3x3|1x1_increase|1x1_proj)(_bn)?\.(.+)$")
_CAFFE_CONV = {"1x1_reduce": ("conv1", "bn1"), "3x3": ("conv2", "bn2"), "1x1_increase": ("conv3", "bn3"),
               "1x1_proj": ("downsample.0", "downsample.1")}


def caffe_key(key: str) -> str | None:
    """A VGGFace2 ResNet-50 key in Caffe naming → torchvision's ('conv3_1_1x1_proj_bn.weight' →
    'layer2.0.downsample.1.weight'); None for a key that is no trunk weight (e.g. 'classifier.*')."""
    stem = re.match(r"^conv1_7x7_s2(_bn)?\.(.+)$", key)
    if stem:
        return f"{'bn1' if stem.group(1) else 'conv1'}.{stem.group(2)}"
    m = _CAFFE_BLOCK.match(key)
    if not m:
        return None
    stage, block, conv, bn, rest = m.groups()
    return f"layer{int(stage) - 1}.{int(block) - 1}.{_CAFFE_CONV[conv][1 if bn else 0]}.{rest}"


def face_state(state: Mapping[str, Tensor]) -> tuple[str, dict[str, Tensor]]:
    """(format, keys of ``FaceNet``) of a face-network file: 'face' (a FaceNet or a CNU model's ``face.``),
    'caffe' (VGGFace2 Caffe naming) or 'torchvision' (a resnet state dict); classifiers dropped."""
    if any(k.startswith("face.trunk.") for k in state):
        return "face", {k[len("face."):]: v for k, v in state.items() if k.startswith("face.")}
    if any(k.startswith("trunk.") for k in state):
        return "face", dict(state)
    if "conv1_7x7_s2.weight" in state:
        out = {}
        for k, v in state.items():
            new = caffe_key(k)
            if new is None and not k.startswith("classifier."):
                out[f"unknown.{k}"] = v  # reported as unexpected
            elif new is not None:
                out[f"trunk.{new}"] = v
        return "caffe", out
    return "torchvision", {f"trunk.{k}": v for k, v in state.items() if not k.startswith("fc.")}


@torch.no_grad()
def load_face_net(model: CNU, path: str | Path) -> str:
    """A face-network file into ``model.face`` (module docstring: torchvision, VGGFace2 Caffe naming, or a
    whole face network) → its format. Strict: every weight must be there with its shape (a trunk file leaves
    ``features``/``predictions`` fresh; BatchNorm's ``num_batches_tracked`` may be absent), or CheckpointError."""
    kind, state = face_state(read_state_dict(path))
    expected = model.face.state_dict()
    if kind != "face":
        expected = {k: v for k, v in expected.items() if k.startswith("trunk.")}
    tracked = {k for k in expected if k.endswith("num_batches_tracked")}
    state = {**{k: expected[k] for k in tracked if k not in state}, **state}
    check_keys(expected, state, path, f"the cnu face network ({model.variant}) from a {kind} state dict")
    model.face.load_state_dict(state, strict=kind == "face")
    return kind


def detect_state(state: Mapping[str, Tensor]) -> bool:
    return "face.predictions.weight" in state and "face.trunk.conv1.weight" in state


def options_of(state: Mapping[str, Tensor]) -> dict:
    """The constructor options a CNU state dict implies: the size (bottleneck trunk or not), the LSTM, and the
    'face' stage (no block heads).
    ``caffe_strides`` leaves no trace in the weights: it comes from the checkpoint's stored options."""
    heads = any(k.startswith(("expr_head.", "valence_head.")) for k in state)
    return {"variant": "base" if "face.trunk.layer1.0.conv3.weight" in state else "small",
            "lstm": any(k.startswith("temporal.") for k in state), **({} if heads else {"stage": "face"})}


def layout_name(state: Mapping[str, Tensor]) -> str:
    """The registered layout of a CNU state dict without a stored one: 'cnu' with VA heads, else 'expr7'."""
    return "cnu" if any(k.startswith("valence_head.") for k in state) else "expr7"
