"""``python -m tools.bench loader``: training clips/s of our LMDB ClipDataset vs TSAV's file reads.

Same clips for every loader (PNG mask, mask drawn from the landmarks, WebP crops, TSAV-style), per
DataLoader worker count; and the model's ``prepare`` hook on the device (our loader leaves that work to it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, default_collate

from data import build, store
from data.clips import ClipDataset
from models.registry import build_model
from models.tsav import prepare_clip_audio
from tools.bench.common import (
    TsavStyleClips,
    bench_device,
    cuda_sync,
    ensure_prepared,
    fmt,
    fresh_store,
    input_shape,
    input_spec,
    rates,
    thread_limit,
    timed,
)
from utils.inputs import AUDIO_DB, JITTER, PIXELS, InputSpec
from utils.tables import print_table


def sample_rows(ds: ClipDataset, n: int, seed: int,
                full_history: bool = True) -> tuple[list[int], list[tuple[str, int]]]:
    """``n`` random flat indices of the dataset and the (track, frame) each one is.

    ``full_history``: only frames whose whole clip lies inside the track (as almost every frame of a real,
    minutes-long Aff-Wild2 video), so that every clip reads all its frames.
    """
    hist = ds.spec.history if full_history else 0
    pool = np.concatenate([np.arange(ds.starts[t] + hist, ds.starts[t + 1]) for t in range(len(ds.tracks))])
    if len(pool) == 0:
        raise SystemExit("tools.bench: no track is longer than a clip; use longer videos or --any-frame")
    index = np.random.default_rng(seed).choice(pool, size=min(n, len(pool)), replace=False).tolist()
    rows = []
    for i in index:
        t, frame = ds.locate(i)
        rows.append((ds.tracks[t].name, frame))
    return index, rows


def drain(loader: DataLoader) -> int:
    """Samples in one pass over ``loader`` (every batch entry has one row per sample)."""
    n = 0
    for batch in loader:
        n += len(next(iter(batch.values())))
    return n


def tsav_inputs(pixels_of: dict, audio_of: dict) -> dict[str, torch.Tensor]:
    """TSAV's network inputs (on the CPU) of one clip made of the pixels of one raw sample and the dB audio
    window of another."""
    raw = {PIXELS: pixels_of[PIXELS][None], AUDIO_DB: audio_of[AUDIO_DB][None]}
    return prepare_clip_audio(raw, torch.device("cpu"))


def changed_values(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor:
    """|a − b| over the inputs that differ, flattened (a single 0 when none does)."""
    diffs = [(a[k] - b[k]).abs().flatten() for k in a if not torch.equal(a[k], b[k])]
    return torch.cat(diffs) if diffs else torch.zeros(1)


def input_difference(ours: dict, tsav: dict) -> dict:
    """How far TSAV's inputs are from ours for one clip, in network-input (normalised) units.

    ``ours``, ``tsav``: raw samples of the same clip (our dataset's, ``TsavStyleClips.raw``). Pixels and audio
    are compared one at a time, each swapped into TSAV's sample, so each figure covers the inputs made from
    that part only. The pixels differ only in the mask channel (JPEG q100 rings around the lines). The audio
    differs because TSAV cuts the wav at the frame's exact time while ours slices the per-video log-mel at
    the nearest 10 ms column (up to 5 ms apart), and in the columns whose STFT frame reaches past the clip
    or the audio.
    """
    reference = tsav_inputs(tsav, tsav)
    pixels = changed_values(tsav_inputs(ours, tsav), reference)
    sound = changed_values(tsav_inputs(tsav, ours), reference)
    return {"clip_max_abs": float(pixels.max()), "audio_median_abs": float(sound.median()),
            "audio_max_abs": float(sound.max())}


def webp_copy(db_path: Path, out: Path, quality: int = 90) -> Path:
    """The database with its crops re-encoded as WebP (what --crop-format webp stores), for the loader timing."""
    with store.Store(db_path) as src, fresh_store(out, stored_masks := tuple(src.schema()["masks"])) as dst:
        items = []
        for k, v in src.scan(b""):
            if k.startswith(b"f/"):
                frames = {}
                for slot in range(store.FRAMES_PER_VALUE):
                    parts = {p: store.unpack_frame(v, slot, p) for p in ("rgb", *stored_masks)}
                    if parts["rgb"] is not None:
                        rgb = build.decode_crop(bytes(parts["rgb"]))
                        frames[slot] = {p: build.encode_crop(rgb, "webp", quality) if p == "rgb" else bytes(b)
                                        for p, b in parts.items() if b is not None}
                v = store.pack_frames(frames)
            if k != store.SCHEMA_KEY:
                items.append((k, v))
        dst._transaction(items)
    return out


def bench_loader(args: argparse.Namespace) -> dict:
    db_path, export = ensure_prepared(args)
    spec = input_spec(args)
    ours = ClipDataset(db_path, None, args.layout, spec)
    index, rows = sample_rows(ours, args.clips, args.seed, not args.any_frame)
    tsav = TsavStyleClips(export, rows, spec)
    diff = input_difference(ours[index[-1]], tsav.raw(len(rows) - 1))
    result = {"clips": len(rows), "batch_size": args.loader_batch, "input": spec.to_dict(), "workers": {},
              "input_difference": diff, "threads_per_worker": 1}
    with thread_limit(1):  # DataLoader workers run one torch thread; the main process (0 workers) too
        drawn = ClipDataset(db_path, None, args.layout, spec, draw_mask=True)
        webp = ClipDataset(webp_copy(db_path, Path(args.work) / "db_webp"), None, args.layout, spec, draw_mask=True)
        for w in args.loader_workers:
            result["workers"][str(w)] = loader_entry(
                args, w, {"lmdb": ours, "lmdb_drawn_mask": drawn, "lmdb_webp_drawn_mask": webp}, index, tsav)
    result["prepare"] = prepare_entry(args, ours, index)
    print_loader(result)
    return result


def loader_entry(args: argparse.Namespace, w: int, ours: dict[str, ClipDataset], index: list[int],
                 tsav: TsavStyleClips) -> dict:
    """Our loaders (mask PNG read, mask drawn from the landmarks) and TSAV's with ``w`` workers, same clips."""
    n = len(index)
    entry = {}
    for name, ds, sampler in [(k, v, index) for k, v in ours.items()] + [("tsav", tsav, list(range(n)))]:
        loader = DataLoader(ds, batch_size=args.loader_batch, sampler=sampler, num_workers=w,
                            persistent_workers=w > 0)
        secs = timed(lambda ld=loader: drain(ld), args.repeats, max(args.warmup, 1))
        entry[name] = {"clips_per_s": rates(n, secs), "clips_per_s_per_worker": rates(n / max(w, 1), secs)}
        del loader
    entry["speedup"] = entry["lmdb"]["clips_per_s"]["median"] / entry["tsav"]["clips_per_s"]["median"]
    for variant in ("drawn_mask", "webp_drawn_mask"):
        entry[f"speedup_{variant}"] = (entry[f"lmdb_{variant}"]["clips_per_s"]["median"]
                                       / entry["tsav"]["clips_per_s"]["median"])
    return entry


def weightless_model(name: str, layout: str, spec: InputSpec) -> nn.Module:
    """Model ``name`` built on the meta device: its hooks (``prepare``) without allocating or drawing weights."""
    with torch.device("meta"):
        return build_model(name, layout, input_spec=spec)


def prepare_entry(args: argparse.Namespace, ours: ClipDataset, index: list[int]) -> dict:
    """Our loader leaves uint8 → float, colour jitter and normalisation to the model's ``prepare`` on the device."""
    device = bench_device(args.device)
    model = weightless_model(args.model, args.layout, ours.spec)
    batch = default_collate([ours[i] for i in index[:args.loader_batch]])
    batch[JITTER][:, 0] = 1.1  # a brightness change in every clip: the jitter path, not the identity shortcut

    secs = timed(lambda: model.prepare(batch, device), args.repeats, max(args.warmup, 1), cuda_sync(device))
    return {"device": str(device), "model": args.model, "clips_per_s": rates(len(batch[PIXELS]), secs)}


def print_loader(r: dict) -> None:
    rows = [[w, fmt(e["lmdb"]["clips_per_s_per_worker"]), fmt(e["lmdb_drawn_mask"]["clips_per_s_per_worker"]),
             fmt(e["lmdb_webp_drawn_mask"]["clips_per_s_per_worker"]), fmt(e["tsav"]["clips_per_s_per_worker"]),
             f"{e['speedup']:.1f}x / {e['speedup_drawn_mask']:.1f}x / {e['speedup_webp_drawn_mask']:.1f}x"]
            for w, e in r["workers"].items()]
    print_table(["workers", "ours: JPEG + PNG mask", "JPEG, mask drawn (default)", "WebP, mask drawn", "TSAV-style",
                 "speedup (3 variants)"], rows, right=True,
                title=f"loader: {r['clips']} clips of {input_shape(r['input'])}, batch {r['batch_size']}")
    print("clips/s per worker, median [min-max]; 0 workers = in the main process")
    p = r["prepare"]
    print(f"ours on the device ({p['device']}, {p['model']}.prepare: float, jitter, normalise): "
          f"{fmt(p['clips_per_s'])} clips/s; TSAV-style does this in the loader")
    d = r["input_difference"]
    print(f"inputs ours vs TSAV (one clip, normalised units): clip max |diff| {d['clip_max_abs']:.3f} (JPEG mask), "
          f"audio median |diff| {d['audio_median_abs']:.4f}, max {d['audio_max_abs']:.2f} (TSAV cuts the wav at the "
          "exact frame time, ours at the nearest 10 ms column)")
