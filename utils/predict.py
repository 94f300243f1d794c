"""Per-frame predictions from the database: every frame of a track gets one (faceless frames too).

    python -m utils.predict --checkpoint runs/x/best.pth --db demo_out/db --split Validation_Set \\
        --edition abaw2021 --out demo_out/pred

Each frame is predicted from its own causal clip and centred audio window, exactly as in training
(``data.clips``). Outputs are decoded once, the same way in validation and here: EXPR = argmax over the
edition's classes, AU = sigmoid > 0.5, VA = the layout's VA activation (tanh for every layout today;
the losses train the same values).

Frames without a face (SPEC §5 lets us choose, and we say which): with ``faceless="interpolate"`` (the
default) their VA is interpolated linearly between the nearest frames with a face and their EXPR/AU are
held from the nearest frame with a face (the earlier one on a tie); with ``faceless="model"`` they keep
the network's own output from black frames plus audio (TSAV's way). A track without any face keeps the
network's output either way. Validation during training scores the network's own outputs.

This is the simple, batch-of-clips path: every clip is decoded independently (no feature reuse).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from data.clips import ClipConfig, ClipDataset, open_store, prepare_batch
from data.tracks import split_tracks
from models.tsav import (
    TwoStreamAuralVisualSelfCure,
    load_published,
    model_layout,
    read_checkpoint,
    split_outputs,
    va_output,
)
from tasks import EDITIONS, TASKS, VAL_SPLIT, Edition, OutputLayout, get_edition, get_layout, layout_au_columns
from utils.dist import pick_device
from utils.submission import write_per_video


def autocast(device: torch.device, amp: str):
    """bf16/fp16 autocast on CUDA; a no-op for 'none' and on CPU."""
    if amp == "none" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def decode_outputs(out: torch.Tensor | tuple, layout: OutputLayout, edition: Edition) -> dict[str, np.ndarray]:
    """Model outputs → {'VA': (B, 2) in [-1, 1], 'EXPR': (B,) class codes, 'AU': (B, k) 0/1} for an edition."""
    parts = {k: v.float() for k, v in split_outputs(out, layout).items()}
    n_classes = min(layout.num_expr_classes, len(edition.expr_names))
    au = parts["au"][:, layout_au_columns(layout, edition)]
    return {"VA": va_output(parts["va"], layout).cpu().numpy(),
            "EXPR": parts["expr"][:, :n_classes].argmax(dim=1).cpu().numpy(),
            "AU": (au > 0).long().cpu().numpy()}  # sigmoid(x) > 0.5 ⇔ x > 0


@torch.no_grad()
def predict_indices(model: nn.Module, dataset: ClipDataset, indices: np.ndarray | list[int], edition: Edition,
                    batch_size: int = 32, device: torch.device | str = "cpu", workers: int = 0,
                    amp: str = "none", channels_last: bool = False, progress: bool = False
                    ) -> dict[str, np.ndarray]:
    """Decoded predictions for the given flat frame indices of ``dataset``, in that order (eval mode)."""
    device = torch.device(device)
    layout = model_layout(model)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, sampler=list(map(int, indices)), num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=False)
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in TASKS}
    for batch in progress_bar(loader, progress, "predict"):
        batch = prepare_batch({k: batch[k] for k in ("clip", "audio_db")}, device, channels_last)
        with autocast(device, amp):
            out = model(batch)
        for k, v in decode_outputs(out, layout, edition).items():
            chunks[k].append(v)
    model.train(was_training)
    width = {"VA": (2,), "EXPR": (), "AU": (len(edition.au_names),)}
    return {k: np.concatenate(v) if v else np.zeros((0,) + width[k]) for k, v in chunks.items()}


def progress_bar(it: Iterable, enabled: bool, desc: str) -> Iterable:
    """A tqdm bar over ``it`` (``set_postfix`` works on it) when ``enabled``, else ``it`` itself."""
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, unit="batch", dynamic_ncols=True, leave=False)


def fill_faceless(preds: dict[str, np.ndarray], face: np.ndarray) -> dict[str, np.ndarray]:
    """Per-frame predictions with faceless frames filled from the frames with a face (see the module doc)."""
    have = np.flatnonzero(face)
    if len(have) == 0 or len(have) == len(face):
        return preds
    frames = np.arange(len(face))
    after = np.clip(np.searchsorted(have, frames), 0, len(have) - 1)
    before = np.clip(after - 1, 0, len(have) - 1)
    nearest = np.where(np.abs(have[before] - frames) <= np.abs(have[after] - frames), have[before], have[after])
    out = {k: v[nearest] for k, v in preds.items() if k != "VA"}
    if "VA" in preds:
        out["VA"] = np.stack([np.interp(frames, have, preds["VA"][have, d]) for d in range(2)], axis=1)
    return out


def predict_track(model: nn.Module, db: str | Path, track: str, clip: ClipConfig | None = None,
                  edition: str | Edition = "abaw2021", batch_size: int = 32, device: torch.device | str = "cpu",
                  workers: int = 0, amp: str = "none", channels_last: bool = False,
                  faceless: str = "interpolate") -> dict[str, np.ndarray]:
    """{'VA': (n, 2), 'EXPR': (n,), 'AU': (n, k)} for every source frame of ``track``, in frame order.

    ``faceless``: 'interpolate' (fill frames without a face from their neighbours) or 'model'.
    """
    if faceless not in ("interpolate", "model"):
        raise ValueError(f"faceless must be 'interpolate' or 'model', got {faceless!r}")
    dataset = ClipDataset(db, None, model_layout(model), clip or ClipConfig(), tracks=[track], labels=False)
    preds = predict_indices(model, dataset, list(dataset.track_range(track)), get_edition(edition), batch_size,
                            device, workers, amp, channels_last)
    return fill_faceless(preds, dataset.tracks[0].face) if faceless == "interpolate" else preds


def predict_split(model: nn.Module, db: str | Path, split: str, clip: ClipConfig, edition: str | Edition,
                  **kw) -> dict[str, dict[str, np.ndarray]]:
    """{task: {track: per-frame array}} for every track annotated in ``split``, only for its tasks there."""
    wanted = split_tracks(open_store(db), split)
    if not wanted:
        raise ValueError(f"{db}: no track is annotated in {split}")
    preds: dict[str, dict[str, np.ndarray]] = {task: {} for task in wanted}
    for track in sorted({t for tracks in wanted.values() for t in tracks}):
        frame_preds = predict_track(model, db, track, clip, edition, **kw)
        for task, tracks in wanted.items():
            if track in tracks:
                preds[task][track] = frame_preds[task]
    return preds


def load_model(path: str | Path) -> tuple[nn.Module, ClipConfig]:
    """A checkpoint of train.py (or a published one) → (model in eval mode, its clip settings)."""
    model = load_published(path)
    obj = read_checkpoint(path)
    stored = obj.get("clip") if isinstance(obj, dict) else None
    if isinstance(stored, dict):
        return model, ClipConfig(**stored)
    # published checkpoints: the published geometry, with the mask each system was trained on
    return model, ClipConfig(mask="mtmt" if isinstance(model, TwoStreamAuralVisualSelfCure) else "tsav")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Predict every frame of the tracks of a split from the database and "
                                "write per-video submission files.")
    p.add_argument("--checkpoint", required=True, help="best.pth/last.pth of train.py, or a published checkpoint")
    p.add_argument("--db", default="demo_out/db", help="LMDB database built by create_database.py")
    p.add_argument("--split", default=VAL_SPLIT, help="annotated split whose tracks to predict")
    p.add_argument("--edition", default="abaw2021", choices=tuple(EDITIONS),
                   help="edition whose classes, AU set and file headers to write")
    p.add_argument("--out", default="demo_out/pred", help="submission folder to write")
    p.add_argument("--batch-size", type=int, default=32, help="clips per forward pass")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast precision on CUDA")
    p.add_argument("--faceless", choices=("interpolate", "model"), default="interpolate",
                   help="frames without a face: VA interpolated and EXPR/AU held from the nearest face frames, or "
                   "the network's output from black frames plus audio")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    model, clip = load_model(args.checkpoint)
    model.to(device)
    print(f"{args.checkpoint}: layout {get_layout(model_layout(model)).name}, clip {clip}")
    preds = predict_split(model, args.db, args.split, clip, args.edition, batch_size=args.batch_size,
                          device=device, workers=args.workers, amp=args.amp, faceless=args.faceless)
    out = write_per_video(args.out, preds, args.edition)
    print(f"wrote {sum(len(v) for v in preds.values())} prediction files to {out}")


if __name__ == "__main__":
    main()
