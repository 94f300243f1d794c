"""``python -m tools.bench infer``: end-to-end frames/s of app.inference vs TSAV's per-frame loop.

Over one track, with the model and with it stubbed (inputs only), and how far their outputs are apart.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import default_collate

from app.inference import ChunkFrames, TrackSource, db_track_source, plan_chunks, predict_source
from data import store
from models.base import AffectModel, model_layout, unwrap_model
from models.registry import build_model
from tools.bench.common import (
    TsavStyleClips,
    bench_device,
    cuda_sync,
    ensure_prepared,
    fmt,
    input_shape,
    input_spec,
    rates,
    summary,
    timed,
)
from utils.outputs import output_scores
from utils.tables import print_table


class StubModel(AffectModel):
    """Stands in for a model to time the input pipelines alone: its input, layout and ``prepare`` hook, and
    zeros of the layout's width instead of the network."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        bare = unwrap_model(model)
        self.input_spec, self.layout, self.decision = bare.input_spec, bare.layout, bare.decision
        self._prepare = bare.prepare  # a bound method: the model is not a submodule of the stub

    def prepare(self, raw: Mapping[str, Tensor], device: torch.device, view: str = "student",
                channels_last: bool = False) -> dict[str, Tensor]:
        return self._prepare(raw, device, view=view, channels_last=channels_last)

    def forward(self, inputs: Mapping[str, Tensor]) -> Tensor:
        first = next(iter(inputs.values()))
        return first.new_zeros(len(first), self.layout.num_outputs)


def prefix_source(db_path: Path, track: str, frames: int | None) -> TrackSource:
    """The track's first ``frames`` frames (all with None) as app.inference reads them from the database."""
    src = db_track_source(str(db_path), track)
    if frames is not None:
        src.times, src.face = src.times[:frames], src.face[:frames]
    return src


def tsav_loop(model: nn.Module, ds: TsavStyleClips, device: torch.device) -> np.ndarray:
    """TSAV's inference: per frame, read its clip and audio from the files and run the model on it alone."""
    model.eval()
    return batched_logits(model, ds, device, 1)


@torch.no_grad()
def batched_logits(model: nn.Module, ds: TsavStyleClips, device: torch.device, batch: int) -> np.ndarray:
    """Raw outputs (the layout's columns) of ``model`` on the dataset's ready-made network inputs, ``batch``
    samples at a time."""
    layout = model_layout(model)
    out = []
    for b0 in range(0, len(ds), batch):
        inputs = default_collate([ds[k] for k in range(b0, min(b0 + batch, len(ds)))])
        scores = output_scores(model({k: v.to(device) for k, v in inputs.items()}), layout)
        out.append(scores["logits"].cpu())
    return torch.cat(out).numpy()


def pick_track(db_path: Path, wanted: str | None) -> tuple[str, int]:
    with store.Store(db_path) as db:
        tracks = []
        for v in db.video_names():
            meta = db.video_meta(v)
            tracks += [(t, meta["frames"], bool(meta.get("audio"))) for t in meta["tracks"]]
    if wanted:
        found = [t for t in tracks if t[0] == wanted]
        if not found:
            raise SystemExit(f"tools.bench: --track {wanted}: not in the benchmark database "
                             f"({', '.join(t[0] for t in tracks)})")
        return found[0][:2]
    return next((t[:2] for t in tracks if t[2]), tracks[0][:2])


def compare_pipelines(args: argparse.Namespace, model: nn.Module, db_path: Path, export: Path, track: str,
                      frames: int, device: torch.device) -> dict:
    """Timed: app.inference.predict_source vs TSAV's per-frame loop over the same frames of one track."""
    spec = input_spec(args)
    rows = [(track, i) for i in range(frames)]
    tsav = TsavStyleClips(export, rows, spec)
    sync = cuda_sync(device)
    fast: dict = {}

    def run_fast() -> None:
        fast.update(predict_source(model, prefix_source(db_path, track, frames), batch_size=args.infer_batch,
                                   workers=args.infer_workers, device=device))

    slow: dict = {}

    def run_slow() -> None:
        slow["logits"] = tsav_loop(model, tsav, device)

    # warm-up on two frames (first-call costs), then full timed runs
    predict_source(model, prefix_source(db_path, track, 2), batch_size=2, device=device)
    tsav_loop(model, TsavStyleClips(export, rows[:2], spec), device)
    fast_s = timed(run_fast, args.repeats, max(args.warmup - 1, 0), sync)
    slow_s = timed(run_slow, args.repeats, max(args.warmup - 1, 0), sync)
    return {"frames": frames, "ours": {"seconds": summary(fast_s), "frames_per_s": rates(frames, fast_s)},
            "tsav": {"seconds": summary(slow_s), "frames_per_s": rates(frames, slow_s)},
            "speedup": statistics.median(slow_s) / statistics.median(fast_s),
            "logits": {"ours": fast["logits"], "tsav": slow["logits"]}}


def bench_infer(args: argparse.Namespace) -> dict:
    device = bench_device(args.device)
    db_path, export = ensure_prepared(args)
    track, n_frames = pick_track(db_path, args.track)
    spec = input_spec(args)
    torch.manual_seed(args.seed)
    model = build_model(args.model, args.layout, input_spec=spec).to(device).eval()
    frames = min(args.frames, n_frames)
    full = compare_pipelines(args, model, db_path, export, track, frames, device)
    logits = full.pop("logits")
    exact = batched_logits(model, TsavStyleClips(export, [(track, i) for i in range(frames)], spec, exact=True,
                                                 db_path=db_path), device, args.infer_batch)
    full["max_abs_logit_diff"] = {
        "tsav_as_published": float(np.abs(logits["ours"] - logits["tsav"]).max()),
        "tsav_loop_with_db_logmel_and_png_masks": float(np.abs(logits["ours"] - exact).max())}
    stub = compare_pipelines(args, StubModel(model), db_path, export, track, n_frames, device)
    stub.pop("logits")
    src = prefix_source(db_path, track, None)
    whole_track = ChunkFrames([src], spec, plan_chunks([src], [None], len(src)))  # one chunk: every frame
    decode_s = timed(lambda: whole_track[0], args.repeats, 1)
    stub["ours_decode_only"] = {"seconds": summary(decode_s), "frames_per_s": rates(n_frames, decode_s)}
    stub["speedup_decode_only"] = stub["ours_decode_only"]["frames_per_s"]["median"] / \
        stub["tsav"]["frames_per_s"]["median"]
    result = {"device": str(device), "track": track, "input": spec.to_dict(), "batch_size": args.infer_batch,
              "workers": args.infer_workers, "threads": torch.get_num_threads(), "model": args.model,
              "end_to_end": full, "inputs_only": stub}
    print_infer(result)
    return result


def print_infer(r: dict) -> None:
    rows = []
    for name, e in (("end to end (model)", r["end_to_end"]), ("inputs only (model stubbed)", r["inputs_only"])):
        rows.append([name, e["frames"], fmt(e["ours"]["frames_per_s"], 2), fmt(e["tsav"]["frames_per_s"], 2),
                     f"{e['speedup']:.1f}x"])
    print_table(["run", "frames", "ours frames/s", "TSAV loop frames/s", "speedup"], rows, right=True,
                title=f"infer: track {r['track']}, {r['device']}, input {input_shape(r['input'])}, batch "
                f"{r['batch_size']}, {r['workers']} workers")
    e = r["inputs_only"]
    print(f"ours, crop decoding only (the CPU's share when clips are gathered and normalised on a GPU, as "
          f"app.inference does): {fmt(e['ours_decode_only']['frames_per_s'], 0)} frames/s = "
          f"{e['speedup_decode_only']:.0f}x the TSAV loop's inputs")
    d = r["end_to_end"]["max_abs_logit_diff"]
    print(f"max |logit diff| ours vs TSAV loop: {d['tsav_as_published']:.2e} as published (JPEG masks, mel from "
          f"the wav at the exact frame time); {d['tsav_loop_with_db_logmel_and_png_masks']:.2e} with our PNG masks "
          "and log-mel windows fed through the same loop")
