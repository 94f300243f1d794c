"""Official ABAW metrics per edition (SPEC §6), in numpy.

Conventions, matching the organisers' evaluation scripts:
- CCC uses population (1/N) statistics over all valid frames of the split concatenated. When its
  denominator is 0 (both series constant and equal) it is defined as 0; with no frame it is NaN.
- Macro F1 is the scikit-learn ``f1_score(average="macro")`` the organisers call: the unweighted mean of
  the per-class F1 over the labels present in y_true ∪ y_pred. It equals the mean over all K classes
  whenever every class occurs; a class absent from both would otherwise add a 0 to the average.
- AU F1 is the positive-class binary F1 of each AU, averaged over the AUs; accuracy is over all valid
  (frame, AU) entries. A zero division gives 0 (scikit-learn ``zero_division=0``).
- Entries whose target is invalid are removed from both predictions and targets (per entry for AU).
- A score with nothing to score is NaN; JSON writes it as null and the total sums the defined scores.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tasks import Edition, TrackLabels, au_columns, get_edition
from utils.atomic import write_json as write_json_atomic


def ccc(x: np.ndarray, y: np.ndarray) -> float:
    """Concordance correlation coefficient with population statistics (0 if undefined, NaN if empty)."""
    x = np.asarray(x, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    if x.size == 0:
        return math.nan
    mx, my = x.mean(), y.mean()
    cov = np.mean((x - mx) * (y - my))
    denom = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / denom) if denom > 0 else 0.0


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> np.ndarray:
    """F1 = 2tp / (2tp + fp + fn), 0 where the denominator is 0."""
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros(np.shape(denom)), where=denom > 0)


def macro_f1(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean per-class F1 over the labels present in true ∪ pred (scikit-learn's macro average)."""
    true = np.asarray(true).ravel()
    pred = np.asarray(pred).ravel()
    if true.size == 0:
        return math.nan
    labels, codes = np.unique(np.concatenate([true, pred]), return_inverse=True)
    t, p = codes[: true.size], codes[true.size:]
    k = len(labels)
    confusion = np.bincount(t * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(confusion)
    return float(f1_from_counts(tp, confusion.sum(0) - tp, confusion.sum(1) - tp).mean())


def binary_f1(true: np.ndarray, pred: np.ndarray) -> float:
    """F1 of the positive class (1) of a 0/1 task."""
    true = np.asarray(true).ravel() == 1
    pred = np.asarray(pred).ravel() == 1
    if true.size == 0:
        return math.nan
    tp = np.sum(true & pred)
    return float(f1_from_counts(tp, np.sum(~true & pred), np.sum(true & ~pred)))


def accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    true = np.asarray(true).ravel()
    return float(np.mean(true == np.asarray(pred).ravel())) if true.size else math.nan


def weighted(weights: tuple[float, float], values: tuple[float, float]) -> float:
    """Weighted sum of (F1, accuracy); a zero weight never lets a NaN through."""
    return float(sum(w * v for w, v in zip(weights, values) if w))


def va_scores(pred: np.ndarray, true: np.ndarray, valid: np.ndarray) -> dict[str, float]:
    """pred, true (n, 2) valence/arousal; valid (n,) bool."""
    valid = np.asarray(valid, bool)
    pred, true = np.asarray(pred)[valid], np.asarray(true)[valid]
    v, a = ccc(pred[:, 0], true[:, 0]), ccc(pred[:, 1], true[:, 1])
    return {"ccc_valence": v, "ccc_arousal": a, "score": (v + a) / 2}


def expr_scores(pred: np.ndarray, true: np.ndarray, valid: np.ndarray,
                edition: str | Edition) -> dict[str, float]:
    """pred, true (n,) class codes; valid (n,) bool.

    Targets outside the edition's classes count as invalid (e.g. 'Other' = 7 under a 7-class edition,
    as MTMT's scorer drops it); a predicted code outside them still enters the macro average.
    """
    ed = get_edition(edition)
    true = np.asarray(true).ravel()
    keep = np.asarray(valid, bool).ravel() & (true >= 0) & (true < len(ed.expr_names))
    t, p = true[keep], np.asarray(pred).ravel()[keep]
    f1, acc = macro_f1(t, p), accuracy(t, p)
    return {"f1": f1, "accuracy": acc, "score": weighted(ed.expr_weights, (f1, acc))}


def au_scores(pred: np.ndarray, true: np.ndarray, valid: np.ndarray,
              edition: str | Edition) -> dict[str, float | dict[str, float]]:
    """pred, true, valid (n, k) with the edition's k AUs in its order; validity is per entry.

    The F1 is the mean over the AUs that have any valid entry (an AU with none is NaN in per_au).
    """
    ed = get_edition(edition)
    pred, true, valid = np.asarray(pred), np.asarray(true), np.asarray(valid, bool)
    if true.ndim != 2 or true.shape[1] != len(ed.au_names) or pred.shape != true.shape:
        raise ValueError(f"{ed.name} scores {len(ed.au_names)} AUs; got predictions {pred.shape}, "
                         f"targets {true.shape}")
    per_au = {name: binary_f1(true[valid[:, j], j], pred[valid[:, j], j])
              for j, name in enumerate(ed.au_names)}
    defined = [v for v in per_au.values() if not math.isnan(v)]
    f1 = float(np.mean(defined)) if defined else math.nan
    acc = accuracy(true[valid], pred[valid])
    return {"f1": f1, "accuracy": acc, "score": weighted(ed.au_weights, (f1, acc)), "per_au": per_au}


def columns_by_name(labels: TrackLabels, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid) of an AU track with its columns reordered/selected to ``names``."""
    if labels.names == names:
        return labels.values, labels.valid
    idx = au_columns(labels.names, names, labels.source or labels.track)
    return labels.values[:, idx], labels.valid[:, idx]


def as_values(pred: TrackLabels | np.ndarray, task: str,
              au_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(values, valid) of a prediction; a bare array is entirely valid."""
    if isinstance(pred, TrackLabels):
        return columns_by_name(pred, au_names) if task == "AU" else (pred.values, pred.valid)
    values = np.asarray(pred)
    return values, np.ones(values.shape if task == "AU" else values.shape[:1], bool)


def concat_task(preds: dict, truths: dict[str, TrackLabels], task: str,
                au_names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate every track of one task (sorted by name) → (pred, true, valid).

    An entry is scored when the target is valid and the prediction exists (a prediction's invalid
    entries are frames it did not list, e.g. rows absent from a single-file submission).
    """
    p_all, t_all, v_all = [], [], []
    for track in sorted(truths):
        p, p_valid = as_values(preds[track], task, au_names)
        t, t_valid = columns_by_name(truths[track], au_names) if task == "AU" else (
            truths[track].values, truths[track].valid)
        if len(p) != len(t):
            raise ValueError(f"{task} track {track}: {len(p)} predictions for {len(t)} labels "
                             "(fit the labels to the prediction length first)")
        p_all.append(p)
        t_all.append(t)
        v_all.append(p_valid & t_valid)
    if not p_all:
        width = {"VA": (2,), "EXPR": (), "AU": (len(au_names),)}[task]
        empty = np.zeros((0,) + width)
        return empty, empty, np.zeros((0,) + (width if task == "AU" else ()), bool)
    return np.concatenate(p_all), np.concatenate(t_all), np.concatenate(v_all)


def score(preds: dict[str, dict], truths: dict[str, dict[str, TrackLabels]],
          edition: str | Edition) -> dict:
    """Score {task: {track: prediction}} against {task: {track: labels}} of the same lengths.

    A prediction is a TrackLabels or a bare array (VA (n, 2), EXPR (n,), AU (n, k) in the edition's AU
    order). Every track of ``truths[task]`` needs a prediction. Tasks absent from ``preds`` are omitted.
    Returns {"edition", "va", "expr", "au", "total"}; total sums the defined task scores.
    """
    ed = get_edition(edition)
    out: dict = {"edition": ed.name}
    for task, key in (("VA", "va"), ("EXPR", "expr"), ("AU", "au")):
        if task not in preds:
            continue
        missing = sorted(set(truths.get(task, {})) - set(preds[task]))
        if missing:
            raise ValueError(f"no {task} prediction for tracks {', '.join(missing)}")
        p, t, v = concat_task(preds[task], truths.get(task, {}), task, ed.au_names)
        if task == "VA":
            out[key] = va_scores(p, t, v)
        elif task == "EXPR":
            out[key] = expr_scores(p, t, v, ed)
        else:
            out[key] = au_scores(p, t, v, ed)
    out["total"] = total_score(out)
    return out


def total_score(out: dict) -> float:
    """Sum of the defined (not NaN) task scores among "va", "expr", "au" of ``out``; NaN when none is."""
    defined = [out[k]["score"] for k in ("va", "expr", "au") if k in out and not math.isnan(out[k]["score"])]
    return float(sum(defined)) if defined else math.nan


def nan_to_none(obj: object) -> object:
    """Replace NaN floats with None (JSON null), recursively."""
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def write_json(scores: dict, path: str | Path) -> None:
    """The scores as JSON (NaN → null), written to a temporary file and renamed into place."""
    write_json_atomic(path, nan_to_none(scores))


def format_scores(scores: dict) -> str:
    """A plain-text table of a score() result."""
    def num(x: float) -> str:
        return "   n/a" if math.isnan(x) else f"{x:.4f}"

    lines = [f"edition {scores['edition']}", f"{'task':<5} {'metric':<12} value"]
    for key in ("va", "expr", "au"):
        if key not in scores:
            continue
        for metric, value in scores[key].items():
            if metric == "per_au":
                lines += [f"{'':<5} {'  ' + au:<12} {num(v)}" for au, v in value.items()]
            else:
                lines.append(f"{key.upper():<5} {metric:<12} {num(value)}")
    lines.append(f"{'total':<18} {num(scores['total'])}")
    return "\n".join(lines)
