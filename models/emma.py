"""EMMA (ICT-VIPL, ABAW4 multi-task track): an MAE-pretrained ViT and a frozen DAN on one face frame.

- ``vit``: timm's ``VisionTransformer`` (ViT-B/16: dim 768, depth 12, 12 heads, qkv bias, CLS token,
  drop-path 0.1) whose head is an MLP 768 → 512 → ReLU → (EXPR slots + AUs) logits (20 for the ``emma``
  layout: 8 EXPR + 12 AU);
- ``cnn``: DAN (``models.dan``), 8 AffectNet logits, frozen: no gradient, no parameter group, and its
  BatchNorms in eval mode even while the model trains (``dan_bn='frozen'``) — or, as the published code
  ran it, updating their statistics on the training frames (``dan_bn='adapt'``);
- ``va_head``: MLP on the concatenated [DAN 8, ViT logits] → 256 → ReLU → 2 (valence, arousal), no tanh;
  the ViT logits are not detached, so the VA loss also trains the ViT through them.

Outputs are the layout's blocks in its order; for the ``emma`` layout [V, A, EXPR 8, AU 12], the published
order. The module names are those of the published files, so the released EMMA checkpoint
(``{'epoch', 'model'}``), the MAE encoder (``load_mae``: decoder and mask token dropped, ``pos_embed``
interpolated to this grid) and DAN's AffectNet-8 file (``models.dan.load_dan``) load strictly.

Input: one RGB frame (input kind ``frame``, no mask) at ``input_spec.size`` (224 published; the ViT's grid
follows it). ``prepare``: in training, the student view is EMMA's augmentation — resize to 232/224 of the
size, the dataset's colour-jitter factors applied with probability 0.2, a random crop back to the size
(the dataset already drew the flip); otherwise a resize to the size (no-op when served at it) and the
view's jitter factors (identity in evaluation). ImageNet mean/std.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from torch import Tensor, nn

from models.base import AffectModel
from models.dan import BLOCKS as DAN_BLOCKS
from models.dan import CLASSES as DAN_CLASSES
from models.dan import DAN
from models.dan import WIDTHS as DAN_WIDTHS
from models.prepare import imagenet_input, jitter_rgb, to_unit, view_jitter
from tasks import LAYOUTS, OutputLayout, get_layout
from utils.checkpoint import CheckpointError, check_keys, read_checkpoint, state_dict_of
from utils.inputs import IDENTITY_JITTER, JITTER, PIXELS, InputSpec

PATCH = 16
VA_HIDDEN = 256
DROP_PATH = 0.1
LAYER_DECAY = 0.65
VA_LR = 1e-4  # the VA head's constant learning rate
TRAIN_RESIZE = 232 / 224  # training view: resize to 232, random crop 224
JITTER_P = 0.2  # probability that a training sample is colour-jittered
DAN_BN = ("frozen", "adapt")
VIT_NO_DECAY = ("pos_embed", "cls_token")
MAE_ONLY = ("decoder", "mask_token")  # pre-training parts of an MAE file the encoder has no use for


@dataclass(frozen=True)
class Variant:
    """ViT geometry of a model size (the grid follows the input size)."""

    dim: int
    depth: int
    heads: int
    head_hidden: int
    patch: int = PATCH
    dan_widths: tuple[int, ...] = DAN_WIDTHS  # DAN's trunk: ResNet-18 unless a narrower one is named
    dan_blocks: tuple[int, ...] = DAN_BLOCKS


# base: the published ViT-B/16 and ResNet-18 DAN. small and tiny are ours, for demos and tests on a CPU: the
# tiny one sees 8 px patches (a 64 px face is then 8x8 tokens) and a DAN of one narrow block per stage.
VARIANTS = {"base": Variant(768, 12, 12, 512),
            "small": Variant(192, 4, 3, 192),
            "tiny": Variant(64, 2, 2, 64, patch=32, dan_widths=(16, 32, 64, 128), dan_blocks=(1, 1, 1, 1))}


class EmmaViT(VisionTransformer):
    """timm's ViT with the MAE/BEiT layer ids for layer-wise lr decay: the final norm goes with the head
    (scale 1), not with the last block as timm's own matcher has it."""

    def group_matcher(self, coarse: bool = False) -> dict:
        return {"stem": r"^cls_token|pos_embed|patch_embed", "blocks": [(r"^blocks\.(\d+)", None)]}


class EMMA(AffectModel):
    """ViT logits + frozen DAN logits → VA head; see the module docstring."""

    arch = "emma"
    decision = "emma"

    def __init__(self, layout: str | OutputLayout = "emma", dropout: float = 0.0, input_spec: InputSpec | None = None,
                 variant: str = "base", drop_path: float = DROP_PATH, dan_bn: str = "frozen",
                 layer_decay: float = LAYER_DECAY, va_lr: float = VA_LR, jitter_p: float = JITTER_P) -> None:
        super().__init__()
        spec = input_spec or InputSpec.frame(size=224)
        if spec.kind != "frame" or spec.mask is not None:
            raise ValueError(f"{self.arch} takes one RGB frame (input kind 'frame', no mask), not {spec}")
        if variant not in VARIANTS:
            raise ValueError(f"{self.arch}: unknown size {variant!r} (known: {', '.join(VARIANTS)})")
        if spec.size < VARIANTS[variant].patch:
            raise ValueError(f"{self.arch}: the input size {spec.size} is smaller than one {VARIANTS[variant].patch} "
                             "px patch")
        if dan_bn not in DAN_BN:
            raise ValueError(f"{self.arch}: dan_bn must be one of {DAN_BN}, got {dan_bn!r}")
        self.layout = get_layout(layout)
        sizes = self.layout.sizes
        if "va" not in sizes or len(sizes) < 2:
            raise ValueError(f"{self.arch}: layout {self.layout.name!r} needs VA and EXPR or AU outputs")
        self.input_spec = spec
        self.variant, self.dan_bn = variant, dan_bn
        self.layer_decay, self.va_lr, self.jitter_p = layer_decay, va_lr, jitter_p
        self.view_generator: torch.Generator | None = None  # None: the global RNG draws the training views
        v = VARIANTS[variant]
        self.num_logits = sizes.get("expr", 0) + sizes.get("au", 0)  # the ViT's head: [EXPR slots, AUs]
        self.vit = EmmaViT(img_size=spec.size, patch_size=v.patch, num_classes=0, global_pool="token",
                           embed_dim=v.dim, depth=v.depth, num_heads=v.heads, qkv_bias=True,
                           drop_rate=dropout, drop_path_rate=drop_path)
        self.vit.head = nn.Sequential(nn.Linear(v.dim, v.head_hidden), nn.ReLU(inplace=True),
                                      nn.Linear(v.head_hidden, self.num_logits))
        self.vit.num_classes = self.num_logits
        self.cnn = DAN(widths=v.dan_widths, blocks=v.dan_blocks)
        self.cnn.requires_grad_(False)
        self.va_head = nn.Sequential(nn.Linear(DAN_CLASSES + self.num_logits, VA_HIDDEN), nn.ReLU(inplace=True),
                                     nn.Linear(VA_HIDDEN, 2))
        self.train()

    # --- modes and inputs ---------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> EMMA:
        super().train(mode)
        if self.dan_bn == "frozen":  # frozen weights and frozen statistics: DAN stays as it was loaded
            self.cnn.eval()
        return self

    def seed_views(self, seed: int) -> None:
        """Draw the training views (jitter on/off, crop offsets) from a generator of this seed."""
        self.view_generator = torch.Generator().manual_seed(seed)

    def view_rng_state(self) -> Tensor | None:
        return None if self.view_generator is None else self.view_generator.get_state()

    def set_view_rng_state(self, state: Tensor) -> None:
        if self.view_generator is None:
            self.view_generator = torch.Generator()
        self.view_generator.set_state(state)

    def prepare(self, raw: Mapping[str, Tensor], device: torch.device, view: str = "student",
                channels_last: bool = False) -> dict[str, Tensor]:
        """B×3×S×S uint8 → {'image': B×3×size×size ImageNet-normalised}: the training view for the student
        of a model in train mode, else resized with the view's jitter factors (module docstring)."""
        image = to_unit(raw[PIXELS], device)
        if view == "student" and self.training:
            image = self._train_view(image, raw.get(JITTER))
        else:
            image = view_jitter(resize(image, self.input_spec.size), raw, view)
        return {"image": imagenet_input(image, channels_last)}

    def _train_view(self, image: Tensor, factors: Tensor | None) -> Tensor:
        size = self.input_spec.size
        big = round(size * TRAIN_RESIZE)
        image = resize(image, big)
        b = image.shape[0]
        # both draws every time, so a seeded generator gives the same views whatever the batch carries
        jittered = torch.rand(b, generator=self.view_generator) < self.jitter_p
        offsets = torch.randint(0, big - size + 1, (b, 2), generator=self.view_generator)
        if factors is not None:
            identity = torch.tensor(IDENTITY_JITTER, dtype=torch.float64)
            factors = torch.where(jittered[:, None], factors.cpu().double(), identity)
            image = jitter_rgb(image.unsqueeze(1), factors).squeeze(1)
        return torch.stack([im[:, y:y + size, x:x + size] for im, (y, x) in zip(image, offsets.tolist(), strict=True)])

    def to_channels_last(self) -> EMMA:
        self.cnn.to(memory_format=torch.channels_last)
        return self

    # --- network --------------------------------------------------------------------------------------------
    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        x = inputs["image"]
        logits = self.vit(x)
        with torch.no_grad():  # DAN learns nothing (in 'adapt' mode its BN statistics still update)
            dan = self.cnn(x)
        va = self.va_head(torch.cat([dan.to(logits.dtype), logits], dim=1))
        n_expr = self.layout.sizes.get("expr", 0)
        blocks = {"va": va, "expr": logits[:, :n_expr], "au": logits[:, n_expr:]}
        return torch.cat([blocks[b] for b in self.layout.order], dim=1)

    # --- optimiser ------------------------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        return {f"vit.{n}" for n in VIT_NO_DECAY}

    def param_groups(self, base_lr: float) -> list[dict]:
        """timm's layer-wise lr decay over the ViT (scale decay^(depth + 1 − layer): 0 = patch/pos/cls,
        i + 1 = block i, depth + 1 = norm and head), the VA head at a constant ``va_lr`` without weight
        decay; DAN is in no group (frozen)."""
        names = {id(p): n for n, p in self.vit.named_parameters()}
        groups = []
        # weight_decay=1.0 only marks timm's decayed groups: they take the run's --weight-decay
        for g in param_groups_layer_decay(self.vit, weight_decay=1.0, no_weight_decay_list=VIT_NO_DECAY,
                                          layer_decay=self.layer_decay):
            group = {"name": f"vit_layer{self.vit_layer(names[id(g['params'][0])])}", "params": g["params"],
                     "lr_scale": g["lr_scale"]}
            if g["weight_decay"] == 0:
                group.update(name=group["name"] + "_no_decay", weight_decay=0.0)
            groups.append(group)
        groups.append({"name": "va_head", "params": list(self.va_head.parameters()), "lr_scale": self.va_lr / base_lr,
                       "weight_decay": 0.0, "schedule": False})
        return groups

    def vit_layer(self, name: str) -> int:
        """Layer id of a ViT parameter for lr decay (as ``EmmaViT.group_matcher`` assigns them)."""
        if name.startswith(("cls_token", "pos_embed", "patch_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return len(self.vit.blocks) + 1


def resize(image: Tensor, size: int) -> Tensor:
    """B×C×H×W → B×C×size×size, bilinear (antialiased when shrinking); unchanged when already that size."""
    if image.shape[-2:] == (size, size):
        return image
    return F.interpolate(image, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


# ---------------------------------------------------------------------------------------------------
# Checkpoints


def detect_emma(state: Mapping[str, Tensor]) -> bool:
    return "vit.cls_token" in state and "cnn.fc.weight" in state and "va_head.0.weight" in state


def variant_of(state: Mapping[str, Tensor]) -> str:
    """The model size whose ViT the state dict holds (embedding width and depth)."""
    if "vit.cls_token" not in state:
        raise ValueError("not an EMMA state dict (no vit.cls_token)")
    dim = state["vit.cls_token"].shape[-1]
    depth = 1 + max((int(k.split(".")[2]) for k in state if k.startswith("vit.blocks.")), default=-1)
    for name, v in VARIANTS.items():
        if (v.dim, v.depth) == (dim, depth):
            return name
    raise ValueError(f"an EMMA ViT of width {dim} and depth {depth} is none of the sizes "
                     f"{', '.join(f'{n} ({v.dim}, {v.depth})' for n, v in VARIANTS.items())}")


def infer_layout(state: Mapping[str, Tensor], path: str | Path) -> OutputLayout:
    """A file without a stored layout: the published one, [V, A, EXPR 8, AU 12] (20 ViT logits)."""
    rows = state["vit.head.2.weight"].shape[0] if "vit.head.2.weight" in state else None
    if rows != LAYOUTS["emma"].num_outputs - 2:
        raise CheckpointError(f"{path}: an EMMA file with {rows} ViT logits is not the published layout "
                              "(pass layout=...)")
    return LAYOUTS["emma"]


def mae_encoder_state(state: Mapping[str, Tensor], vit: VisionTransformer) -> dict[str, Tensor]:
    """An MAE checkpoint's encoder weights for ``vit``: decoder, mask token and any classifier head dropped,
    ``pos_embed`` resampled (bicubic, as MAE's fine-tuning does) when its grid differs from ``vit``'s."""
    out = {k: v for k, v in state.items() if not k.startswith(MAE_ONLY + ("head.",))}
    pos = out.get("pos_embed")
    if pos is not None and pos.shape != vit.pos_embed.shape:
        out["pos_embed"] = resample_abs_pos_embed(pos, new_size=list(vit.patch_embed.grid_size), num_prefix_tokens=1,
                                                  interpolation="bicubic", antialias=False, align_corners=False)
    return out


@torch.no_grad()
def load_mae(model: EMMA, path: str | Path) -> None:
    """An MAE ViT checkpoint (``{'model': …}``, possibly with an argparse.Namespace under 'args') into
    ``model.vit``: every encoder weight must fit (CheckpointError otherwise); the head stays fresh."""
    obj = read_checkpoint(path, safe_globals=[argparse.Namespace])
    state = mae_encoder_state(state_dict_of(obj, path), model.vit)
    expected = {k: v for k, v in model.vit.state_dict().items() if not k.startswith("head.")}
    check_keys(expected, state, path, f"the EMMA ViT ({model.variant}, {model.input_spec.size} px)")
    model.vit.load_state_dict(state, strict=False)
