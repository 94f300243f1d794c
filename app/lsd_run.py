"""LSD mode of test_val_aff2.py and the per-epoch validation of LSD runs: a frame model's class for every image
of a split folder of an LSD root (``data.lsd.LsdImages``), the prediction file, and its scores.

A model of any layout with the six classes (``lsd``, or 7/8-class ones: the six are taken by NAME, so an
8-class model's Neutral and Other never win) and the ``frame`` input kind is run on every image resized to its
input size. ``run_lsd`` writes into ``--out`` one output set (``utils.output_set``, as the split mode does):
``predictions.txt`` (``app.submission.lsd``), and for a labelled split ``scores.json`` and ``confusion.png``;
they replace only the files of that set of an earlier run, and everything else in ``--out`` is left alone.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from app.inference import progress_bar, run_model
from app.split_run import load_checkpoint_model
from app.submission.lsd import CLASSES, check_lsd, confusion_counts, score_lsd, write_lsd
from app.video_report import save_figure
from data.lsd import LsdImages
from models.base import model_input, model_layout
from tasks import Edition, OutputLayout, get_edition
from utils import dist
from utils.dist import pick_device
from utils.metrics import expr_scores, total_score, write_json
from utils.output_set import OutputSet, is_within
from utils.outputs import split_outputs
from utils.paths import safe_component
from utils.tables import print_table

PREDICTIONS = "predictions.txt"
LSD_FAMILY = [PREDICTIONS, "scores.json", "confusion.png"]  # what an LSD run writes into --out
DB_SPLITS = ("val", "test")  # the split mode's --split values (with --lsd: any split folder)


class LsdRunError(ValueError):
    """A checkpoint or flag the LSD mode cannot use (one line naming it)."""


def class_columns(layout: OutputLayout, where: str = "the model") -> list[int]:
    """Columns of the layout's class logits holding Anger ... Surprise, in that order (matched by name)."""
    if not layout.has("expr"):
        raise LsdRunError(f"{where}: layout {layout.name!r} has no EXPR output")
    missing = [c for c in CLASSES if c not in layout.expr_names]
    if missing:
        raise LsdRunError(f"{where}: layout {layout.name!r} has no class {', '.join(missing)}")
    return [layout.expr_names.index(c) for c in CLASSES]


def check_lsd_model(model: nn.Module, where: str) -> None:
    """LsdRunError unless the model takes one RGB frame and has the six classes."""
    class_columns(model_layout(model), where)
    spec = model_input(model)
    if spec.kind != "frame" or spec.mask is not None:
        raise LsdRunError(f"{where}: input kind {spec.kind!r}{' with a mask' if spec.mask else ''}; the LSD "
                          "images feed models of the 'frame' kind without a mask")


@torch.no_grad()
def predict_images(model: nn.Module, dataset: LsdImages, indices: np.ndarray | None = None, batch_size: int = 64,
                   device: torch.device | str = "cpu", workers: int = 0, amp: str = "none",
                   channels_last: bool = False, progress: bool = False) -> dict[str, np.ndarray]:
    """{'EXPR': (n,) codes 0-5, 'prob': (n, 6) softmax over the six classes' logits} for ``indices`` (default:
    every image), in that order. The model runs in eval mode (its mode is restored)."""
    device = torch.device(device)
    indices = np.arange(len(dataset)) if indices is None else np.asarray(indices, np.int64).reshape(-1)
    layout = model_layout(model)
    cols = class_columns(layout)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=indices.tolist(), num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=2 if workers else None)
    logits: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        for batch in progress_bar(loader, progress, "predict", "batch"):
            out = run_model(model, batch, device, amp, channels_last)["logits"]
            logits.append(split_outputs(out, layout)["expr"][:, cols].float().cpu())
    finally:
        model.train(was_training)
    z = torch.cat(logits) if logits else torch.zeros((0, len(cols)))
    prob = z.softmax(dim=1).numpy()
    return {"EXPR": prob.argmax(1).astype(np.int64), "prob": prob}


def evaluate_images(model: nn.Module, dataset: LsdImages, indices: np.ndarray, edition: str | Edition,
                    args: argparse.Namespace, info: dist.DistInfo) -> dict:
    """Validation of an LSD run, shaped as ``app.validation.evaluate``'s result ({'edition', 'expr', 'total'}):
    the indices split over the ranks, every rank's classes gathered, scored on every rank."""
    edition = get_edition(edition)
    if edition.expr_names != CLASSES:
        raise LsdRunError(f"LSD images are scored by an edition of the six classes ({', '.join(CLASSES)}), "
                          f"not {edition.name}")
    indices = np.asarray(indices, np.int64)
    mine = indices[info.rank::info.world_size]
    preds = predict_images(model, dataset, mine, args.eval_batch_size, info.device, args.workers, args.amp,
                           args.channels_last, progress=bool(args.progress) and info.is_main)
    parts = dist.all_gather_objects((mine, preds["EXPR"]))  # every rank gets every rank's classes
    order = np.concatenate([p[0] for p in parts])
    pred = np.concatenate([p[1] for p in parts])
    sort = np.argsort(order, kind="stable")
    order, pred = order[sort], pred[sort]
    lab = dataset.labels
    out: dict = {"edition": edition.name,
                 "expr": expr_scores(pred, lab["expr"][order], lab["expr_valid"][order], edition)}
    out["total"] = total_score(out)
    return out


def lsd_flag_problem(args: argparse.Namespace) -> str:
    """What is wrong with the LSD flags ('' when nothing); without --lsd, only --split is looked at."""
    if args.lsd is None:
        if args.split not in DB_SPLITS:
            return f"--split {args.split!r}: a database split is val or test (other split folders only with --lsd)"
        return ""
    if args.fuse is not None or args.video:
        return "--lsd predicts the images of a split folder with --checkpoint: not with --fuse or --video"
    if args.checkpoint is None:
        return "--lsd needs --checkpoint (a frame model with the six classes, e.g. layout lsd)"
    try:
        safe_component(args.split, "--split")
    except ValueError as e:
        return f"{e} (with --lsd: a folder of ROOT, e.g. val)"
    return ""


def plot_confusion(path: Path, counts: np.ndarray, title: str = "") -> Path:
    """PNG of the confusion counts: rows the true class, columns the predicted one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(CLASSES)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, int(counts.max())))
    for i in range(k):
        for j in range(k):
            dark = counts[i, j] > counts.max() / 2
            ax.text(j, i, str(int(counts[i, j])), ha="center", va="center", fontsize=9,
                    color="white" if dark else "black")
    ax.set_xticks(range(k), CLASSES, rotation=30, ha="right")
    ax.set_yticks(range(k), CLASSES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path, dpi=100)


def _num(x: float) -> str:
    return "n/a" if x != x else f"{x:.4f}"  # NaN: a class neither true nor predicted


def summary_rows(pred: np.ndarray, true: np.ndarray | None, scores: dict | None) -> list[list]:
    """Per class: images (labelled splits), predicted, F1; then the macro-F1 and accuracy rows."""
    made = np.bincount(pred, minlength=len(CLASSES))
    if true is None or scores is None:
        return [[c, int(made[k])] for k, c in enumerate(CLASSES)]
    have = np.bincount(true, minlength=len(CLASSES))
    f1 = scores["expr"]["per_class"]
    rows = [[c, int(have[k]), int(made[k]), _num(f1[c])] for k, c in enumerate(CLASSES)]
    return rows + [["macro-F1 (score)", "", "", _num(scores["expr"]["f1"])],
                   ["accuracy", "", "", _num(scores["expr"]["accuracy"])]]


def run_lsd(args: argparse.Namespace) -> dict:
    """The LSD mode; returns {'out', 'images', 'seconds', 'problems', 'scores' (labelled splits)}."""
    device = pick_device(args.device)
    model = load_checkpoint_model(args.checkpoint, device)
    check_lsd_model(model, args.checkpoint)
    data = LsdImages(args.lsd, args.split, model_input(model).size)
    split_dir, out = Path(args.lsd) / args.split, Path(args.out)
    if is_within(out, split_dir):  # our files would become images (or class folders) of the split
        raise LsdRunError(f"--out {out} is inside the split folder {split_dir}: choose another")
    outputs = OutputSet(out, "lsd", LSD_FAMILY, {"--lsd": args.lsd, "--checkpoint": args.checkpoint})
    labelled = bool(data.labelled().all())
    t0 = time.perf_counter()
    with outputs as staging:
        preds = predict_images(model, data, batch_size=args.batch_size, device=device, workers=args.workers,
                               amp=args.amp, channels_last=args.channels_last, progress=True)
        seconds = time.perf_counter() - t0
        written = write_lsd(staging / PREDICTIONS, data.names(), preds["EXPR"])
        # name the published file, not the staging folder, in the messages
        problems = [str(p).replace(str(staging), str(out)) for p in check_lsd(written, split_dir)]
        scores, true = None, None
        if labelled and not problems:
            scores, true = score_lsd(written, split_dir), data.labels["expr"]
            write_json(scores, staging / "scores.json")
            expr, where = scores["expr"], f"{Path(args.lsd).resolve().name}/{args.split}"
            plot_confusion(staging / "confusion.png", confusion_counts(true, preds["EXPR"]),
                           f"{where}: macro-F1 {expr['f1']:.4f}, accuracy {expr['accuracy']:.4f}")
        outputs.publish([PREDICTIONS] + (["scores.json", "confusion.png"] if scores is not None else []))
    header = ["class", "images", "predicted", "F1"] if scores is not None else ["class", "predicted"]
    print_table(header, summary_rows(preds["EXPR"], true, scores), title=data.describe(), right=True)
    print(f"\n{len(data)} images in {seconds:.1f} s → {out / PREDICTIONS}; checker: {len(problems)} problem(s)")
    for p in problems:
        print(p)
    result = {"out": str(out), "images": len(data), "seconds": seconds, "problems": problems}
    if scores is not None:
        result["scores"] = scores
    elif labelled:
        print("not scored: the prediction file has problems")
    else:
        print(f"{split_dir}: unlabelled (no class folders): predictions only")
    return result

