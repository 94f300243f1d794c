"""Supervised multi-task losses (EXPR cross-entropy, AU binary cross-entropy, VA 1 − CCC), all masked.

Two published variants stay available for reproductions (README, reproducing MTMT): MTMT's VA loss
(``reference_ccc_loss``, ``--ccc-loss reference``) and its EXPR cross-entropy over all 8 logits of the mtmt
layout with the unused slot ignored as a target (``expr_classes=8``, ``--expr-loss-classes 8``).
EMMA's published losses are a third set (``MultiTaskLoss(kind='emma')``, ``--loss emma``): ``emma_ccc``
(unbiased statistics, ε 1e-4), the masked cross-entropy, and ``emma_au_bce`` (per-AU positive weights,
summed over the valid entries, divided by the batch size); task weights 1/1/1.

Validity is either given as boolean masks or read from the targets: EXPR outside [0, C), AU outside
[0, 1] and VA outside [−1, 1] (the −1/−5 sentinels, NaN) are invalid. An invalid entry contributes
nothing, to the loss or to any gradient, whatever its target or output value. A loss with nothing
valid is a zero that is still attached to the graph (so ``backward()`` works and gives zero gradients).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks import AU_NAMES_12, OutputLayout, get_layout
from utils.outputs import split_outputs, va_output

# MTMT's supervised total 3·EXPR + AU + VA.
DEFAULT_TASK_WEIGHTS = {"expr": 3.0, "au": 1.0, "va": 1.0}

CCC_LOSSES = ("ours", "reference")
EXPR_LOSS_CLASSES = (0, 8)  # 0: the classes the layout serves; 8: every logit of an 8-slot EXPR block (MTMT)

LOSS_KINDS = ("ours", "emma")  # --loss
# EMMA (ABAW4): every task weight 1, ε 1e-4 in its CCC, and per-AU positive weights (about the
# negative/positive ratio of each AU in s-Aff-Wild2 training), by AU name.
EMMA_TASK_WEIGHTS = {"expr": 1.0, "au": 1.0, "va": 1.0}
EMMA_CCC_EPS = 1e-4
EMMA_AU_POS_WEIGHT = dict(zip(AU_NAMES_12, (7.10, 15.64, 5.47, 2.80, 1.52, 1.89, 3.05, 34.05, 32.48, 36.77,
                                            0.58, 11.16), strict=True))

# EXPR class ids of the TSAV filtering rules (order of tasks.EXPR_NAMES_7).
NEUTRAL, HAPPINESS, SADNESS = 0, 4, 5


def _zero_like_graph(x: Tensor) -> Tensor:
    # A 0 that keeps x's graph: no NaN even if x holds NaN/inf (nothing is multiplied), zero gradients.
    return x.reshape(-1)[:0].sum()


def expr_valid_mask(target: Tensor, num_classes: int) -> Tensor:
    return (target >= 0) & (target < num_classes)


def au_valid_mask(target: Tensor) -> Tensor:
    return (target >= 0) & (target <= 1)


def va_valid_mask(target: Tensor) -> Tensor:
    return (target >= -1) & (target <= 1)


def entry_mask(valid: Tensor | None, target: Tensor, like: Tensor, default) -> Tensor:
    """Per-entry validity shaped like ``like`` (B×K): ``valid`` as given (one flag per sample or per entry)
    or, when None, ``default(target)``."""
    valid = (default(target) if valid is None else valid).bool()
    if valid.dim() == 1:  # one flag per sample
        valid = valid[:, None]
    return valid.expand_as(like)


def masked_cross_entropy(logits: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over the valid samples of B×C logits and B class ids."""
    if valid is None:
        valid = expr_valid_mask(target, logits.shape[-1])
    valid = valid.reshape(-1).bool()
    if not valid.any():
        return _zero_like_graph(logits)
    return F.cross_entropy(logits[valid].float(), target.reshape(-1)[valid].long())


def masked_au_bce(logits: Tensor, target: Tensor, valid: Tensor | None = None, reduction: str = "sum") -> Tensor:
    """Per-AU BCE-with-logits, mean over each AU's valid entries, then summed (MTMT) or averaged over AUs.

    ``target`` may be hard 0/1 labels or soft probabilities. AUs without a valid entry are left out.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    valid = entry_mask(valid, target, logits, au_valid_mask)
    # torch.where on the inputs (not on the loss) so invalid values never reach a gradient.
    safe_logits = torch.where(valid, logits.float(), 0.0)
    safe_target = torch.where(valid, target.float(), 0.0)
    per_entry = F.binary_cross_entropy_with_logits(safe_logits, safe_target, reduction="none") * valid
    count = valid.sum(dim=0)
    present = count > 0
    if not present.any():
        return _zero_like_graph(logits)
    per_au = per_entry.sum(dim=0)[present] / count[present]
    return per_au.sum() if reduction == "sum" else per_au.mean()


def emma_au_pos_weight(layout: str | OutputLayout) -> Tensor:
    """EMMA's positive weights in the layout's AU order; ValueError for an AU EMMA has no weight for."""
    layout = get_layout(layout)
    unknown = [au for au in layout.au_names if au not in EMMA_AU_POS_WEIGHT]
    if unknown:
        raise ValueError(f"--loss emma has AU weights for {','.join(EMMA_AU_POS_WEIGHT)} only; layout "
                         f"{layout.name!r} also has {','.join(unknown)}")
    return torch.tensor([EMMA_AU_POS_WEIGHT[au] for au in layout.au_names])


def emma_au_bce(logits: Tensor, target: Tensor, valid: Tensor | None, pos_weight: Tensor) -> Tensor:
    """EMMA's AU loss: BCE-with-logits with per-AU ``pos_weight`` on the positive term, summed over the valid
    entries and divided by the batch size B (every row, labelled or not)."""
    valid = entry_mask(valid, target, logits, au_valid_mask)
    if not valid.any():
        return _zero_like_graph(logits)
    safe_logits = torch.where(valid, logits.float(), 0.0)
    safe_target = torch.where(valid, target.float(), 0.0)
    per_entry = F.binary_cross_entropy_with_logits(safe_logits, safe_target, reduction="none",
                                                   pos_weight=pos_weight.to(logits.device, torch.float32))
    return (per_entry * valid).sum() / logits.shape[0]


def concordance_cc(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """CCC of two 1-D tensors with population (1/N) statistics, as the ABAW metric."""
    x, y = x.float(), y.float()
    mx, my = x.mean(), y.mean()
    vx, vy = ((x - mx) ** 2).mean(), ((y - my) ** 2).mean()
    cov = ((x - mx) * (y - my)).mean()
    return 2 * cov / (vx + vy + (mx - my) ** 2 + eps)


def emma_ccc(x: Tensor, y: Tensor, eps: float = EMMA_CCC_EPS) -> Tensor:
    """EMMA's CCC of two 1-D tensors (≥ 2 entries): 2·ρ·s_x·s_y / (s_x² + s_y² + (x̄ − ȳ)² + eps) with the
    unbiased (n − 1) standard deviations, where the published code also pads ρ's denominator √(Sxx·Syy) by
    eps. Written as 2·Sxy/(n − 1) · q/(q + eps) / (...) with q = √(Sxx·Syy), which is the same number."""
    x, y = x.float(), y.float()
    n = x.numel()
    mx, my = x.mean(), y.mean()
    dx, dy = x - mx, y - my
    sxx, syy, sxy = (dx * dx).sum(), (dy * dy).sum(), (dx * dy).sum()
    # clamp: no infinite gradient of √ at 0 when one side is constant (the value changes by < 1e-11)
    q = (sxx * syy).clamp_min(1e-30).sqrt()
    vx, vy = sxx / (n - 1), syy / (n - 1)
    return 2 * sxy / (n - 1) * (q / (q + eps)) / (vx + vy + (mx - my) ** 2 + eps)


def ccc_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None,
             ccc: Callable[[Tensor, Tensor], Tensor] = concordance_cc) -> Tensor:
    """Σ over dimensions of (1 − ``ccc``) on each dimension's valid rows; a dimension with < 2 valid rows adds 0.

    ``pred`` is already in the target's space (e.g. tanh outputs); B×D (or B) tensors. ``ccc``: ours
    (population statistics) or ``emma_ccc``.
    """
    if pred.dim() == 1:
        pred, target = pred[:, None], target[:, None]
        valid = None if valid is None else valid.reshape(-1, 1)
    valid = entry_mask(valid, target, pred, va_valid_mask)
    total = _zero_like_graph(pred)
    for d in range(pred.shape[1]):
        rows = valid[:, d]
        if rows.sum() >= 2:
            total = total + 1 - ccc(pred[rows, d], target[rows, d])
    return total


def reference_ccc_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None,
                       batch_rows: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """MTMT's published VA loss: Σ over dimensions of 1 − CCC_ref on each dimension's valid rows, where

        CCC_ref = 2·Σ_valid (x − x̄)(y − ȳ) / (N·(s_x² + s_y² + (x̄ − ȳ)² + eps)),

    x̄, ȳ the means and s² the UNBIASED (n − 1) variances of the n valid rows, and N the number of rows of
    the batch the loss was given, valid or not (``batch_rows``: a mask of the rows that make up that batch,
    e.g. the subset a consistency term selects; default: all rows). With every row valid and n large it
    is close to ours; with half the rows invalid the covariance is halved and the loss is far larger.
    A dimension with < 2 valid rows adds 0, as in ours and the published code.
    """
    if pred.dim() == 1:
        pred, target = pred[:, None], target[:, None]
        valid = None if valid is None else valid.reshape(-1, 1)
        batch_rows = None if batch_rows is None else batch_rows.reshape(-1, 1)
    valid = entry_mask(valid, target, pred, va_valid_mask)
    if batch_rows is not None:
        batch_rows = batch_rows.bool()
        batch_rows = (batch_rows[:, None] if batch_rows.dim() == 1 else batch_rows).expand_as(pred)
    total = _zero_like_graph(pred)
    for d in range(pred.shape[1]):
        rows = valid[:, d]
        n = int(rows.sum())
        if n < 2:
            continue
        x, y = pred[rows, d].float(), target[rows, d].float()
        mx, my = x.mean(), y.mean()
        vx, vy = ((x - mx) ** 2).sum() / (n - 1), ((y - my) ** 2).sum() / (n - 1)
        n_batch = pred.shape[0] if batch_rows is None else int(batch_rows[:, d].sum())
        ccc = 2 * ((x - mx) * (y - my)).sum() / ((vx + vy + (mx - my) ** 2 + eps) * n_batch)
        total = total + 1 - ccc
    return total


def va_loss(pred: Tensor, target: Tensor, valid: Tensor | None = None, kind: str = "ours",
            batch_rows: Tensor | None = None) -> Tensor:
    """The VA loss ``kind`` ('ours': ``ccc_loss``; 'reference': MTMT's ``reference_ccc_loss``)."""
    if kind == "ours":
        return ccc_loss(pred, target, valid)
    if kind == "reference":
        return reference_ccc_loss(pred, target, valid, batch_rows)
    raise ValueError(f"unknown CCC loss {kind!r} (known: {', '.join(CCC_LOSSES)})")


def check_expr_classes(layout: str | OutputLayout, expr_classes: int) -> None:
    """Raise unless ``expr_classes`` (0 or 8) can be used with the layout's EXPR block."""
    layout = get_layout(layout)
    if expr_classes not in EXPR_LOSS_CLASSES:
        raise ValueError(f"EXPR loss classes must be one of {EXPR_LOSS_CLASSES}, got {expr_classes}")
    if expr_classes and layout.expr_slots != expr_classes:
        raise ValueError(f"--expr-loss-classes {expr_classes} needs a layout with {expr_classes} EXPR logits "
                         f"(mtmt, abaw2021, abaw3); {layout.name!r} has {layout.expr_slots}")


def expr_logits(outputs: Tensor | tuple, layout: str | OutputLayout, expr_classes: int = 0) -> Tensor:
    """The EXPR logits a loss runs over: the classes the layout serves (0) or every slot of the block (8)."""
    layout = get_layout(layout)
    if not expr_classes:
        return split_outputs(outputs, layout)["expr"]
    check_expr_classes(layout, expr_classes)
    split_outputs(outputs, layout)  # checks the width
    out = outputs[0] if isinstance(outputs, tuple) else outputs
    return out[..., layout.slices["expr"]]


def va_ccc_loss(va_raw: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """1 − CCC per dimension on tanh of the raw B×2 VA outputs, summed over valence and arousal."""
    return ccc_loss(torch.tanh(va_raw.float()), target, valid)


def rank_regularization(alpha: Tensor, high_ratio: float = 0.7, margin: float = 0.15) -> Tensor:
    """Self-cure rank term: max(0, margin − (mean of the top ``high_ratio`` of alpha − mean of the rest))."""
    alpha = alpha.reshape(-1).float()
    n_high = int(high_ratio * alpha.numel())
    if n_high < 1 or n_high >= alpha.numel():
        return _zero_like_graph(alpha)
    ranked = torch.sort(alpha, descending=True).values
    return F.relu(margin - (ranked[:n_high].mean() - ranked[n_high:].mean()))


def tsav_expr_keep_mask(expr: Tensor, va: Tensor, va_valid: Tensor | None = None) -> Tensor:
    """False for EXPR labels that contradict the frame's VA label (reported TSAV filtering, unverified).

    Drops Happiness with valence < 0, Sadness with valence > 0 and Neutral with √(v² + a²) > 0.5.
    Frames without a valid VA label are kept.
    """
    if va_valid is None:
        va_valid = va_valid_mask(va)
    va_ok = va_valid.all(dim=-1) if va_valid.dim() > 1 else va_valid
    v, a = va[..., 0].float(), va[..., 1].float()
    contradicts = (
        ((expr == HAPPINESS) & (v < 0))
        | ((expr == SADNESS) & (v > 0))
        | ((expr == NEUTRAL) & (torch.sqrt(v**2 + a**2) > 0.5))
    )
    return ~(contradicts & va_ok)


class MultiTaskLoss(nn.Module):
    """Weighted sum of the masked task losses for B×K outputs of an ``OutputLayout``.

    ``targets``: {'expr': B ids, 'au': B×n_au 0/1, 'va': B×2}, any subset (a missing task adds nothing).
    ``valid``: optional boolean masks of the same keys (else read from the target values). ``ccc`` picks the
    VA loss ('ours' or MTMT's 'reference'), ``expr_classes`` the EXPR logits (0: the served classes; 8: all
    8 slots, MTMT). ``kind='emma'``: EMMA's VA (``emma_ccc``) and AU (``emma_au_bce``) losses, task weights
    1/1/1 unless ``weights`` says otherwise (``au_reduction`` unused; MTMT's options refused). The
    self-cure (outputs, alpha) tuple is accepted; the rank term belongs to the consistency loss, not here.
    Returns (total, {task: unweighted loss}).
    """

    def __init__(self, layout: str | OutputLayout, weights: Mapping[str, float] | None = None,
                 au_reduction: str = "sum", tsav_filter: bool = False, ccc: str = "ours",
                 expr_classes: int = 0, kind: str = "ours") -> None:
        super().__init__()
        self.layout = get_layout(layout)
        if ccc not in CCC_LOSSES:
            raise ValueError(f"unknown CCC loss {ccc!r} (known: {', '.join(CCC_LOSSES)})")
        if kind not in LOSS_KINDS:
            raise ValueError(f"unknown loss {kind!r} (known: {', '.join(LOSS_KINDS)})")
        if kind == "emma" and (ccc != "ours" or expr_classes):
            raise ValueError("--loss emma has its own VA and EXPR losses: drop --ccc-loss reference and "
                             "--expr-loss-classes 8 (MTMT's)")
        check_expr_classes(self.layout, expr_classes)
        self.ccc, self.expr_classes, self.kind = ccc, expr_classes, kind
        base = EMMA_TASK_WEIGHTS if kind == "emma" else DEFAULT_TASK_WEIGHTS
        self.weights = {**base, **(weights or {})}
        self.au_pos_weight = emma_au_pos_weight(self.layout) if kind == "emma" and self.layout.has("au") else None
        unknown = set(self.weights) - set(DEFAULT_TASK_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown task weights {sorted(unknown)} (tasks: expr, au, va)")
        self.au_reduction = au_reduction
        self.tsav_filter = tsav_filter

    def forward(self, outputs: Tensor | tuple, targets: Mapping[str, Tensor],
                valid: Mapping[str, Tensor] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        parts = split_outputs(outputs, self.layout)
        valid = dict(valid or {})
        if self.tsav_filter and "expr" in targets and "va" in targets:
            expr_valid = valid.get("expr", expr_valid_mask(targets["expr"], self.layout.num_expr_classes))
            valid["expr"] = expr_valid & tsav_expr_keep_mask(targets["expr"], targets["va"], valid.get("va"))
        losses = {}
        targets = {k: v for k, v in targets.items() if k in parts}  # the layout's tasks only (e.g. EXPR alone)
        if "expr" in targets:
            # Validity always by the served classes: with 8 logits the unused slot is never a target (ignore 7).
            expr_valid = valid.get("expr")
            if expr_valid is None:
                expr_valid = expr_valid_mask(targets["expr"], self.layout.num_expr_classes)
            logits = expr_logits(outputs, self.layout, self.expr_classes) if self.expr_classes else parts["expr"]
            losses["expr"] = masked_cross_entropy(logits, targets["expr"], expr_valid)
        if "au" in targets and self.kind == "emma":
            losses["au"] = emma_au_bce(parts["au"], targets["au"], valid.get("au"), self.au_pos_weight)
        elif "au" in targets:
            losses["au"] = masked_au_bce(parts["au"], targets["au"], valid.get("au"), self.au_reduction)
        if "va" in targets:
            va = va_output(parts["va"].float(), self.layout, clip=False)
            if self.kind == "emma":
                losses["va"] = ccc_loss(va, targets["va"], valid.get("va"), ccc=emma_ccc)
            else:
                losses["va"] = va_loss(va, targets["va"], valid.get("va"), self.ccc)
        if not losses:
            raise ValueError("no targets given (expected any of 'expr', 'au', 'va')")
        total = sum(self.weights[task] * loss for task, loss in losses.items())
        return total, losses
