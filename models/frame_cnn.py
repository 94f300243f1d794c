"""A per-frame model: torchvision ResNet-18 (or ResNet-50) on one aligned face, one linear head over the layout's
outputs.

The simplest system of the codebase and the shape of the frame-level systems (EMMA, CoTEX, DTM): it
declares the ``frame`` input kind, so the dataset serves it one uint8 RGB crop per sample — no mask
channel, no audio window — and its ``prepare`` hook scales, colour-jitters and normalises with the
ImageNet statistics on the device. ImageNet weights come from a local torchvision ``resnet18``/``resnet50`` state
dict (``--backbone-init``; its ``fc`` is dropped); nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet18, resnet50

from models.base import AffectModel
from models.prepare import imagenet_input, to_unit, view_jitter
from tasks import OutputLayout, get_layout
from utils.checkpoint import CheckpointError, read_state_dict
from utils.inputs import PIXELS, InputSpec

FEATURES = 512


class FrameResNet(AffectModel):
    """ResNet-18 trunk (``backbone``) → Dropout → Linear(512, K) (``head``); returns B×K, no activation."""

    arch = "resnet18"
    trunk = staticmethod(resnet18)
    features = FEATURES

    def __init__(self, layout: str | OutputLayout = "abaw2021", dropout: float = 0.0,
                 input_spec: InputSpec | None = None) -> None:
        super().__init__()
        spec = input_spec or InputSpec.frame(size=112)
        if spec.kind != "frame" or spec.mask is not None:
            raise ValueError(f"{self.arch} takes one RGB frame (input kind 'frame', no mask), not {spec}")
        self.input_spec = spec
        self.layout = get_layout(layout)
        self.backbone = self.trunk(weights=None)
        self.backbone.fc = nn.Identity()
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.features, self.layout.num_outputs))

    def prepare(self, raw: Mapping[str, Tensor], device: torch.device, view: str = "student",
                channels_last: bool = False) -> dict[str, Tensor]:
        """B×3×S×S uint8 → {'image': normalised float}, jittered with the view's drawn factors when given."""
        image = view_jitter(to_unit(raw[PIXELS], device), raw, view)
        return {"image": imagenet_input(image, channels_last)}

    def to_channels_last(self) -> FrameResNet:
        self.backbone.to(memory_format=torch.channels_last)
        return self

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        return self.head(self.backbone(inputs["image"]))


class FrameResNet50(FrameResNet):
    """ResNet-50 trunk → Dropout → Linear(2048, K): the same frame model with the deeper torchvision trunk."""

    arch = "resnet50"
    trunk = staticmethod(resnet50)
    features = 2048


def detect_frame_resnet(state: Mapping[str, Tensor]) -> bool:
    """A FrameResNet (ResNet-18: basic blocks, no conv3) state dict."""
    bottleneck = "backbone.layer1.0.conv3.weight" in state
    return "head.1.weight" in state and "backbone.conv1.weight" in state and not bottleneck


def detect_frame_resnet50(state: Mapping[str, Tensor]) -> bool:
    return "head.1.weight" in state and "backbone.layer1.0.conv3.weight" in state


@torch.no_grad()
def init_backbone_from(model: FrameResNet, path: str | Path) -> None:
    """Load a torchvision resnet18/resnet50 state dict (ImageNet; the model's own trunk) into the trunk; its fc is
    dropped, the head stays fresh."""
    path = Path(path)
    state = {k: v for k, v in read_state_dict(path).items() if not k.startswith("fc.")}
    result = model.backbone.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        bad = result.missing_keys + result.unexpected_keys
        raise CheckpointError(f"{path}: not a torchvision {model.arch} state dict ({len(result.missing_keys)} missing, "
                              f"{len(result.unexpected_keys)} unexpected keys, e.g. {', '.join(bad[:3])})")
