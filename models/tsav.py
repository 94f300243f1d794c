"""TSAV two-stream audio-visual model (ABAW 2020) and its MTMT self-cure variant (ABAW 2021).

Both take the ``clip_audio`` input kind (``utils.inputs``): their ``prepare`` hook turns a raw batch into
``{'clip': B×4×T×H×W, 'audio_features': B×1×64×W}`` (RGB + mask clip, normalised log-mel) on the device,
and they keep the state-dict key names of the published checkpoints (``models.tsav_weights`` loads those
files strictly). The meaning of the output columns is an ``OutputLayout`` (tasks.py).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.video import r2plus1d_18
from torchvision.models.video.resnet import BasicBlock, Conv2Plus1D, R2Plus1dStem, VideoResNet

from models.base import AffectModel
from models.losses import rank_regularization
from models.prepare import finish_audio, jitter_rgb, normalise, to_unit
from tasks import OutputLayout, get_layout, layout_for_num_outputs
from utils.inputs import AUDIO_DB, JITTER, PIXELS, TEACHER_JITTER, InputSpec

FEATURE_DIM = 512  # per stream; the heads see the 1024-d concat [audio, video]
CLIP_CHANNELS = 4  # RGB + mask
MEAN = (0.43216, 0.394666, 0.37645, 0.5)  # Kinetics RGB statistics + 0.5 for the mask
STD = (0.22803, 0.22145, 0.216989, 0.225)


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


def default_input(arch: str) -> InputSpec:
    """The published input of each model: 8 frames 6 apart, 112 px, 10 s of audio, its own mask."""
    return InputSpec(mask="mtmt" if arch == "mtmt" else "tsav")


def prepare_clip_audio(raw: Mapping[str, Tensor], device: torch.device, view: str = "student",
                       channels_last: bool = False) -> dict[str, Tensor]:
    """Raw clip+audio batch → ``{'clip', 'audio_features'}`` on ``device``.

    Pixels (B×4×T×S×S uint8) are scaled to [0, 1], colour-jittered with the sample's drawn factors (the
    student's ``jitter``; with ``view='teacher'`` the teacher view's brightness/contrast ``teacher_jitter``;
    none in evaluation batches), then normalised with MEAN/STD per channel; the mask is never jittered. The
    dB audio window is floored and normalised (``models.prepare.finish_audio``).
    """
    base = to_unit(raw[PIXELS], device)
    key = TEACHER_JITTER if view == "teacher" else JITTER
    if key in raw:  # jitter works on B×T×C×H×W images
        base = jitter_rgb(base.transpose(1, 2), raw[key]).transpose(1, 2)
    inputs = {"clip": normalise(base, MEAN, STD, channel_dim=1),
              "audio_features": finish_audio(raw[AUDIO_DB].to(device, non_blocking=True))}
    if channels_last:
        inputs["clip"] = inputs["clip"].contiguous(memory_format=torch.channels_last_3d)
        inputs["audio_features"] = inputs["audio_features"].contiguous(memory_format=torch.channels_last)
    return inputs


class TwoStream(AffectModel):
    """Shared part: ``audio_model`` and ``video_model`` (set by subclasses) → fused 1024-d features."""

    audio_model: AudioModel
    video_model: VideoModel
    layout: OutputLayout | None

    def features(self, batch: Mapping[str, Tensor]) -> Tensor:
        """B×1024 fused features, [audio, video]."""
        return torch.cat([self.audio_model(batch["audio_features"]), self.video_model(batch["clip"])], dim=1)

    def _set_input(self, input_spec: InputSpec | None) -> None:
        spec = input_spec or default_input(self.arch)
        if spec.kind != "clip_audio" or spec.mask is None:
            raise ValueError(f"{self.arch} takes a clip with a mask channel and audio, not {spec}")
        self.input_spec = spec

    def prepare(self, raw: Mapping[str, Tensor], device: torch.device, view: str = "student",
                channels_last: bool = False) -> dict[str, Tensor]:
        return prepare_clip_audio(raw, device, view, channels_last)

    def to_channels_last(self) -> TwoStream:
        """Video stream → channels_last_3d, audio stream → channels_last (in place)."""
        self.video_model.to(memory_format=torch.channels_last_3d)
        self.audio_model.to(memory_format=torch.channels_last)
        return self


class TwoStreamAuralVisualModel(TwoStream):
    """TSAV: concat [audio 512, video 512] → Dropout → Linear(1024, K). Returns B×K, no activation.

    A given ``layout`` sets K; otherwise the layout is the registered one with K outputs (or None).
    """

    arch = "tsav"

    def __init__(self, num_outputs: int = 17, dropout: float = 0.0,
                 layout: str | OutputLayout | None = None, input_spec: InputSpec | None = None) -> None:
        super().__init__()
        self._set_input(input_spec)
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

    def __init__(self, layout: str | OutputLayout = "mtmt", dropout: float = 0.0,
                 input_spec: InputSpec | None = None) -> None:
        super().__init__()
        self._set_input(input_spec)
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
        for unused in (self.alpha_au, self.alpha_va):  # kept for checkpoint compatibility: no gradient
            unused.requires_grad_(False)

    @staticmethod
    def _alpha() -> nn.Sequential:
        return nn.Sequential(nn.Linear(2 * FEATURE_DIM, 1), nn.Sigmoid())

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        f = self.features(batch)
        alpha_ex = self.alpha_ex(f)
        blocks = {"au": self.fc_au(f), "expr": self.fc_ex(f) * alpha_ex, "va": self.fc_va(f)}
        return torch.cat([blocks[task] for task in self.layout.order], dim=1), alpha_ex

    def regularization(self, out: tuple[Tensor, Tensor]) -> Tensor:
        """The self-cure rank term on the EXPR attention weights (its weight is a training flag)."""
        return rank_regularization(out[1])


MODEL_CLASSES = {"tsav": TwoStreamAuralVisualModel, "mtmt": TwoStreamAuralVisualSelfCure}
