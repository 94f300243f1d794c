"""A trivial reference prediction: the training-set prior for every frame of every validation track.

    python -m tools.baseline --annotations DIR --videos DIR --edition abaw2021 --out PRED
    python -m tools.baseline --annotations DIR/mtl --videos DIR --edition abaw4 --out PRED   # PRED/MTL_predictions.txt
    python -m tools.baseline --annotations DIR/abaw3 --videos DIR --edition abaw5 --out PRED  # a file per task

VA = the training mean, EXPR = the most frequent training class, AU = each AU's majority value.
It is what any model must beat (its VA CCC is 0 by construction) and shows the submission path
end to end: frame counts from the decoded videos, the edition's submission (per-video files; for abaw4 one
multi-task file listing the images of the split's MTL annotation file; for abaw5 one file per task), then
`evaluate.py`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from app.split_run import write_submission
from app.submission import listed_images, per_video_names, video_frame_counts, write_mtl, write_per_video
from data.annotations import MTL_FILES, TrackLabels, canonical_split, find_mtl_file, read_annotations
from tasks import EDITIONS, TASKS, TRAIN_SPLIT, VAL_SPLIT, get_edition
from utils.metrics import columns_by_name


def training_prior(train: dict[str, dict[str, TrackLabels]], edition: str) -> dict[str, np.ndarray]:
    """One constant prediction row per task from the training labels."""
    prior = {}
    va = [lab.values[lab.valid] for lab in train["VA"].values()]
    if va:
        prior["VA"] = np.concatenate(va).mean(axis=0)
    n_classes = len(get_edition(edition).expr_names)
    expr = [lab.values[lab.valid & (lab.values < n_classes)] for lab in train["EXPR"].values()]
    if expr:
        prior["EXPR"] = np.array(np.bincount(np.concatenate(expr), minlength=n_classes).argmax())
    names = per_video_names("AU", edition)
    au = [columns_by_name(lab, names) for lab in train["AU"].values()]
    if au:
        values = np.concatenate([v for v, _ in au]).astype(float)
        valid = np.concatenate([m for _, m in au])
        rate = (values * valid).sum(0) / np.maximum(valid.sum(0), 1)
        prior["AU"] = (rate > 0.5).astype(np.int64)
    return prior


def predict_prior(annotations: str, videos: list[str], edition: str, split: str = VAL_SPLIT
                  ) -> dict[str, dict[str, np.ndarray]]:
    train = read_annotations(annotations, splits=(TRAIN_SPLIT,))
    target = read_annotations(annotations, splits=(split,))
    prior = training_prior(train, edition)
    tracks = sorted({t for task in TASKS for t in target[task]})
    counts = video_frame_counts(tracks, videos)
    return {task: {t: np.repeat(prior[task][None], counts[t], axis=0) for t in target[task]}
            for task in TASKS if task in prior and target[task]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write the training-prior reference prediction for a split.")
    p.add_argument("--annotations", required=True, help="annotation folder (task folders of one edition)")
    p.add_argument("--videos", nargs="+", required=True, help="video folder(s), for the frame counts")
    p.add_argument("--edition", default="abaw2021", choices=tuple(EDITIONS),
                   help="edition whose file headers (class count, AU set) to write")
    p.add_argument("--split", default=VAL_SPLIT, help="which annotated split to predict")
    p.add_argument("--out", default="demo_out/baseline_pred", help="submission folder to write")
    args = p.parse_args(argv)
    preds = predict_prior(args.annotations, args.videos, args.edition, args.split)
    if get_edition(args.edition).submission == "mtl":
        out = write_mtl_prior(args.annotations, args.split, preds, Path(args.out))
        print(f"wrote the multi-task prediction of {len(preds['VA'])} tracks to {out}")
        return
    if get_edition(args.edition).submission == "single-file":  # 2023+: one file per task
        out = write_submission(Path(args.out), preds, get_edition(args.edition), "single-file")
        print(f"wrote {', '.join(f'{t}_predictions.txt' for t in preds)} to {out}")
        return
    out = write_per_video(args.out, preds, args.edition)
    print(f"wrote {sum(len(v) for v in preds.values())} prediction files to {out}")


def write_mtl_prior(annotations: str, split: str, preds: dict[str, dict[str, np.ndarray]], out: Path) -> Path:
    """OUT/MTL_predictions.txt with a row per image the split's MTL annotation file lists."""
    f = find_mtl_file(annotations, split)
    if f is None:
        raise SystemExit(f"{annotations}: no {MTL_FILES[canonical_split(split)]} (an MTL prediction lists its images)")
    images = listed_images(f)
    missing = [t for task in TASKS for t in images if t not in preds.get(task, {})]
    if missing:
        raise SystemExit(f"{f}: tracks without a prior prediction (no such video?): {', '.join(sorted(set(missing)))}")
    out.mkdir(parents=True, exist_ok=True)
    return write_mtl(out / "MTL_predictions.txt", {task: {t: preds[task][t] for t in images} for task in TASKS},
                     images)


if __name__ == "__main__":
    main()
