"""TSAV two-stream audio-visual model (ABAW 2020) and its MTMT self-cure variant (ABAW 2021).

Both models take ``{'clip': B×4×T×H×W, 'audio_features': B×1×64×W}`` (RGB + mask clip, log-mel) and
keep the state-dict key names of the published checkpoints, so ``load_published`` loads those files
strictly. The meaning of the output columns is an ``OutputLayout`` (tasks.py), looked up by name in
``LAYOUTS``.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.video import r2plus1d_18
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, R2Plus1dStem, VideoResNet

from tasks import LAYOUTS, OutputLayout, get_layout, layout_for_num_outputs, layout_for_sizes

FEATURE_DIM = 512  # per stream; the heads see the 1024-d concat [audio, video]
CLIP_CHANNELS = 4  # RGB + mask


# ---------------------------------------------------------------------------------------------
# Outputs (the layouts themselves are data in tasks.py)


def split_outputs(out: Tensor | tuple, layout: str | OutputLayout) -> dict[str, Tensor]:
    """B×K outputs → {'expr': B×C class logits, 'va': B×2 raw, 'au': B×n_au logits}, the layout's blocks only.

    Unused EXPR slots are dropped. A (outputs, alpha) tuple from the self-cure model is accepted.
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


# ---------------------------------------------------------------------------------------------
# Backbones


def _kaiming_conv(conv: nn.Module) -> nn.Module:
    # Same init as the rest of the torchvision backbones (they init before we swap the conv in).
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class AudioModel(nn.Module):
    """ResNet-18 over a 1×64×W log-mel → 512-d."""

    def __init__(self) -> None:
        super().__init__()
        self.resnet = resnet18(weights=None)
        self.resnet.conv1 = _kaiming_conv(nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False))
        self.resnet.fc = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.resnet(x)


class ChannelSE(nn.Module):
    """Channel squeeze-excitation with the gate 0.5 + sigmoid, ≈ identity at init (small weights)."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels, bias=False),
            nn.Sigmoid(),
        )
        for m in (self.fc[0], self.fc[2]):
            nn.init.normal_(m.weight, 0.0, 0.01)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        gate = self.fc(x.mean(dim=(2, 3, 4))).reshape(b, c, 1, 1, 1)
        return x * (gate + 0.5)


class SEBasicBlock(BasicBlock):
    """R(2+1)D BasicBlock with a channel SE (``SELayerC``) after conv2, before the residual add."""

    SELayerC: ChannelSE  # name fixed by the published MTMT checkpoint; attached by _se_r2plus1d_18

    def forward(self, x: Tensor) -> Tensor:
        out = self.SELayerC(self.conv2(self.conv1(x)))
        residual = x if self.downsample is None else self.downsample(x)
        return self.relu(out + residual)


def _se_r2plus1d_18() -> VideoResNet:
    net = VideoResNet(SEBasicBlock, [Conv2Plus1D] * 4, [2, 2, 2, 2], R2Plus1dStem)
    # Attached after construction: torchvision's init loop assumes every Linear has a bias.
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
        for block in layer:
            block.SELayerC = ChannelSE(block.conv2[1].num_features)
    return net


class VideoModel(nn.Module):
    """R(2+1)D-18 (optionally with channel SE) over a 4×T×H×W clip → 512-d."""

    def __init__(self, squeeze_excitation: bool = False) -> None:
        super().__init__()
        self.r2plus1d = _se_r2plus1d_18() if squeeze_excitation else r2plus1d_18(weights=None)
        rgb_conv = self.r2plus1d.stem[0]
        self.r2plus1d.stem[0] = _kaiming_conv(nn.Conv3d(
            CLIP_CHANNELS, rgb_conv.out_channels, kernel_size=rgb_conv.kernel_size,
            stride=rgb_conv.stride, padding=rgb_conv.padding, bias=False))
        self.r2plus1d.fc = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.r2plus1d(x)


def _head(out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(2 * FEATURE_DIM, out_features))


# ---------------------------------------------------------------------------------------------
# The two models


class TwoStream(nn.Module):
    """Shared part: ``audio_model`` and ``video_model`` (set by subclasses) → fused 1024-d features."""

    audio_model: AudioModel
    video_model: VideoModel
    layout: OutputLayout | None

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        """B×1024 fused features, [audio, video]."""
        return torch.cat([self.audio_model(batch["audio_features"]), self.video_model(batch["clip"])], dim=1)


class TwoStreamAuralVisualModel(TwoStream):
    """TSAV: concat [audio 512, video 512] → Dropout → Linear(1024, K). Returns B×K, no activation.

    A given ``layout`` sets K; otherwise the layout is the registered one with K outputs (or None).
    """

    arch = "tsav"

    def __init__(self, num_outputs: int = 17, dropout: float = 0.0,
                 layout: str | OutputLayout | None = None) -> None:
        super().__init__()
        self.layout = get_layout(layout) if layout is not None else layout_for_num_outputs(num_outputs)
        if layout is not None:
            num_outputs = self.layout.num_outputs
        self.audio_model = AudioModel()
        self.video_model = VideoModel()
        self.fc = _head(num_outputs, dropout)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.fc(self.features(batch))


class TwoStreamAuralVisualSelfCure(TwoStream):
    """MTMT: SE-R(2+1)D-18 + audio ResNet-18, one head per task, EXPR logits × a sigmoid self-cure weight.

    Returns ``(B×K outputs in the layout's order, B×1 alpha_ex)``. ``alpha_au``/``alpha_va`` are kept
    only so the published checkpoint loads strictly; they are not used.
    """

    arch = "mtmt"

    def __init__(self, layout: str | OutputLayout = "mtmt", dropout: float = 0.0) -> None:
        super().__init__()
        self.layout = get_layout(layout)
        self.audio_model = AudioModel()
        self.video_model = VideoModel(squeeze_excitation=True)
        sizes = self.layout.sizes
        self.fc_au = _head(sizes["au"], dropout)
        self.fc_ex = _head(sizes["expr"], dropout)
        self.fc_va = _head(sizes["va"], dropout)
        self.alpha_au = self._alpha()
        self.alpha_ex = self._alpha()
        self.alpha_va = self._alpha()

    @staticmethod
    def _alpha() -> nn.Sequential:
        return nn.Sequential(nn.Linear(2 * FEATURE_DIM, 1), nn.Sigmoid())

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        f = self.features(batch)
        alpha_ex = self.alpha_ex(f)
        blocks = {"au": self.fc_au(f), "expr": self.fc_ex(f) * alpha_ex, "va": self.fc_va(f)}
        return torch.cat([blocks[task] for task in self.layout.order], dim=1), alpha_ex


MODEL_CLASSES = {"tsav": TwoStreamAuralVisualModel, "mtmt": TwoStreamAuralVisualSelfCure}


def build_model(name: str, layout: str | OutputLayout, dropout: float = 0.0,
                video_init: str | Path | None = None, audio_init: str | Path | None = None) -> nn.Module:
    """A fresh 'tsav' or 'mtmt' model for ``layout``; optional Kinetics/ImageNet init from local files."""
    if name not in MODEL_CLASSES:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(MODEL_CLASSES)})")
    model = MODEL_CLASSES[name](layout=layout, dropout=dropout)
    if video_init:
        init_video_from(model, video_init)
    if audio_init:
        init_audio_from(model, audio_init)
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DataParallel/DDP (``.module``) or torch.compile (``._orig_mod``)."""
    for attr in ("_orig_mod", "module", "_orig_mod"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            model = inner
    return model


def model_layout(model: nn.Module) -> OutputLayout:
    layout = getattr(unwrap_model(model), "layout", None)
    if layout is None:
        raise ValueError(f"{type(model).__name__} has no known output layout")
    return layout


def to_channels_last(model: nn.Module) -> nn.Module:
    """Video stream → channels_last_3d, audio stream → channels_last (in place); returns the model."""
    inner = unwrap_model(model)
    inner.video_model.to(memory_format=torch.channels_last_3d)
    inner.audio_model.to(memory_format=torch.channels_last)
    return model


# ---------------------------------------------------------------------------------------------
# Checkpoint files


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def read_checkpoint(path: str | Path, trust_pickle: bool = False):
    """The unpickled object of a checkpoint file; only plain tensor containers unless ``trust_pickle``.

    ``trust_pickle=True`` lets any pickle run: only for files you trust.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a valid file that stores other Python objects
            raise CheckpointError(f"{path}: holds objects other than tensors; pass trust_pickle=True "
                                  "only if you trust the file") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_unpickling_detail(e)})") from None
    except Exception as e:  # torch.load raises many types for truncated/corrupt files
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_first_line(e)})") from None


def _unpickling_detail(e: BaseException) -> str:
    # torch wraps the real cause in a long multi-line advice text; keep only the cause.
    text = str(e).split("WeightsUnpickler error:")[-1].strip().splitlines()
    return f"unpickling failed: {text[0].strip() if text else type(e).__name__}"


def read_state_dict(path: str | Path, trust_pickle: bool = False) -> dict[str, Tensor]:
    """Tensors of a checkpoint file: a raw state dict or one under 'state_dict'/'model', without 'module.'."""
    return state_dict_of(read_checkpoint(path, trust_pickle), path)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def state_dict_of(obj, path: str | Path = "checkpoint") -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint object, 'module.' prefixes removed."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: no state dict of tensors found (raw, or under 'state_dict'/'model')")
    return {_strip_module_prefix(k): v for k, v in obj.items()}


def _strip_module_prefix(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


def detect_arch(state: Mapping[str, Tensor]) -> str | None:
    """'mtmt' (SE video stream, per-task heads), 'tsav' (single fc head) or None."""
    if "fc_ex.1.weight" in state or any(".SELayerC." in k for k in state):
        return "mtmt"
    if "fc.1.weight" in state:
        return "tsav"
    return None


def _head_sizes(arch: str, state: Mapping[str, Tensor], path: Path) -> dict[str, int] | int:
    try:
        if arch == "tsav":
            return state["fc.1.weight"].shape[0]
        return {"au": state["fc_au.1.weight"].shape[0], "expr": state["fc_ex.1.weight"].shape[0],
                "va": state["fc_va.1.weight"].shape[0]}
    except KeyError as e:
        raise CheckpointError(f"{path}: {arch} checkpoint without head weight {e.args[0]}") from None


def _infer_layout(arch: str, state: Mapping[str, Tensor], path: Path) -> OutputLayout:
    sizes = _head_sizes(arch, state, path)
    if arch == "tsav":
        layout = layout_for_num_outputs(sizes)
    else:  # the published MTMT heads are concatenated AU, EXPR, VA
        layout = LAYOUTS["mtmt"] if sizes == LAYOUTS["mtmt"].sizes else layout_for_sizes(sizes)
    if layout is None:
        raise CheckpointError(f"{path}: unknown output layout for a {arch} model with head sizes {sizes} "
                              "(pass layout=...)")
    return layout


def _build_on_meta(arch: str, layout: OutputLayout) -> nn.Module:
    # No random init: every tensor comes from the checkpoint (load_state_dict(assign=True)).
    with torch.device("meta"):
        return MODEL_CLASSES[arch](layout=layout)


def _check_keys(expected: Mapping[str, Tensor], state: Mapping[str, Tensor], path: Path, what: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong-shape", wrong)):
        if keys:
            problems.append(f"{len(keys)} {label} keys (e.g. {', '.join(keys[:3])})")
    if problems:
        raise CheckpointError(f"{path}: does not fit {what}: {'; '.join(problems)}")


def load_published(path: str | Path, layout: str | OutputLayout | None = None,
                   trust_pickle: bool = False) -> nn.Module:
    """A TSAV or MTMT checkpoint file → the matching model, loaded strictly, in eval mode, on CPU.

    The architecture comes from the keys; the layout from ``layout``, else a 'layout' entry stored in
    the file, else the head sizes (17 → abaw2020, TSAV 22 → abaw2021, MTMT 12/8/2 → mtmt).
    """
    path = Path(path)
    obj = read_checkpoint(path, trust_pickle=trust_pickle)
    state = state_dict_of(obj, path)
    arch = detect_arch(state)
    if arch is None:
        raise CheckpointError(f"{path}: unknown checkpoint layout (neither TSAV 'fc.1.*' nor MTMT "
                              "'fc_ex.1.*'/'SELayerC' keys)")
    if layout is None:  # our own training checkpoints may record their layout next to the weights
        stored = obj.get("layout") if isinstance(obj, Mapping) else None
        layout = stored if isinstance(stored, str) else _infer_layout(arch, state, path)
    try:
        layout = get_layout(layout)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    model = _build_on_meta(arch, layout)
    expected = model.state_dict()
    _check_keys(expected, state, path, f"{arch} with layout {layout.name!r}")
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Initialisation from torchvision-format weight files (Kinetics-400 R(2+1)D-18, ImageNet ResNet-18)


def _load_backbone(target: nn.Module, state: dict[str, Tensor], path: Path, allowed_missing: str | None) -> None:
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = target.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if allowed_missing is None or allowed_missing not in k]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: not a matching torchvision state dict ({len(missing)} missing, "
                              f"{len(result.unexpected_keys)} unexpected keys, e.g. "
                              f"{', '.join((missing + result.unexpected_keys)[:3])})")


@torch.no_grad()
def init_video_from(model: nn.Module, path: str | Path, mask_init: str = "random") -> None:
    """Load a torchvision r2plus1d_18 state dict into the video stream (SE layers keep their init).

    The 3-channel stem filters go into input channels 0–2; the mask channel keeps its random init
    (as published) or, with ``mask_init='mean'``, gets the mean of the RGB filters.
    """
    path = Path(path)
    state = read_state_dict(path)
    r2plus1d = unwrap_model(model).video_model.r2plus1d
    stem = r2plus1d.stem[0].weight
    rgb = state.get("stem.0.weight")
    if rgb is None or rgb.shape[1] != 3 or rgb.shape[0] != stem.shape[0] or rgb.shape[2:] != stem.shape[2:]:
        raise CheckpointError(f"{path}: no 3-channel 'stem.0.weight' of shape {(stem.shape[0], 3, *stem.shape[2:])}")
    widened = stem.detach().clone()
    widened[:, :3] = rgb
    if mask_init == "mean":
        widened[:, 3] = rgb.mean(dim=1)
    elif mask_init != "random":
        raise ValueError(f"mask_init must be 'random' or 'mean', got {mask_init!r}")
    state = {**state, "stem.0.weight": widened}
    _load_backbone(r2plus1d, state, path, allowed_missing=".SELayerC.")


@torch.no_grad()
def init_audio_from(model: nn.Module, path: str | Path, reduce: str = "sum") -> None:
    """Load a torchvision resnet18 state dict into the audio stream; conv1's RGB filters → 1 channel.

    ``sum`` keeps the response to a grey image (same value in R, G, B); ``mean`` is what TSAV's
    (unused) option did.
    """
    path = Path(path)
    state = read_state_dict(path)
    conv1 = state.get("conv1.weight")
    if conv1 is None or conv1.dim() != 4 or conv1.shape[0] != 64 or conv1.shape[2:] != (7, 7):
        raise CheckpointError(f"{path}: no 'conv1.weight' of shape (64, C, 7, 7)")
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")
    one = conv1.sum(dim=1, keepdim=True) if reduce == "sum" else conv1.mean(dim=1, keepdim=True)
    _load_backbone(unwrap_model(model).audio_model.resnet, {**state, "conv1.weight": one}, path, None)


@torch.no_grad()
def init_backbones_from(model: nn.Module, path: str | Path, trust_pickle: bool = False) -> list[str]:
    """Copy both streams from a TSAV/MTMT checkpoint (MTMT is initialised from TSAV); heads stay fresh.

    Returns the model's stream keys the file did not provide (the SE layers when the file is TSAV).
    Shape mismatches and stream keys the model lacks are errors.
    """
    path = Path(path)
    state = read_state_dict(path, trust_pickle=trust_pickle)
    streams = {k: v for k, v in state.items() if k.startswith(("audio_model.", "video_model."))}
    target = unwrap_model(model)
    own = {k: v for k, v in target.state_dict().items() if k.startswith(("audio_model.", "video_model."))}
    unexpected = sorted(set(streams) - set(own))
    wrong = sorted(k for k in set(streams) & set(own) if streams[k].shape != own[k].shape)
    if not streams or unexpected or wrong:
        raise CheckpointError(f"{path}: streams do not fit ({len(streams)} stream keys, {len(unexpected)} "
                              f"unexpected, {len(wrong)} wrong-shape, e.g. {', '.join((unexpected + wrong)[:3])})")
    target.load_state_dict(streams, strict=False)
    return sorted(set(own) - set(streams))
