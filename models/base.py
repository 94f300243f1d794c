"""The plug-in contract of a model: what the training engine, validation, inference and the bench rely on.

A model of this codebase is an ``nn.Module`` that also declares

- ``input_spec`` (``utils.inputs.InputSpec``): its input kind and geometry; the dataset and inference
  serve exactly that (a frame model gets uint8 frames, no mask channel and no audio window);
- ``prepare(raw, device, view)``: its on-device step from a raw batch (uint8 pixels, dB audio, drawn
  augmentation factors) to the dict of inputs ``forward`` takes; ``view='teacher'`` gives the mean teacher's
  view of the same frames;
- ``layout`` (``tasks.OutputLayout``): the meaning of its output columns;
- ``decision`` (a ``utils.outputs`` profile name): how raw outputs become VA values, EXPR classes, AU 0/1;
- optionally ``param_groups(base_lr)`` (``utils.optim``), ``regularization(out)`` (an extra loss term of
  the model itself, e.g. MTMT's rank term), ``make_loss(weights)`` (a supervised loss of its own instead of
  ``models.losses.MultiTaskLoss``, e.g. CNU_ADL's with its auxiliary head) and ``to_channels_last()``.

Nothing outside a model's own module knows the names of its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from tasks import OutputLayout
from utils.inputs import InputSpec


class AffectModel(nn.Module):
    """Base class of the models: default hooks (no regularization, channels-last a no-op)."""

    arch: str = ""
    decision: str = "default"
    input_spec: InputSpec
    layout: OutputLayout

    def prepare(self, raw: Mapping[str, Tensor], device: torch.device, view: str = "student",
                channels_last: bool = False) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define prepare()")

    def regularization(self, out: Tensor | tuple) -> Tensor | None:
        """An extra loss term the model defines on its own outputs (None: none)."""
        return None

    def make_loss(self, weights: Mapping[str, float] | None = None) -> nn.Module | None:
        """The supervised loss the model brings (criterion(outputs, targets, valid) → (total, parts), with a
        ``weights`` dict), or None: the engine's ``MultiTaskLoss`` from the --loss flags."""
        return None

    def to_channels_last(self) -> AffectModel:
        return self

    def view_rng_state(self) -> Tensor | None:
        """State of the generator the model draws its training views from (None: it has none); a checkpoint
        keeps it so that a resumed run draws the views the uninterrupted run would have drawn."""
        return None

    def set_view_rng_state(self, state: Tensor) -> None:
        raise ValueError(f"{type(self).__name__} draws no training views of its own: nothing to restore")

    def settings(self) -> dict:
        """What a checkpoint stores next to the weights to rebuild this model (arch, layout, input)."""
        return {"arch": self.arch, "layout": self.layout.name, "input": self.input_spec.to_dict(),
                "decision": self.decision}


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


def model_input(model: nn.Module) -> InputSpec:
    spec = getattr(unwrap_model(model), "input_spec", None)
    if spec is None:
        raise ValueError(f"{type(model).__name__} declares no input_spec")
    return spec


def prepare_inputs(model: nn.Module, raw: Mapping[str, Tensor], device: torch.device, view: str = "student",
                   channels_last: bool = False) -> dict[str, Tensor]:
    """``raw`` → the inputs dict of ``model`` (wrapped or not) via its ``prepare`` hook."""
    return unwrap_model(model).prepare(raw, device, view=view, channels_last=channels_last)
