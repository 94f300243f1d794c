"""Confidence-threshold policies and the masked loss of pseudo-labelling (issue 15, DTM reconstruction).

A teacher's class probabilities on the weak view of an unlabelled sample give a pseudo-label (the argmax),
kept only where the top probability reaches the threshold of that class: ``mask = max p ≥ T(argmax p)``.
DTM's own rule is not published; these are the rule families its README wording matches, each as its
reference code computes it (see each class for the facts and the update order):

- ``fixed``: T(c) = τ (FixMatch);
- ``flexmatch``: curriculum thresholds from how many pool samples each class has claimed (FlexMatch);
- ``freematch``: self-adaptive thresholds from EMAs of the model's confidence (FreeMatch);
- ``adacm``: per-class thresholds from the EMA model's confidence on the correctly predicted labelled
  samples, refreshed at epoch ends (Ada-CM, CVPR 2022).

Every policy keeps its state on the CPU in float64 (the caller's probabilities are copied there, a B×C
copy per step) so that hand computations match and checkpoints do not depend on the device; the ≥ tests
run in the probabilities' own precision (at least float32). With
several processes, gather the batch's probabilities and uids of every rank before ``mask`` (FreeMatch's
reference gathers too) so that all ranks hold the same state, then keep the local rows.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

POLICIES = ("fixed", "flexmatch", "freematch", "adacm")
FREEMATCH_INIT = ("uniform", "one")
ADACM_EMPTY = ("floor", "keep")


def _top(probs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(probabilities float64 [B, C], confidence float64 [B], argmax long [B]) on the CPU, detached."""
    p = probs.detach().to("cpu", torch.float64)
    if p.shape[0] == 0:
        return p, p.new_zeros(0), torch.zeros(0, dtype=torch.long)
    conf, pseudo = p.max(dim=1)
    return p, conf, pseudo


def _cmp_dtype(probs: Tensor) -> torch.dtype:
    """Comparisons run in the probabilities' precision (at least float32), as the references compare:
    a float32 0.7 then reaches τ = 0.7."""
    return torch.promote_types(probs.dtype, torch.float32) if probs.is_floating_point() else torch.float64


class ThresholdPolicy(ABC):
    """Base: per-class thresholds, a batch's mask and pseudo-labels, state for checkpoints."""

    name = "base"

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}")
        self.num_classes = num_classes

    @abstractmethod
    def thresholds(self) -> Tensor:
        """Current thresholds T(c), float64 [C] on the CPU."""

    def _check(self, probs: Tensor) -> None:
        if probs.dim() != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"expected B×{self.num_classes} probabilities, got shape {tuple(probs.shape)}")

    def _decide(self, probs: Tensor, conf: Tensor, pseudo: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        dt = _cmp_dtype(probs)
        accept = conf.to(dt) >= t.to(dt)[pseudo]  # ≥ as in every reference
        return accept.to(probs.device), pseudo.to(probs.device)

    def mask(self, probs: Tensor, uids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(mask bool [B], pseudo long [B]) of the teacher's probabilities ``probs`` (B×C, rows sum to 1);
        ``uids`` are the samples' pool indices (needed by flexmatch). Updates per-batch state."""
        self._check(probs)
        _, conf, pseudo = _top(probs)
        return self._decide(probs, conf, pseudo, self.thresholds())

    def end_epoch(self, epoch: int, probs: Tensor, labels: Tensor) -> None:  # noqa: B027 (a no-op by default)
        """Epoch-end hook (only adacm uses it)."""

    def describe(self) -> str:
        return self.name

    def _params(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.name, "num_classes": self.num_classes, **self._params()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` (the checkpoint's hyper-parameters win, so a resume continues exactly)."""
        if state.get("policy") != self.name:
            raise ValueError(f"state of threshold policy {state.get('policy')!r}, this is {self.name!r}")
        if int(state["num_classes"]) != self.num_classes:
            raise ValueError(f"state for {state['num_classes']} classes, this policy has {self.num_classes}")


class Fixed(ThresholdPolicy):
    """``fixed`` (FixMatch): T(c) = τ for every class; no state."""

    name = "fixed"

    def __init__(self, num_classes: int, tau: float = 0.95) -> None:
        super().__init__(num_classes)
        self.tau = float(tau)

    def thresholds(self) -> Tensor:
        return torch.full((self.num_classes,), self.tau, dtype=torch.float64)

    def describe(self) -> str:
        return f"fixed(τ={self.tau:g})"

    def _params(self) -> dict[str, Any]:
        return {"tau": self.tau}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.tau = float(state["tau"])


class FlexMatch(ThresholdPolicy):
    """``flexmatch``: curriculum pseudo-labelling thresholds (Zhang et al., NeurIPS 2021).

    State: for each pool sample (by its index ``uid``) the last class it was predicted with confidence ≥ τ,
    −1 ("none") until then. σ(c) = number of samples whose state is c; β(c) = σ(c) / max(max_c σ, number of
    "none") with warm-up, σ(c) / max_c σ without; 0/0 is 0 (so the all-"none" start gives β = 0 either way);
    T(c) = τ · β(c) / (2 − β(c)) (the convex mapping).

    Order (reference facts: TorchSSL models/flexmatch/flexmatch.py computes the class-wise β at the top of a
    step from the stored labels, masks the batch with it, then stores the batch's labels; USB's
    FlexMatchThresholdingHook.masking masks first, then stores and recomputes): a batch is masked with the
    thresholds of the state BEFORE its own update; then every uid of the batch whose confidence ≥ τ gets its
    argmax (a uid twice in a batch: the later row wins). At the start every T(c) = 0, so all rows pass.

    One deliberate difference: both references skip the recomputation while a single value covers the whole
    pool (meant for the all-"none" start, where it changes nothing); when every pool sample holds the same
    class they keep stale β, we apply the formula (β = 1 for that class, 0 for the others).
    """

    name = "flexmatch"

    def __init__(self, num_classes: int, num_unlabelled: int, tau: float = 0.95, warmup: bool = True) -> None:
        super().__init__(num_classes)
        if num_unlabelled < 1:
            raise ValueError(f"flexmatch needs an unlabelled pool, got {num_unlabelled} samples")
        self.tau = float(tau)
        self.warmup = bool(warmup)
        self.selected = torch.full((num_unlabelled,), -1, dtype=torch.long)

    @property
    def num_unlabelled(self) -> int:
        return self.selected.numel()

    def counts(self) -> tuple[Tensor, int]:
        """(σ long [C], number of "none")."""
        chosen = self.selected[self.selected >= 0]
        return torch.bincount(chosen, minlength=self.num_classes), self.num_unlabelled - chosen.numel()

    def beta(self) -> Tensor:
        sigma, none = self.counts()
        denom = int(sigma.max())
        if self.warmup:
            denom = max(denom, none)
        if denom == 0:  # 0/0 := 0
            return torch.zeros(self.num_classes, dtype=torch.float64)
        return sigma.to(torch.float64) / denom

    def thresholds(self) -> Tensor:
        b = self.beta()
        return self.tau * b / (2.0 - b)

    def mask(self, probs: Tensor, uids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(probs)
        if uids is None:
            raise ValueError("flexmatch needs the samples' pool indices (uids)")
        uids = uids.detach().to("cpu", torch.long).reshape(-1)
        if uids.numel() != probs.shape[0]:
            raise ValueError(f"{uids.numel()} uids for {probs.shape[0]} rows")
        if uids.numel() and (int(uids.min()) < 0 or int(uids.max()) >= self.num_unlabelled):
            raise ValueError(f"uids must lie in [0, {self.num_unlabelled}), got {int(uids.min())}..{int(uids.max())}")
        _, conf, pseudo = _top(probs)
        out = self._decide(probs, conf, pseudo, self.thresholds())  # thresholds before this batch's update
        dt = _cmp_dtype(probs)
        sure = conf.to(dt) >= torch.tensor(self.tau, dtype=dt)
        if bool(sure.any()):
            ids, rows = uids[sure], torch.nonzero(sure).reshape(-1)
            unique, inverse = torch.unique(ids, return_inverse=True)
            last = torch.full((unique.numel(),), -1, dtype=torch.long).scatter_reduce(0, inverse, rows, "amax")
            self.selected[unique] = pseudo[last]
        return out

    def describe(self) -> str:
        return f"flexmatch(τ={self.tau:g}, {'warm-up' if self.warmup else 'no warm-up'}, pool {self.num_unlabelled})"

    def _params(self) -> dict[str, Any]:
        return {"tau": self.tau, "warmup": self.warmup, "selected": self.selected.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        selected = torch.as_tensor(state["selected"], dtype=torch.long).reshape(-1)
        if selected.numel() != self.num_unlabelled:
            raise ValueError(f"state for a pool of {selected.numel()} samples, this one has {self.num_unlabelled}")
        self.tau, self.warmup, self.selected = float(state["tau"]), bool(state["warmup"]), selected.clone()


class FreeMatch(ThresholdPolicy):
    """``freematch``: self-adaptive thresholds (Wang et al., ICLR 2023).

    EMA with momentum m of the batch's mean top confidence, τ_t = m·τ_{t−1} + (1 − m)·mean_b max_c p_b(c), and
    of its mean probability vector, p̃_t = m·p̃_{t−1} + (1 − m)·mean_b p_b; T(c) = τ_t · p̃_t(c) / max_c p̃_t(c).
    Start: τ_0 = p̃_0(c) = 1/C (``init="uniform"``, the paper and USB's FreeMatchThresholdingHook) or 1
    (``init="one"``, an earlier USB revision).

    Order (reference fact: USB's FreeMatchThresholdingHook.masking calls its update with the batch's
    probabilities first, then masks with the updated τ_t and p̃_t): update, then threshold, so a batch is
    masked with thresholds that include its own statistics. An empty batch changes nothing.
    """

    name = "freematch"

    def __init__(self, num_classes: int, m: float = 0.999, init: str = "uniform") -> None:
        super().__init__(num_classes)
        if init not in FREEMATCH_INIT:
            raise ValueError(f"freematch init must be one of {FREEMATCH_INIT}, got {init!r}")
        if not 0.0 <= m < 1.0:
            raise ValueError(f"freematch momentum must lie in [0, 1), got {m}")
        self.m = float(m)
        self.init = init
        start = 1.0 / num_classes if init == "uniform" else 1.0
        self.time_p = start  # τ_t
        self.p_model = torch.full((num_classes,), start, dtype=torch.float64)  # p̃_t
        self.steps = 0

    def thresholds(self) -> Tensor:
        return self.time_p * self.p_model / self.p_model.max()

    def mask(self, probs: Tensor, uids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(probs)
        p, conf, pseudo = _top(probs)
        if conf.numel():
            self.time_p = self.m * self.time_p + (1.0 - self.m) * float(conf.mean())
            self.p_model = self.m * self.p_model + (1.0 - self.m) * p.mean(dim=0)
            self.steps += 1
        return self._decide(probs, conf, pseudo, self.thresholds())  # thresholds after this batch's update

    def describe(self) -> str:
        return f"freematch(m={self.m:g}, init {self.init})"

    def _params(self) -> dict[str, Any]:
        return {"m": self.m, "init": self.init, "time_p": self.time_p, "p_model": self.p_model.clone(),
                "steps": self.steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.m, self.init, self.time_p = float(state["m"]), str(state["init"]), float(state["time_p"])
        self.p_model = torch.as_tensor(state["p_model"], dtype=torch.float64).reshape(self.num_classes).clone()
        self.steps = int(state["steps"])


class AdaCM(ThresholdPolicy):
    """``adacm``: per-class thresholds from the labelled training set (Ada-CM, Li et al., CVPR 2022).

    Thresholds start at ``floor`` (0.8) and change only in ``end_epoch(epoch, probs, labels)``, called after
    each training epoch with the EMA model's probabilities over the labelled training set:
    T(c) = max(floor, scale · mean top confidence of the samples of class c predicted correctly / (1 + e^−epoch)),
    with ``epoch`` the number of epochs completed (1 after the first, as the reference's loop numbers them).
    A class without a correctly predicted sample goes back to ``floor`` (``empty="floor"``, what the
    reference hangyu94/Ada-CM main.py does) or keeps its threshold (``empty="keep"``). Labels < 0 are ignored.
    Within an epoch the thresholds are fixed, so ``mask`` has no state to update.
    """

    name = "adacm"

    def __init__(self, num_classes: int, floor: float = 0.8, scale: float = 0.97, empty: str = "floor") -> None:
        super().__init__(num_classes)
        if empty not in ADACM_EMPTY:
            raise ValueError(f"adacm empty-class rule must be one of {ADACM_EMPTY}, got {empty!r}")
        self.floor, self.scale, self.empty = float(floor), float(scale), empty
        self.t = torch.full((num_classes,), self.floor, dtype=torch.float64)
        self.epoch = 0  # last epoch given to end_epoch

    def thresholds(self) -> Tensor:
        return self.t.clone()

    def end_epoch(self, epoch: int, probs: Tensor, labels: Tensor) -> None:
        self._check(probs)
        labels = labels.detach().to("cpu", torch.long).reshape(-1)
        if labels.numel() != probs.shape[0]:
            raise ValueError(f"{labels.numel()} labels for {probs.shape[0]} rows")
        _, conf, pred = _top(probs)
        right = (pred == labels) & (labels >= 0)
        ramp = 1.0 + math.exp(-float(epoch))
        for c in range(self.num_classes):
            sel = right & (labels == c)
            if bool(sel.any()):
                self.t[c] = max(self.floor, self.scale * float(conf[sel].mean()) / ramp)
            elif self.empty == "floor":
                self.t[c] = self.floor
        self.epoch = int(epoch)

    def describe(self) -> str:
        return f"adacm(floor {self.floor:g}, scale {self.scale:g}, empty class → {self.empty})"

    def _params(self) -> dict[str, Any]:
        return {"floor": self.floor, "scale": self.scale, "empty": self.empty, "t": self.t.clone(),
                "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.floor, self.scale, self.empty = float(state["floor"]), float(state["scale"]), str(state["empty"])
        self.t = torch.as_tensor(state["t"], dtype=torch.float64).reshape(self.num_classes).clone()
        self.epoch = int(state["epoch"])


def build_policy(name: str, num_classes: int, num_unlabelled: int = 0, tau: float = 0.95, *,
                 warmup: bool = True, momentum: float = 0.999, init: str = "uniform", floor: float = 0.8,
                 scale: float = 0.97, empty: str = "floor") -> ThresholdPolicy:
    """The policy ``name`` (one of POLICIES); ``tau`` serves fixed and flexmatch, the rest one policy each."""
    if name == "fixed":
        return Fixed(num_classes, tau)
    if name == "flexmatch":
        return FlexMatch(num_classes, num_unlabelled, tau, warmup)
    if name == "freematch":
        return FreeMatch(num_classes, momentum, init)
    if name == "adacm":
        return AdaCM(num_classes, floor, scale, empty)
    raise ValueError(f"threshold policy must be one of {POLICIES}, got {name!r}")


def masked_ce(student_logits: Tensor, pseudo: Tensor, mask: Tensor) -> Tensor:
    """mean over the batch of mask · CE(student, pseudo), divided by B (not by the accepted count, as FixMatch).

    Rejected rows contribute exactly 0 and no gradient; with none accepted the result is a 0 that still
    belongs to the student's graph (backward runs and leaves zero gradients).
    """
    b = student_logits.shape[0]
    if b == 0:
        return student_logits.float().sum()
    keep = mask.to(student_logits.device).bool()
    # Rejected rows get zero logits before the CE and a zero after it (where, not ×), so that neither their
    # value nor their gradient can be inf/NaN, and no boolean indexing (no device sync).
    logits = torch.where(keep[:, None], student_logits.float(), torch.zeros((), device=student_logits.device))
    ce = F.cross_entropy(logits, pseudo.to(student_logits.device).long(), reduction="none")
    return torch.where(keep, ce, torch.zeros_like(ce)).sum() / b


def pseudo_label_loss(student_logits: Tensor, probs_teacher: Tensor, uids: Tensor | None,
                      policy: ThresholdPolicy, lambda_u: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """(λ_u · masked CE, mask, pseudo): the policy decides (and updates) on the teacher's probabilities."""
    mask, pseudo = policy.mask(probs_teacher.detach(), uids)
    return lambda_u * masked_ce(student_logits, pseudo, mask), mask, pseudo


def acceptance(mask: Tensor, pseudo: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per class of the pseudo-label: (accepted, predicted) counts, long [C] on the CPU. Sum over an epoch
    and divide for the acceptance rate."""
    pseudo = pseudo.detach().cpu().long().reshape(-1)
    keep = mask.detach().cpu().bool().reshape(-1)
    return (torch.bincount(pseudo[keep], minlength=num_classes),
            torch.bincount(pseudo, minlength=num_classes))


def precision(mask: Tensor, pseudo: Tensor, truth: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """Per class of the pseudo-label, over accepted rows whose truth is known (≥ 0): (correct, accepted)
    counts, long [C] on the CPU."""
    pseudo = pseudo.detach().cpu().long().reshape(-1)
    truth = truth.detach().cpu().long().reshape(-1)
    known = mask.detach().cpu().bool().reshape(-1) & (truth >= 0)
    hit = known & (pseudo == truth)
    return (torch.bincount(pseudo[hit], minlength=num_classes),
            torch.bincount(pseudo[known], minlength=num_classes))


def rate(num: Tensor, den: Tensor) -> Tensor:
    """num / den per class as float64, NaN where den is 0 (nothing to measure)."""
    num, den = num.to(torch.float64), den.to(torch.float64)
    return torch.where(den > 0, num / den.clamp(min=1), torch.full_like(den, math.nan))
