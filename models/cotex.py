"""Masked CoTEX (ICT-VIPL, ABAW4 learning-from-synthetic-data track): N ViT peers co-trained on one face image.

What the published code does (``../shared/reference/other_systems.md`` §1.6–1.7), and how it is built here:

- Each peer is timm's ``VisionTransformer`` (ViT-B/16 at full size: width 768, 12 blocks, 12 heads, qkv bias, CLS
  token, drop-path 0.1) with a ``Linear(768, 6)`` head initialised trunc-normal (std 2e-5), bias 0; it sits at
  ``vit`` so that its keys are the published ``vit.*``. Every peer starts from the same MAE file.
- Masking: in training each peer drops a random subset of its patch tokens, MAE-style: position embeddings
  added, a per-sample random order, the first ``int(L·(1 − r))`` tokens kept, the CLS token kept in front.
  That is timm's own patch dropout (``patch_drop_rate`` = r: it runs after the position embedding, keeps the
  prefix tokens and draws each call's order from the global RNG, so the peers draw independent masks). In
  evaluation nothing is dropped.
- Loss: (1/N) Σ CE(z_i, y) over the labelled rows + λ_JS · Σ_i (1/N) KL(p_i ‖ M), M = mean of the p_i, the
  probabilities clamped at 1e-4. Published: the KL is averaged over all B×C entries, so the term is the
  per-sample Jensen–Shannon divergence divided by C; λ_JS = 100. ``js='per_sample'`` sums over the classes
  (the divergence itself), the clean option. Rows without a label (y = −1) add only the agreement term (ours:
  the published code has no unlabelled rows).
- Prediction: the argmax of the sum of the peers' logits (``forward`` returns that sum).
- Checkpoints: ``{'epoch', 'args', ..., 'state_dicts': [sd_1, ..., sd_N]}``, keys ``vit.*`` (``module.vit.*``
  when trained under DataParallel); ``load_cotex`` reads them strictly.

As a model of this code base (``models.base``): arch ``cotex``, layout ``lsd`` (6 logits), one RGB frame in
(the data layer draws the crop and flip, ``data.lsd``), ``prepare`` = ImageNet normalisation, timm's layer-wise lr
decay per peer (the same layer of every peer in one group), and ``forward`` gives the sum of the peers' logits in
evaluation and the N×B×C stack of them in training (what ``--ssl cotex``'s loss needs; as torchvision's
Inception returns its auxiliary logits only in training). ``models.registry.load_model`` reads our checkpoints
and the published file (``load_cotex``).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from torch import Tensor, nn

from models.base import AffectModel
from models.emma import mae_encoder_state
from models.prepare import imagenet_input, to_unit, view_jitter
from tasks import OutputLayout, get_layout
from utils.checkpoint import CheckpointError, check_keys, read_checkpoint, state_dict_of
from utils.inputs import PIXELS, InputSpec

CLASSES = 6  # ABAW4 LSD: Anger, Disgust, Fear, Happiness, Sadness, Surprise (tasks.EXPR_NAMES_6)
LAMBDA_JS = 100.0
PROB_FLOOR = 1e-4  # the published clamp of the probabilities inside the KL
HEAD_STD = 2e-5
DROP_PATH = 0.1
LAYER_DECAY = 0.65
PATCH = 16
VIT_NO_DECAY = ("pos_embed", "cls_token")  # besides 1-D tensors (biases, norms)
JS_KINDS = ("published", "per_sample")


@dataclass(frozen=True)
class PeerSize:
    """ViT geometry of one peer (patch 16; the grid follows the input size)."""

    dim: int
    depth: int
    heads: int


SIZES = {"base": PeerSize(768, 12, 12), "tiny": PeerSize(64, 2, 2)}


class Peer(nn.Module):
    """One co-trained network: a timm ViT with a 6-way linear head, held at ``vit`` (the published key names)."""

    def __init__(self, size: str = "base", img_size: int = 224, mask_ratio: float = 0.0,
                 drop_path: float = DROP_PATH, num_classes: int = CLASSES, dropout: float = 0.0) -> None:
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"cotex: unknown peer size {size!r} (known: {', '.join(SIZES)})")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"cotex: the mask ratio must be in [0, 1), got {mask_ratio}")
        if img_size < PATCH:
            raise ValueError(f"cotex: the input size {img_size} is smaller than one {PATCH} px patch")
        s = SIZES[size]
        self.vit = VisionTransformer(img_size=img_size, patch_size=PATCH, num_classes=num_classes,
                                     global_pool="token", embed_dim=s.dim, depth=s.depth, num_heads=s.heads,
                                     qkv_bias=True, drop_rate=dropout, drop_path_rate=drop_path,
                                     patch_drop_rate=mask_ratio)
        nn.init.trunc_normal_(self.vit.head.weight, std=HEAD_STD)
        nn.init.zeros_(self.vit.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.vit(x)


class CoTEX(AffectModel):
    """N peers on the same B×3×S×S ImageNet-normalised faces; ``forward`` gives the B×6 sum of their logits in
    evaluation, the N×B×6 stack in training."""

    arch = "cotex"
    decision = "default"  # the argmax of the 6 summed logits

    def __init__(self, layout: str | OutputLayout = "lsd", dropout: float = 0.0, input_spec: InputSpec | None = None,
                 variant: str = "base", peers: int = 2, mask_ratio: float = 0.0, drop_path: float = DROP_PATH,
                 layer_decay: float = LAYER_DECAY) -> None:
        super().__init__()
        spec = input_spec or InputSpec.frame(size=224)
        if spec.kind != "frame" or spec.mask is not None:
            raise ValueError(f"{self.arch} takes one RGB frame (input kind 'frame', no mask), not {spec}")
        self.layout = get_layout(layout)
        if self.layout.sizes != {"expr": CLASSES}:
            raise ValueError(f"{self.arch}: layout {self.layout.name!r} is not {CLASSES} class logits (use 'lsd')")
        if peers < 1:
            raise ValueError(f"{self.arch}: at least one peer, got {peers}")
        self.input_spec = spec
        self.variant, self.mask_ratio, self.layer_decay = variant, mask_ratio, layer_decay
        self.peers = nn.ModuleList(Peer(variant, spec.size, mask_ratio, drop_path, CLASSES, dropout)
                                   for _ in range(peers))

    def prepare(self, raw: Mapping[str, Tensor], device: torch.device, view: str = "student",
                channels_last: bool = False) -> dict[str, Tensor]:
        """B×3×S×S uint8 (crop and flip already drawn by the dataset) → {'image': ImageNet-normalised floats},
        with the view's colour jitter when the batch carries factors (database clips with --jitter; the LSD images
        carry none, as published)."""
        return {"image": imagenet_input(view_jitter(to_unit(raw[PIXELS], device), raw, view), channels_last)}

    def peer_logits(self, x: Tensor) -> Tensor:
        """N×B×C: each peer's logits (in training each with its own dropped tokens)."""
        return torch.stack([peer(x) for peer in self.peers])

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        logits = self.peer_logits(inputs["image"])
        return logits if self.training else logits.sum(dim=0)

    def predict(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Class indices: the argmax of the sum of the peers' logits (whatever the mode)."""
        return self.peer_logits(inputs["image"]).sum(dim=0).argmax(dim=1)

    def no_weight_decay(self) -> set[str]:
        return {f"peers.{i}.vit.{n}" for i in range(len(self.peers)) for n in VIT_NO_DECAY}

    def param_groups(self, base_lr: float) -> list[dict]:
        """timm's layer-wise lr decay in every peer (its layer numbering and scales: decay^(last − layer), the
        patch embedding, position and CLS at 0, the head last), the same group of all peers merged; a group is
        named by the layer of its first parameter."""
        merged: dict[str, dict] = {}
        for peer in self.peers:
            names = {id(p): n for n, p in peer.vit.named_parameters()}
            depth = len(peer.vit.blocks)
            # weight_decay=1.0 only marks timm's decayed groups: they take the run's --weight-decay
            for g in param_groups_layer_decay(peer.vit, weight_decay=1.0, no_weight_decay_list=VIT_NO_DECAY,
                                              layer_decay=self.layer_decay):
                name = f"layer{vit_layer(names[id(g['params'][0])], depth)}"
                extra = {}
                if g["weight_decay"] == 0:
                    name, extra = name + "_no_decay", {"weight_decay": 0.0}
                group = merged.setdefault(name, {"name": name, "params": [], "lr_scale": g["lr_scale"], **extra})
                group["params"] += g["params"]
        return list(merged.values())


def vit_layer(name: str, depth: int) -> int:
    """Layer id of a ViT parameter for lr decay, as timm's ViT group matcher assigns it (0 = patch embedding,
    position and CLS; i + 1 = block i; depth + 1 = the final norm and the head)."""
    if name.startswith(("cls_token", "pos_embed", "patch_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def js_agreement(logits: Tensor, kind: str = "published") -> Tensor:
    """Σ_i (1/N) KL(p_i ‖ M) of N×B×C logits, M the mean of the p_i, probabilities clamped at 1e-4.

    'published': the KL's entries averaged over B×C (the per-sample divergence / C); 'per_sample': summed over
    the classes and averaged over B (the Jensen–Shannon divergence of the peers' predictions)."""
    if kind not in JS_KINDS:
        raise ValueError(f"cotex: the agreement term is one of {JS_KINDS}, got {kind!r}")
    p = F.softmax(logits.float(), dim=-1).clamp(min=PROB_FLOOR)
    m = p.mean(dim=0, keepdim=True)
    kl = p * (p.log() - m.log())  # N×B×C entries of KL(p_i ‖ M)
    per_peer = kl.mean(dim=(1, 2)) if kind == "published" else kl.sum(dim=2).mean(dim=1)
    return per_peer.mean()


def cotex_loss(logits: Tensor, target: Tensor, lambda_js: float = LAMBDA_JS, kind: str = "published"
               ) -> tuple[Tensor, dict[str, Tensor]]:
    """(1/N) Σ CE(z_i, y) over the rows with a label (y ≥ 0) + λ_JS · agreement over every row.

    ``logits``: N×B×C, ``target``: B class indices (−1: no label). Returns (total, {'ce', 'js'}); with no labelled
    row the CE is 0, still attached to the graph."""
    labelled = target >= 0
    if labelled.any():
        n, _, c = logits.shape
        rows = logits[:, labelled]
        ce = F.cross_entropy(rows.reshape(-1, c).float(), target[labelled].repeat(n))  # = mean over the peers
    else:
        ce = logits.sum() * 0.0
    js = js_agreement(logits, kind)
    return ce + lambda_js * js, {"ce": ce.detach(), "js": js.detach()}


def peer_states(ckpt: Mapping, path: str | Path) -> list[dict[str, Tensor]]:
    """The peers' state dicts of a published checkpoint ('state_dicts': a list), 'module.' prefixes removed."""
    states = ckpt.get("state_dicts") if isinstance(ckpt, Mapping) else None
    if not isinstance(states, list | tuple) or not states or not all(isinstance(s, Mapping) for s in states):
        raise CheckpointError(f"{path}: not a CoTEX checkpoint (no list of state dicts under 'state_dicts')")
    return [{k.removeprefix("module."): v for k, v in s.items()} for s in states]


def detect_cotex(ckpt: Mapping) -> bool:
    """Whether a loaded checkpoint is in CoTEX's published format."""
    states = ckpt.get("state_dicts") if isinstance(ckpt, Mapping) else None
    return (isinstance(states, list | tuple) and bool(states) and isinstance(states[0], Mapping)
            and any(k.removeprefix("module.") == "vit.cls_token" for k in states[0]))


def size_of(state: Mapping[str, Tensor]) -> str:
    """The peer size whose ViT a state dict holds (width and depth)."""
    dim = state["vit.cls_token"].shape[-1]
    depth = 1 + max((int(k.split(".")[2]) for k in state if k.startswith("vit.blocks.")), default=-1)
    for name, s in SIZES.items():
        if (s.dim, s.depth) == (dim, depth):
            return name
    raise CheckpointError(f"a CoTEX peer of width {dim} and depth {depth} is none of the sizes {', '.join(SIZES)}")


def options_of(state: Mapping[str, Tensor]) -> dict:
    """Constructor options a state dict of ours implies: the peer size and the number of peers."""
    peers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("peers."))
    return {"variant": size_of({k.split(".", 2)[2]: v for k, v in state.items() if k.startswith("peers.0.")}),
            "peers": peers}


def detect_state(state: Mapping[str, Tensor]) -> bool:
    """Whether a state dict is our CoTEX model's (peers.<i>.vit.*)."""
    return "peers.0.vit.cls_token" in state


@torch.no_grad()
def published_model(ckpt: Mapping, path: str | Path) -> CoTEX:
    """The N-peer model of a loaded published checkpoint, in eval mode (strict keys; the input size is read
    from the position embedding)."""
    states = peer_states(ckpt, path)
    size = size_of(states[0])
    grid = round((states[0]["vit.pos_embed"].shape[1] - 1) ** 0.5)
    model = CoTEX(peers=len(states), variant=size, input_spec=InputSpec.frame(size=grid * PATCH))
    for i, (peer, state) in enumerate(zip(model.peers, states, strict=True)):
        check_keys(peer.state_dict(), state, path, f"CoTEX peer {i + 1} ({size} ViT, {CLASSES} classes)")
        peer.load_state_dict(state, strict=True)
    return model.eval()


def load_cotex(path: str | Path) -> CoTEX:
    """A published CoTEX checkpoint file as the N-peer model in eval mode."""
    return published_model(read_checkpoint(path, safe_globals=[argparse.Namespace]), path)  # 'args': a Namespace


@torch.no_grad()
def load_mae(model: CoTEX, path: str | Path) -> None:
    """One MAE ViT checkpoint (``{'model': …}``) into every peer, as the published code starts them: decoder and
    mask token dropped, ``pos_embed`` resampled to the input grid; every encoder weight must fit; heads fresh."""
    obj = read_checkpoint(path, safe_globals=[argparse.Namespace])
    state = state_dict_of(obj, path)
    for peer in model.peers:
        encoder = mae_encoder_state(state, peer.vit)
        expected = {k: v for k, v in peer.vit.state_dict().items() if not k.startswith("head.")}
        check_keys(expected, encoder, path, f"a CoTEX peer ViT ({model.variant}, {model.input_spec.size} px)")
        peer.vit.load_state_dict(encoder, strict=False)
