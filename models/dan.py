"""DAN (Distract your Attention Network): a ResNet-18 trunk and four cross-attention heads → 8 expression logits.

EMMA's second branch, frozen, fed the same normalised 224 px face as its ViT. The module and parameter
names follow the published AffectNet-8 checkpoint (``{'iter', 'model_state_dict', 'optimizer_state_dict'}``)
so it loads strictly; EMMA holds it as ``cnn`` (keys ``cnn.*`` in the released EMMA file):

- ``features``: torchvision ``resnet18`` without its pooling and fc (children 0–7: conv1, bn1, relu,
  maxpool, layer1–4), B×512×h×w;
- ``cat_head{0..3}``: each a spatial attention (1×1 conv 512→256 + BN, then 3×3, 1×3 and 3×1 convs
  256→512 + BN, summed, ReLU, summed over channels, multiplied into the features) followed by a channel
  attention (global average pool, Linear 512→32, BatchNorm1d, ReLU, Linear 32→512, sigmoid gate on the
  pooled vector) → B×512;
- the four head vectors are log-softmaxed across the heads and summed, then ``fc`` (512→8) and ``bn``
  (BatchNorm1d(8)): the output is 8 AffectNet-order logits.

Other trunk sizes (``widths``/``blocks``, e.g. the tiny EMMA of the demo) are torchvision's ResNet with
BasicBlocks at those stage widths and depths; the heads follow the last stage's width.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock, ResNet

from utils.checkpoint import check_keys, read_state_dict

CHANNELS = 512  # ResNet-18's last stage
WIDTHS = (64, 128, 256, 512)  # ResNet-18's stage widths
BLOCKS = (2, 2, 2, 2)  # and its blocks per stage
HEADS = 4
CLASSES = 8  # AffectNet-8


class NarrowResNet(ResNet):
    """torchvision's ResNet of BasicBlocks at other stage widths (its constructor fixes 64…512): the stem and
    the four stages rebuilt by its own ``_make_layer``, initialised as torchvision initialises a ResNet."""

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...]) -> None:
        super().__init__(BasicBlock, list(blocks))
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.layer1 = self._make_layer(BasicBlock, widths[0], blocks[0])
        self.layer2 = self._make_layer(BasicBlock, widths[1], blocks[1], stride=2)
        self.layer3 = self._make_layer(BasicBlock, widths[2], blocks[2], stride=2)
        self.layer4 = self._make_layer(BasicBlock, widths[3], blocks[3], stride=2)
        self.fc = nn.Linear(widths[3], 1000)  # unused by DAN; kept so the module is a whole ResNet
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def make_trunk(widths: tuple[int, ...] = WIDTHS, blocks: tuple[int, ...] = BLOCKS) -> ResNet:
    """ResNet-18 (torchvision's, random init) or a narrower/shallower ResNet of BasicBlocks."""
    if tuple(widths) == WIDTHS and tuple(blocks) == BLOCKS:
        return resnet18(weights=None)
    return NarrowResNet(tuple(widths), tuple(blocks))


def _conv_bn(cin: int, cout: int, kernel: tuple[int, int]) -> nn.Sequential:
    padding = (kernel[0] // 2, kernel[1] // 2)  # 'same' size for the odd kernels used here
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding), nn.BatchNorm2d(cout))


class SpatialAttention(nn.Module):
    """Features × a per-position weight from a reduce-then-expand conv pyramid (``sa`` of a head)."""

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        self.conv1x1 = _conv_bn(channels, channels // 2, (1, 1))
        self.conv_3x3 = _conv_bn(channels // 2, channels, (3, 3))
        self.conv_1x3 = _conv_bn(channels // 2, channels, (1, 3))
        self.conv_3x1 = _conv_bn(channels // 2, channels, (3, 1))

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1x1(x)
        y = torch.relu(self.conv_3x3(y) + self.conv_1x3(y) + self.conv_3x1(y))
        return x * y.sum(dim=1, keepdim=True)


class ChannelAttention(nn.Module):
    """Pooled features × a sigmoid channel gate (``ca`` of a head): B×C×h×w → B×C."""

    def __init__(self, channels: int = CHANNELS, hidden: int = 32) -> None:
        super().__init__()
        # indices 0, 1, 3 carry weights: the published key names (attention.0/.1/.3)
        self.attention = nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                       nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.mean(dim=(2, 3))
        return pooled * self.attention(pooled)


class CrossAttentionHead(nn.Module):
    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        self.sa = SpatialAttention(channels)
        self.ca = ChannelAttention(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.ca(self.sa(x))


class DAN(nn.Module):
    """B×3×S×S ImageNet-normalised faces → B×8 logits (see the module docstring)."""

    def __init__(self, num_classes: int = CLASSES, num_heads: int = HEADS, widths: tuple[int, ...] = WIDTHS,
                 blocks: tuple[int, ...] = BLOCKS) -> None:
        super().__init__()
        trunk = make_trunk(widths, blocks)
        narrow = isinstance(trunk, NarrowResNet)
        self.trunk_name = (f"narrow ResNet {'-'.join(map(str, widths))}, blocks {'-'.join(map(str, blocks))}"
                           if narrow else "ResNet-18")
        self.features = nn.Sequential(*list(trunk.children())[:-2])  # no avgpool, no fc
        self.num_heads = num_heads
        for i in range(num_heads):
            setattr(self, f"cat_head{i}", CrossAttentionHead(widths[-1]))
        self.fc = nn.Linear(widths[-1], num_classes)
        self.bn = nn.BatchNorm1d(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x)
        heads = torch.stack([getattr(self, f"cat_head{i}")(f) for i in range(self.num_heads)], dim=1)
        if self.num_heads > 1:  # the heads compete for each channel: distributions across heads
            heads = torch.log_softmax(heads, dim=1)
        return self.bn(self.fc(heads.sum(dim=1)))


@torch.no_grad()
def load_dan(dan: DAN, path: str | Path) -> None:
    """The published AffectNet-8 file (weights under 'model_state_dict'; any format ``read_state_dict`` reads)
    into ``dan``, strictly: CheckpointError naming the file and the mismatched keys otherwise."""
    state = read_state_dict(path)
    check_keys(dan.state_dict(), state, path, f"DAN ({dan.trunk_name}, {dan.num_heads} heads, 8 classes)")
    dan.load_state_dict(state, strict=True)
