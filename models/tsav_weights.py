"""TSAV/MTMT weights from files: published checkpoints (strict), and backbone initialisation.

``detect_arch`` and ``infer_layout`` tell a TSAV from an MTMT state dict and its output layout from the
head sizes (used by ``models.registry.load_model``); the ``init_*`` functions copy torchvision
Kinetics-400 / ImageNet weights, or the two streams of another TSAV/MTMT checkpoint, into a fresh model.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from models.base import unwrap_model
from tasks import LAYOUTS, OutputLayout, layout_for_num_outputs, layout_for_sizes
from utils.checkpoint import CheckpointError, read_state_dict


def detect_arch(state: Mapping[str, Tensor]) -> str | None:
    """'mtmt' (SE video stream, per-task heads), 'tsav' (single fc head) or None."""
    if "fc_ex.1.weight" in state or any(".SELayerC." in k for k in state):
        return "mtmt"
    if "fc.1.weight" in state:
        return "tsav"
    return None


def _head_sizes(arch: str, state: Mapping[str, Tensor], path: str | Path) -> dict[str, int] | int:
    try:
        if arch == "tsav":
            return state["fc.1.weight"].shape[0]
        return {"au": state["fc_au.1.weight"].shape[0], "expr": state["fc_ex.1.weight"].shape[0],
                "va": state["fc_va.1.weight"].shape[0]}
    except KeyError as e:
        raise CheckpointError(f"{path}: {arch} checkpoint without head weight {e.args[0]}") from None


def infer_layout(arch: str, state: Mapping[str, Tensor], path: str | Path) -> OutputLayout:
    sizes = _head_sizes(arch, state, path)
    if arch == "tsav":
        layout = layout_for_num_outputs(sizes)
    else:  # the published MTMT heads are concatenated AU, EXPR, VA
        layout = LAYOUTS["mtmt"] if sizes == LAYOUTS["mtmt"].sizes else layout_for_sizes(sizes)
    if layout is None:
        raise CheckpointError(f"{path}: unknown output layout for a {arch} model with head sizes {sizes} "
                              "(pass layout=...)")
    return layout


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
