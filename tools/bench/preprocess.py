"""``python -m tools.bench preprocess``: per-stage frames/s of create_database's work, bytes per frame.

Bytes per frame: ours vs TSAV's image files, and of create_database.py's other storage settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from data import build, build_plan, store, store_report
from data.reader import close_stores
from tools.bench.common import (
    PRE_STAGES,
    bench_jobs,
    build_options,
    ensure_data,
    finish_preparation,
    fmt,
    preprocess_pass,
    rates,
    summary,
    thread_limit,
)
from utils.tables import print_table

# create_database.py settings whose bytes the preprocess benchmark reports besides the benchmark database's
# (both masks stored as PNG, for the TSAV export and the mask comparison; JPEG q95): (--masks, --crop-format,
# --crop-quality). The first one is create_database.py's default.
STORAGE_VARIANTS = {"--masks none (default)": ((), "jpeg", 95),
                    "--masks none --crop-quality 90": ((), "jpeg", 90),
                    "--masks none --crop-format webp --crop-quality 90": ((), "webp", 90)}


def db_bytes(db_path: Path) -> dict:
    """Stored bytes by kind (keys included) and on-disk bytes of an LMDB database."""
    kinds: dict[str, int] = defaultdict(int)
    with store.Store(db_path) as db:
        track_frames = store_report.totals([db.video_meta(v) for v in db.video_names()])["track_frames"]
        for k, v in db.scan(b""):
            if k.startswith(b"f/"):  # a group of frames: count each part, the key and header as 'other'
                sizes = store.group_part_bytes(v)
                kinds["other"] += len(k) + sizes.pop("header")
                for part, n in sizes.items():
                    kinds[part] += n
            else:
                kinds["logmel" if k.endswith(b"/logmel") else "other"] += len(k) + len(v)
        used = db.disk_bytes()
    st = (db_path / "data.mdb").stat()
    return {"track_frames": track_frames, "stored": dict(kinds), "stored_total": sum(kinds.values()),
            "disk_used_pages": used, "file_bytes": st.st_size, "file_allocated": st.st_blocks * 512}


def tsav_bytes(index: dict) -> dict:
    tot = {k: sum(t["bytes"][k] for t in index.values()) for k in ("crop", "mask", "wav")}
    disk = {k: sum(t["disk_bytes"][k] for t in index.values()) for k in ("crop", "mask", "wav")}
    return {"track_frames": sum(t["frames"] for t in index.values()), "raw": tot, "disk": disk}


def bench_preprocess(args: argparse.Namespace) -> dict:
    root = ensure_data(args)
    jobs = bench_jobs(args, root)
    opts = build_options(args)
    work = Path(args.work)
    runs = []
    with thread_limit(1):  # one worker = one core: build.py's workers run torch with one thread too
        for r in range(args.warmup + args.repeats):
            res = preprocess_pass(jobs, opts, work / "db")
            if r >= args.warmup:
                runs.append(res)
    close_stores()
    finish_preparation(args, root)  # the last pass's database is the benchmark database
    frames = runs[0]["frames"]
    stages = {}
    for s in PRE_STAGES:
        secs = [run["seconds"].get(s, 0.0) for run in runs]
        stages[s] = {"seconds": summary(secs), "frames_per_s": rates(frames, secs)}
    total = [sum(run["seconds"].values()) for run in runs]
    cpu = [run["cpu_seconds"] for run in runs]
    ours = db_bytes(work / "db")
    tsav = tsav_bytes(json.loads((work / "tsav" / "index.json").read_text()))
    n = ours["track_frames"]
    images = (tsav["raw"]["crop"] + tsav["raw"]["mask"]) / n
    images_disk = (tsav["disk"]["crop"] + tsav["disk"]["mask"]) / n
    per_frame = {
        "ours_stored": ours["stored_total"] / n, "ours_disk": ours["disk_used_pages"] / n,
        "ours_file_allocated": ours["file_allocated"] / n,
        "ours_by_kind": {k: v / n for k, v in ours["stored"].items()},
        "tsav_images_raw": images, "tsav_images_disk": images_disk,
        "tsav_crop_raw": tsav["raw"]["crop"] / n, "tsav_mask_raw": tsav["raw"]["mask"] / n,
        "tsav_with_wav_raw": images + tsav["raw"]["wav"] / n,
        "tsav_with_wav_disk": images_disk + tsav["disk"]["wav"] / n,
    }
    per_frame["ratio_stored_vs_tsav_images_raw"] = per_frame["ours_stored"] / images
    per_frame["ratio_disk_vs_tsav_images_disk"] = per_frame["ours_disk"] / images_disk
    per_frame["ratio_disk_vs_tsav_with_wav_disk"] = per_frame["ours_disk"] / per_frame["tsav_with_wav_disk"]
    per_frame["variants"] = storage_variants(jobs, opts, work, images, images_disk)
    result = {"videos": [j.name for j in jobs], "tracks": sum(len(j.tracks) for j in jobs), "frames": frames,
              "track_frames": n, "threads": 1, "detector": opts.detector, "detect_every": opts.detect_every,
              "stages": stages, "overall": {"seconds": summary(total), "frames_per_s": rates(frames, total)},
              "overall_cpu": {"cpu_seconds": summary(cpu), "frames_per_cpu_s": rates(frames, cpu)},
              "bytes_per_frame": per_frame, "db": ours, "tsav": tsav}
    print_preprocess(result)
    return result


def crop_psnr(db_path: Path, reference: Path) -> float:
    """Mean PSNR (dB) of a database's crops against the same frames' crops in ``reference``."""
    values = []
    with store.Store(db_path) as a, store.Store(reference) as b, a.env.begin() as ta, b.env.begin() as tb:
        for video in a.video_names():
            for track in a.video_meta(video)["tracks"]:
                for i in np.flatnonzero(a.get_array(store.track_key(track) + b"/face")):
                    mine, ref = store.read_frame(ta, track, int(i), "rgb"), store.read_frame(tb, track, int(i), "rgb")
                    values.append(cv2.PSNR(build.decode_crop(mine), build.decode_crop(ref)))
    return float(np.mean(values)) if values else math.nan


def storage_variants(jobs: list[build_plan.VideoJob], opts: build_plan.BuildOptions, work: Path,
                     tsav_raw: float, tsav_disk: float) -> dict:
    """Bytes per track frame of the same videos built with each of ``STORAGE_VARIANTS`` (untimed)."""
    out = {}
    for label, (kinds, codec, quality) in STORAGE_VARIANTS.items():
        path = work / "db_variant"
        preprocess_pass(jobs, dataclasses.replace(opts, masks=kinds, crop_format=codec, crop_quality=quality), path)
        got = db_bytes(path)
        n = got["track_frames"]
        stored, disk = got["stored_total"] / n, got["disk_used_pages"] / n
        out[label] = {"stored": stored, "disk": disk, "ratio_stored": stored / tsav_raw, "ratio_disk": disk / tsav_disk,
                      "crop_psnr_vs_q95_db": crop_psnr(path, work / "db") if (codec, quality) != ("jpeg", 95) else None}
        shutil.rmtree(path)
    return out


def print_preprocess(r: dict) -> None:
    rows = [[s, fmt(v["seconds"], 3), fmt(v["frames_per_s"], 0)] for s, v in r["stages"].items()
            if v["seconds"]["median"] > 0]
    rows.append(["overall (1 worker, 1 thread)", fmt(r["overall"]["seconds"], 3), fmt(r["overall"]["frames_per_s"], 0)])
    rows.append(["overall per CPU-second (process CPU time)", fmt(r["overall_cpu"]["cpu_seconds"], 3),
                 fmt(r["overall_cpu"]["frames_per_cpu_s"], 0)])
    print_table(["stage", "seconds median [min-max]", "frames/s median [min-max]"], rows, right=True,
                title=f"preprocess: {r['frames']} frames of {len(r['videos'])} videos ({r['tracks']} tracks), "
                f"detector {r['detector']} every {r['detect_every']} frames")
    b = r["bytes_per_frame"]
    kinds = ", ".join(f"{k} {v:.0f}" for k, v in sorted(b["ours_by_kind"].items(), key=lambda kv: -kv[1]))
    print_table(title=f"bytes per track frame ({r['track_frames']} track frames)", right=True,
                header=["layout", "raw", "on disk"], rows=[
        ["ours --masks tsav,mtmt: LMDB (rgb JPEG q95 + 2 PNG masks + arrays + log-mel)", f"{b['ours_stored']:.0f}",
         f"{b['ours_disk']:.0f}"],
        ["TSAV: crop JPEG q95 + mask JPEG q100 (4 KiB blocks on disk)", f"{b['tsav_images_raw']:.0f}",
         f"{b['tsav_images_disk']:.0f}"],
        ["TSAV images + wav (44.1 kHz 16-bit per track)", f"{b['tsav_with_wav_raw']:.0f}",
         f"{b['tsav_with_wav_disk']:.0f}"],
        ["ratio ours / TSAV images", f"{b['ratio_stored_vs_tsav_images_raw']:.2f}",
         f"{b['ratio_disk_vs_tsav_images_disk']:.2f}"],
    ] + [[f"ours {label}" + (f" (crops {v['crop_psnr_vs_q95_db']:.1f} dB PSNR vs the JPEG q95 crops)"
                             if v["crop_psnr_vs_q95_db"] else "") + ": bytes (ratio)",
          f"{v['stored']:.0f} ({v['ratio_stored']:.2f})", f"{v['disk']:.0f} ({v['ratio_disk']:.2f})"]
         for label, v in b.get("variants", {}).items()])
    print(f"ours by kind (bytes/track frame): {kinds}")
