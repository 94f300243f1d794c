"""Semi-supervised methods as plug-ins of the training engine (``--ssl``).

A method may ask the dataset for extra views of a sample (``teacher_view``), may want frames without
any label drawn too (``uses_unlabelled``), adds its loss terms to the supervised loss of a batch
(``extra_loss``), acts after every optimiser step (``after_step``), may offer another model to validate and
save (``evaluated``), and keeps a state that checkpoints store and ``--resume`` restores. Today:

- ``none``: supervised training only;
- ``mean_teacher`` (MTMT, ABAW 2021): an EMA teacher of the student (``models.mean_teacher``); with
  ``--consistency-weight`` > 0 the student also matches the teacher's outputs on its own view of the same
  frames (on the entries without a label, or all of them), ramped up over ``--rampup-epochs``; with weight
  0 it is only a steadier model to validate. MTMT's published variants: ``--teacher-bn train``,
  ``--rampup-by epoch`` (the weight of the whole epoch number, constant within an epoch), ``--ccc-loss
  reference`` and ``--expr-loss-classes 8`` (README, reproducing MTMT).

- ``cotex`` (masked CoTEX, ABAW4 LSD): co-training of the peers of ``--model cotex`` (``models.cotex``): the
  method replaces the supervised loss (``supervised_loss``) by the peers' mean cross-entropy over the labelled
  rows plus ``--lambda-js`` × their Jensen–Shannon agreement over every row, so rows without a label teach
  through the agreement only (that extension is ours).

- ``pseudo_label`` (DTM reconstruction, ABAW5): each batch brings ``--mu`` × as many unlabelled faces (the engine
  draws them, ``app.unlabelled_run``) as a weak and a strong view; the teacher (the EMA teacher, or the student
  without gradient) predicts on the weak view, the policy of ``--threshold`` (``models.pseudo_label``) keeps the
  confident argmaxes, and the student learns them from the strong view: + λ_u · mean(mask · CE).

A method may replace the supervised loss of a batch (``supervised_loss``) and may ask for more inputs in the
student's forward pass (``extra_inputs``: e.g. the unlabelled strong views, run in one batch with the labelled
ones so that BatchNorm and DDP see one forward); their outputs reach ``extra_loss`` as ``extra_out``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

from models.base import unwrap_model
from models.cotex import cotex_loss
from models.mean_teacher import MeanTeacher, consistency_loss, sigmoid_rampup
from models.pseudo_label import acceptance, build_policy, masked_ce, precision, pseudo_label_loss, rate
from tasks import OutputLayout
from utils import dist
from utils.inputs import PIXELS
from utils.outputs import split_outputs


class Supervised:
    """``--ssl none``: no extra view, no extra term, the student is the model."""

    name = "none"
    teacher_view = False
    uses_unlabelled = False
    default_select = "student"
    needs_pool = False  # whether the engine must draw unlabelled faces for every batch (batch["unlabelled"])
    log_fields: tuple[str, ...] = ()  # columns of log.csv the method's terms add

    def __init__(self, model: nn.Module, args: argparse.Namespace, pool_size: int = 0) -> None:
        self.args = args

    def extra_inputs(self, raw: Mapping) -> list[tuple[str, dict]]:
        """(name, raw batch) of further inputs for the student's forward pass (none by default)."""
        return []

    def supervised_loss(self, out: Tensor | tuple, targets: Mapping[str, Tensor], valid: Mapping[str, Tensor],
                        criterion: Callable) -> tuple[Tensor, dict[str, Tensor]]:
        """(loss, parts) of a batch's labels; the engine's masked multi-task loss unless a method replaces it."""
        return criterion(out, targets, valid)

    def extra_loss(self, out: Tensor | tuple, raw: Mapping[str, Tensor], prepare: Callable[[str], dict],
                   valid: Mapping[str, Tensor], layout: OutputLayout, weights: Mapping[str, float],
                   epoch_progress: float, autocast, extra_out: Mapping[str, Tensor] | None = None
                   ) -> tuple[Tensor | None, dict]:
        """(term to add to the batch loss or None, logs). ``prepare(view[, raw])`` gives the model inputs of a
        view (of ``raw``, default the batch); ``extra_out``: the student's outputs of ``extra_inputs``."""
        return None, {}

    def end_epoch(self, epoch: int, labelled_pass: Callable[[nn.Module], tuple[Tensor, Tensor]]) -> dict:
        """Called after each training epoch; ``labelled_pass(model)`` gives (probabilities, labels) of the
        labelled training frames. Returns the epoch's log columns."""
        return {}

    def after_step(self, model: nn.Module) -> None:
        pass

    def models(self) -> dict[str, nn.Module]:
        """Models besides the student that the method keeps (their buffers are synchronised across ranks)."""
        return {}

    def evaluated(self, model: nn.Module, select: str) -> nn.Module:
        return unwrap_model(model)

    def checkpoint_entries(self) -> dict:
        return {}

    def restore(self, ckpt: Mapping) -> None:
        pass

    @classmethod
    def has_teacher(cls, args: argparse.Namespace) -> bool:
        """Whether this run of the method keeps a teacher (one to validate and save with --select teacher)."""
        return cls.default_select == "teacher"

    @classmethod
    def select_for(cls, args: argparse.Namespace) -> str:
        """The model --select auto validates and saves: the teacher when the method keeps one."""
        return "teacher" if cls.has_teacher(args) else "student"

    @staticmethod
    def check_resume(ckpt: Mapping) -> str | None:
        """A reason the checkpoint was not saved by this method, or None."""
        if ckpt.get("teacher") is not None:
            return "saved with a mean teacher"
        return None


class MeanTeacherMethod(Supervised):
    name = "mean_teacher"
    teacher_view = True
    uses_unlabelled = True  # frames without labels still teach through the consistency term
    default_select = "teacher"

    def __init__(self, model: nn.Module, args: argparse.Namespace, pool_size: int = 0) -> None:
        super().__init__(model, args)
        # Namespaces built without the reproduction flags (older callers) get today's behaviour.
        bn = getattr(args, "teacher_bn", "eval")
        if bn == "train" and args.consistency_weight <= 0:  # its statistics would never move from the start
            raise ValueError("--teacher-bn train needs --consistency-weight > 0: the teacher's BatchNorm statistics "
                             "come only from the forward passes that make its targets")
        self.teacher = MeanTeacher(model, args.ema_decay, bn=bn)

    def extra_loss(self, out, raw, prepare, valid, layout, weights, epoch_progress, autocast, extra_out=None):
        args = self.args
        if args.consistency_weight <= 0:  # the teacher is only an EMA model
            return None, {}
        with autocast():
            t_out = self.teacher(prepare("teacher"))
        # MTMT's formula ramps the self-cure rank term together with the consistency terms.
        cons, _ = consistency_loss(out, t_out, valid, layout, only_missing=args.consistency == "missing",
                                   weights=weights, rank_weight=args.rank_weight, au_reduction=args.au_reduction,
                                   ccc=getattr(args, "ccc_loss", "ours"),
                                   expr_classes=getattr(args, "expr_loss_classes", 0))
        weight = sigmoid_rampup(ramp_position(epoch_progress, getattr(args, "rampup_by", "step")),
                                args.consistency_weight, args.rampup_epochs)
        return weight * cons, {"consistency": cons.detach(), "consistency_weight": weight}

    def after_step(self, model: nn.Module) -> None:
        self.teacher.update(model)

    def models(self) -> dict[str, nn.Module]:
        return {"teacher": self.teacher.teacher}

    def evaluated(self, model: nn.Module, select: str) -> nn.Module:
        return self.teacher.teacher if select == "teacher" else unwrap_model(model)

    def checkpoint_entries(self) -> dict:
        return {"teacher": self.teacher.state_dict()}

    def restore(self, ckpt: Mapping) -> None:
        self.teacher.load_state_dict(ckpt["teacher"])

    @staticmethod
    def check_resume(ckpt: Mapping) -> str | None:
        return None if ckpt.get("teacher") is not None else "saved without a mean teacher"


class CoTraining(Supervised):
    """``--ssl cotex``: the model's peers learn from the labels and from each other's predictions."""

    name = "cotex"
    uses_unlabelled = True  # rows without a label still teach through the agreement term
    log_fields = ("loss_js",)  # the agreement term before its weight (loss_expr: the peers' mean CE)

    def __init__(self, model: nn.Module, args: argparse.Namespace, pool_size: int = 0) -> None:
        super().__init__(model, args)
        bare = unwrap_model(model)
        if not hasattr(bare, "peer_logits"):
            raise ValueError(f"--ssl cotex co-trains the peers of --model cotex, not {type(bare).__name__}")
        self.lambda_js, self.js = getattr(args, "lambda_js", 100.0), getattr(args, "js", "published")

    def supervised_loss(self, out, targets, valid, criterion):
        if out.dim() != 3:
            raise ValueError("--ssl cotex needs each peer's logits (N×B×C, the model in training mode), got "
                             f"{tuple(out.shape)}")
        target = torch.where(valid["expr"].bool(), targets["expr"].long(), torch.full_like(targets["expr"].long(), -1))
        total, parts = cotex_loss(out, target, self.lambda_js, self.js)
        return total, {"expr": parts["ce"], "js": parts["js"]}

    @staticmethod
    def check_resume(ckpt: Mapping) -> str | None:
        return "saved with a mean teacher" if ckpt.get("teacher") is not None else None


class PseudoLabel(Supervised):
    """``--ssl pseudo_label``: confident teacher argmaxes on weak views teach the student on strong views."""

    name = "pseudo_label"
    needs_pool = True

    def __init__(self, model: nn.Module, args: argparse.Namespace, pool_size: int = 0) -> None:
        super().__init__(model, args)
        bare = unwrap_model(model)
        if bare.input_spec.kind != "frame" or not bare.layout.has("expr"):
            raise ValueError(f"--ssl pseudo_label pseudo-labels the EXPR classes of a frame model, not "
                             f"{type(bare).__name__} (input {bare.input_spec.kind!r}, layout {bare.layout.name!r})")
        if pool_size < 1:
            raise ValueError("--ssl pseudo_label needs unlabelled faces (training frames without an EXPR label, "
                             "or --unlabelled DIR)")
        self.model, self.layout, self.classes = model, bare.layout, bare.layout.expr_names
        self.teacher = MeanTeacher(model, args.ema_decay) if args.pl_teacher == "ema" else None
        self.policy = build_policy(args.threshold, len(self.classes), pool_size, args.tau)
        self.log_fields = ("loss_unlabelled", "accepted") + tuple(
            f"{what}_{c}" for what in ("threshold", "acceptance", "precision") for c in self.classes)
        self._reset_counts()

    @staticmethod
    def has_teacher(args: argparse.Namespace) -> bool:
        return args.pl_teacher == "ema"

    def _reset_counts(self) -> None:
        c = len(self.classes)
        self.counts = {k: torch.zeros(c, dtype=torch.long) for k in ("accepted", "predicted", "correct", "known")}

    def extra_inputs(self, raw):
        u = raw["unlabelled"]
        views = [("strong", {PIXELS: u["strong"]})]
        if self.teacher is None:  # the student without gradient: its weak-view outputs, detached
            views.insert(0, ("weak", {PIXELS: u["weak"]}))
        return views

    def extra_loss(self, out, raw, prepare, valid, layout, weights, epoch_progress, autocast, extra_out=None):
        u = raw["unlabelled"]
        if self.teacher is None:
            weak = split_outputs(extra_out["weak"], layout)["expr"].detach()
        else:
            with torch.no_grad(), autocast():
                weak = split_outputs(self.teacher(prepare("teacher", {PIXELS: u["weak"]})), layout)["expr"]
        probs = weak.float().softmax(dim=1)
        uids = u["uid"].to(probs.device)
        # every rank's rows update the policy, so that all ranks keep the same thresholds
        gathered = dist.all_gather_objects((probs.cpu(), uids.cpu()))  # [the local pair] in one process
        strong = split_outputs(extra_out["strong"], layout)["expr"]
        if len(gathered) == 1:
            loss, mask, pseudo = pseudo_label_loss(strong, probs, uids, self.policy, self.args.lambda_u)
        else:
            mask_all, pseudo_all = self.policy.mask(torch.cat([g[0] for g in gathered]),
                                                    torch.cat([g[1] for g in gathered]))
            start = sum(len(g[0]) for g in gathered[:torch.distributed.get_rank()])
            mask = mask_all[start:start + len(probs)].to(strong.device)
            pseudo = pseudo_all[start:start + len(probs)].to(strong.device)
            loss = self.args.lambda_u * masked_ce(strong, pseudo, mask)
        accepted, predicted = acceptance(mask, pseudo, len(self.classes))
        correct, known = precision(mask, pseudo, u["truth"], len(self.classes))
        for k, v in (("accepted", accepted), ("predicted", predicted), ("correct", correct), ("known", known)):
            self.counts[k] += v
        return loss, {"loss_unlabelled": loss.detach(), "accepted": mask.float().mean().detach()}

    def after_step(self, model: nn.Module) -> None:
        if self.teacher is not None:
            self.teacher.update(model)

    def models(self) -> dict[str, nn.Module]:
        return {} if self.teacher is None else {"teacher": self.teacher.teacher}

    def evaluated(self, model: nn.Module, select: str) -> nn.Module:
        return self.teacher.teacher if select == "teacher" and self.teacher is not None else unwrap_model(model)

    def end_epoch(self, epoch, labelled_pass):
        """Per class: the thresholds in force, the epoch's acceptance rate and pseudo-label precision (NaN where
        the truth is unknown); Ada-CM then refreshes its thresholds from the labelled training frames."""
        logs = {}
        for what, values in (("threshold", self.policy.thresholds()),
                             ("acceptance", rate(self.counts["accepted"], self.counts["predicted"])),
                             ("precision", rate(self.counts["correct"], self.counts["known"]))):
            logs.update({f"{what}_{c}": float(v) for c, v in zip(self.classes, values.tolist(), strict=True)})
        self._reset_counts()
        if self.args.threshold == "adacm":  # its reference counts epochs from 1 after the first
            probs, labels = labelled_pass(self.teacher.teacher if self.teacher is not None else self.model)
            self.policy.end_epoch(epoch + 1, probs, labels)
        return logs

    def checkpoint_entries(self) -> dict:
        out = {"policy": self.policy.state_dict()}
        if self.teacher is not None:
            out["teacher"] = self.teacher.state_dict()
        return out

    def restore(self, ckpt: Mapping) -> None:
        self.policy.load_state_dict(ckpt["policy"])
        if self.teacher is not None:
            self.teacher.load_state_dict(ckpt["teacher"])

    @staticmethod
    def check_resume(ckpt: Mapping) -> str | None:
        return None if ckpt.get("policy") is not None else "saved without a pseudo-label policy"


def ramp_position(epoch_progress: float, by: str) -> float:
    """Where the ramp-up stands: the fractional epoch of the step ('step', ours) or the whole epoch number
    ('epoch', MTMT: one weight per epoch, w(0) for the whole first epoch)."""
    if by == "step":
        return epoch_progress
    if by == "epoch":
        return float(math.floor(epoch_progress))
    raise ValueError(f"--rampup-by must be 'step' or 'epoch', got {by!r}")


METHODS: dict[str, type[Supervised]] = {"none": Supervised, "mean_teacher": MeanTeacherMethod, "cotex": CoTraining,
                                        "pseudo_label": PseudoLabel}


def build_method(name: str, model: nn.Module, args: argparse.Namespace, pool_size: int = 0) -> Supervised:
    """The method ``name`` for ``model`` (DDP-wrapped or not); ``pool_size``: unlabelled faces the engine draws."""
    if name not in METHODS:
        raise ValueError(f"unknown semi-supervised method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name](model, args, pool_size)


def uses_teacher_view(name: str) -> bool:
    return METHODS[name].teacher_view


def default_select(name: str) -> str:
    return METHODS[name].default_select
