"""Every model of the codebase by name: build a fresh one, or load one from any checkpoint it comes in.

A family registers its class (which declares the plug-in hooks of ``models.base``), how to recognise its
state dicts, the output layout of a published file without a stored layout, and its default input. A new
system adds one entry here and its own modules; nothing else in the engine or inference changes.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from models import cnu, cotex, emma, frame_cnn, tsav, tsav_weights
from models.dan import load_dan
from tasks import OutputLayout, get_layout, layout_for_num_outputs
from utils.checkpoint import CheckpointError, check_keys, read_checkpoint, state_dict_of
from utils.inputs import InputSpec


@dataclass(frozen=True)
class Family:
    cls: type[nn.Module]
    detect: Callable[[Mapping[str, Tensor]], bool]
    infer_layout: Callable[[Mapping[str, Tensor], str | Path], OutputLayout]
    default_input: Callable[[], InputSpec]
    # constructor options a state dict implies (e.g. EMMA's ViT size), for loading it
    options_of: Callable[[Mapping[str, Tensor]], dict] = lambda state: {}
    variants: tuple[str, ...] = ()  # model sizes build_model(variant=...) takes (none: one size)


def _frame_layout(state: Mapping[str, Tensor], path: str | Path) -> OutputLayout:
    layout = layout_for_num_outputs(state["head.1.weight"].shape[0])
    if layout is None:
        raise CheckpointError(f"{path}: unknown output layout for {state['head.1.weight'].shape[0]} outputs "
                              "(pass layout=...)")
    return layout


MODELS: dict[str, Family] = {
    "tsav": Family(tsav.TwoStreamAuralVisualModel, lambda s: tsav_weights.detect_arch(s) == "tsav",
                   lambda s, p: tsav_weights.infer_layout("tsav", s, p), lambda: tsav.default_input("tsav")),
    "mtmt": Family(tsav.TwoStreamAuralVisualSelfCure, lambda s: tsav_weights.detect_arch(s) == "mtmt",
                   lambda s, p: tsav_weights.infer_layout("mtmt", s, p), lambda: tsav.default_input("mtmt")),
    "resnet18": Family(frame_cnn.FrameResNet, frame_cnn.detect_frame_resnet, _frame_layout,
                       lambda: InputSpec.frame(size=112)),
    "resnet50": Family(frame_cnn.FrameResNet50, frame_cnn.detect_frame_resnet50, _frame_layout,
                       lambda: InputSpec.frame(size=112)),
    "emma": Family(emma.EMMA, emma.detect_emma, emma.infer_layout, lambda: InputSpec.frame(size=224),
                   lambda state: {"variant": emma.variant_of(state)}, tuple(emma.VARIANTS)),
    "cotex": Family(cotex.CoTEX, cotex.detect_state, lambda s, p: get_layout("lsd"),
                    lambda: InputSpec.frame(size=224), cotex.options_of, tuple(cotex.SIZES)),
    "cnu": Family(cnu.CNU, cnu.detect_state, lambda s, p: get_layout(cnu.layout_name(s)),
                  lambda: InputSpec.frame_block(cnu.BLOCK_LEN, size=224, block="selected"), cnu.options_of,
                  tuple(cnu.VARIANTS)),
}


def default_input(name: str) -> InputSpec:
    """The input a model family takes unless the geometry flags say otherwise (its published one)."""
    return _family(name).default_input()


def input_kind(name: str) -> str:
    """The input kind a model family takes (before any geometry flag)."""
    return _family(name).default_input().kind


def default_size(name: str) -> int:
    """The frame size a model family takes unless --size says otherwise (EMMA: 224; the others: 112)."""
    return _family(name).default_input().size


def _family(name: str) -> Family:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(MODELS)})")
    return MODELS[name]


def build_model(name: str, layout: str | OutputLayout, dropout: float = 0.0, input_spec: InputSpec | None = None,
                video_init: str | Path | None = None, audio_init: str | Path | None = None,
                backbone_init: str | Path | None = None, dan_init: str | Path | None = None, variant: str | None = None,
                options: Mapping[str, object] | None = None) -> nn.Module:
    """A fresh model ``name`` for ``layout`` and ``input_spec`` (its family's default when None), optionally
    initialised from local weight files: torchvision Kinetics/ImageNet (tsav, mtmt, resnet18, resnet50); for emma
    an MAE ViT (``backbone_init``) and DAN's AffectNet-8 file (``dan_init``); for cotex an MAE ViT into every peer.
    For cnu a face-network file (``models.cnu.load_face_net``: torchvision or VGGFace2 ResNet-50, a CNU face net).
    ``variant``: the size of a family that has several (emma: base, small, tiny; cotex: base, tiny; cnu: base, small);
    ``options``: further constructor options (e.g. emma's ``dan_bn``, cotex's ``peers``)."""
    family = _family(name)
    kwargs = dict(options or {})
    if variant is not None:
        if variant not in family.variants:
            raise ValueError(f"model {name} has no size {variant!r} (its sizes: {', '.join(family.variants) or 'one'})")
        kwargs["variant"] = variant
    model = family.cls(layout=layout, dropout=dropout, input_spec=input_spec or family.default_input(), **kwargs)
    if dan_init and name != "emma":
        raise ValueError(f"--dan-init is for emma, not {name}")
    inits = {"video_init": video_init, "audio_init": audio_init, "backbone_init": backbone_init}
    given = [k for k, v in inits.items() if v]
    if name in ("tsav", "mtmt"):
        if backbone_init:
            raise ValueError(f"--backbone-init is for frame models; {name} takes --video-init/--audio-init")
        if video_init:
            tsav_weights.init_video_from(model, video_init)
        if audio_init:
            tsav_weights.init_audio_from(model, audio_init)
    elif name == "cnu":
        if video_init or audio_init:
            raise ValueError("cnu takes its face network from --backbone-init (torchvision/VGGFace2 ResNet-50 or a "
                             "cnu face network)")
        if backbone_init:
            cnu.load_face_net(model, backbone_init)
    elif name in ("emma", "cotex"):
        if video_init or audio_init:
            raise ValueError(f"--video-init/--audio-init are for tsav/mtmt; {name} takes --backbone-init (an MAE "
                             "ViT)" + (" and --dan-init" if name == "emma" else ""))
        if name == "cotex":
            if backbone_init:
                cotex.load_mae(model, backbone_init)
            return model
        if backbone_init:
            emma.load_mae(model, backbone_init)
        if dan_init:
            load_dan(model.cnn, dan_init)
    elif given:
        if video_init or audio_init:
            raise ValueError(f"--video-init/--audio-init are for tsav/mtmt; {name} takes --backbone-init")
        frame_cnn.init_backbone_from(model, backbone_init)
    return model


def detect_family(state: Mapping[str, Tensor]) -> str | None:
    return next((name for name, f in MODELS.items() if f.detect(state)), None)


def stored_input(obj) -> InputSpec | None:
    """The input settings a train.py checkpoint stores ('input', or 'clip' in files of earlier versions)."""
    if not isinstance(obj, Mapping):
        return None
    stored = obj.get("input", obj.get("clip"))
    return InputSpec.from_dict(stored) if isinstance(stored, Mapping) else None


# A file without our settings (no 'arch'/'input' entries) of these families and layouts is a published
# checkpoint: it is run as its authors ran it, by their decision rule and TSAV's per-frame audio window.
PUBLISHED_SYSTEMS = {("tsav", "abaw2020"): "tsav2020", ("mtmt", "mtmt"): "mtmt2021", ("emma", "emma"): "emma"}


def published_system(obj, arch: str, layout: OutputLayout) -> str | None:
    """The published system (its decision profile's name) a checkpoint is, or None for one of ours."""
    if isinstance(obj, Mapping) and ("arch" in obj or "input" in obj or "clip" in obj):
        return None
    return PUBLISHED_SYSTEMS.get((arch, layout.name))


def load_model(path: str | Path, layout: str | OutputLayout | None = None, trust_pickle: bool = False) -> nn.Module:
    """Any model checkpoint (train.py's best/last, or a published file) → the model, loaded strictly, eval, CPU.

    The family comes from the file's 'arch' entry or its keys; the layout from ``layout``, else the file's
    'layout' entry, else the head sizes; the input from the file's settings, else the family's published one.
    A published checkpoint (``published_system``) gets its authors' decision profile and the reference audio
    window; CoTEX's published file (a list of peer state dicts) is its N-peer model (argmax of the summed
    logits). The caller may override either (test_val_aff2.py --decision, --audio-window).
    """
    path = Path(path)
    obj = read_checkpoint(path, trust_pickle=trust_pickle, safe_globals=[argparse.Namespace])  # e.g. CoTEX 'args'
    if cotex.detect_cotex(obj):  # the published CoTEX file: a list of peer state dicts
        if layout is not None and get_layout(layout).name != "lsd":
            raise CheckpointError(f"{path}: a CoTEX checkpoint has the layout 'lsd', not {get_layout(layout).name!r}")
        return cotex.published_model(obj, path)
    state = state_dict_of(obj, path)
    arch = obj.get("arch") if isinstance(obj, Mapping) and obj.get("arch") in MODELS else detect_family(state)
    if arch is None:
        raise CheckpointError(f"{path}: unknown checkpoint layout (not a {', '.join(MODELS)} state dict: e.g. "
                              "TSAV 'fc.1.*' or MTMT 'fc_ex.1.*'/'SELayerC' keys)")
    family = MODELS[arch]
    if layout is None:  # our own training checkpoints record their layout next to the weights
        stored = obj.get("layout") if isinstance(obj, Mapping) else None
        layout = stored if isinstance(stored, str) else family.infer_layout(state, path)
    try:
        layout = get_layout(layout)
        published = published_system(obj, arch, layout)
        spec = stored_input(obj) or family.default_input()
        if published and spec.has_audio:  # the audio its authors computed (TSAV's per-frame window)
            spec = replace(spec, audio_window="reference")
        with torch.device("meta"):  # no random init: every tensor comes from the file
            stored = obj.get("options") if isinstance(obj, Mapping) else None  # options a model keeps in settings()
            options = {**(stored if isinstance(stored, Mapping) else {}), **family.options_of(state)}
            model = family.cls(layout=layout, input_spec=spec, **options)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None
    expected = model.state_dict()
    check_keys(expected, state, path, f"{arch} with layout {layout.name!r}")
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    stored_decision = obj.get("decision") if isinstance(obj, Mapping) else None
    if published or isinstance(stored_decision, str):
        model.decision = published or stored_decision
    return model.eval()
