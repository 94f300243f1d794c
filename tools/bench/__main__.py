"""Benchmarks of every costly step, against faithful re-creations of the TSAV (ABAW 2020) way of doing it.

    python -m tools.bench preprocess [--json FILE]   # per-stage frames/s of create_database, bytes per frame
    python -m tools.bench loader                     # training clips/s: our LMDB ClipDataset vs TSAV's files
    python -m tools.bench train                      # model step clips/s: fp32/bf16, channels-last, compile, DDP
    python -m tools.bench infer                      # end-to-end frames/s: app.inference vs TSAV's per-frame loop
    python -m tools.bench all --json bench_out/cpu.json

The work folder (``--work``: data, benchmark database, TSAV export) is described in ``tools/bench/common.py``;
one module per sub-command does the measuring (``preprocess.py``, ``loader.py``, ``train.py``, ``infer.py``);
this one is the command line, the ``all`` driver and the goals.

Every figure is the median of ``--repeats`` timed runs after ``--warmup`` untimed ones, with min and max;
the JSON also records the machine, its load average and the library versions. Timings on a shared
machine are noisy: compare medians, and only figures taken on the same machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tools.bench.common import (
    library_versions,
    machine_info,
)
from tools.bench.infer import bench_infer
from tools.bench.loader import bench_loader
from tools.bench.preprocess import bench_preprocess
from tools.bench.train import bench_train
from utils.tables import print_table

COMMANDS = ("preprocess", "loader", "train", "infer", "all")
DEFAULT_VIDEOS = ("1-30-480x270", "video2", "7-30-640x360")  # mp4+AAC, avi+PCM 22 kHz, two people


GOALS = {"speedup": 10.0, "preprocess_fps_per_core": 100.0, "bytes_ratio": 1 / 3, "ddp_efficiency": 0.9}


def at_least(value: float, goal: str) -> dict:
    """A goal entry: ``value`` against the lower bound ``GOALS[goal]``."""
    return {"value": value, "target": f">= {GOALS[goal]:g}", "met": value >= GOALS[goal]}


def at_most(value: float, goal: str) -> dict:
    """A goal entry: ``value`` against the upper bound ``GOALS[goal]``."""
    return {"value": value, "target": f"<= {GOALS[goal]:.3f}", "met": value <= GOALS[goal]}


def goals(results: dict) -> dict:
    """Each goal: the figure, the target and whether it is met (only for the sub-commands that ran)."""
    g: dict = {}
    if "preprocess" in results:
        p = results["preprocess"]
        fps = p["overall"]["frames_per_s"]["median"]
        for name, fps in (("preprocess_frames_per_s_per_worker", p["overall"]["frames_per_s"]["median"]),
                          ("preprocess_frames_per_cpu_second", p["overall_cpu"]["frames_per_cpu_s"]["median"])):
            g[name] = at_least(fps, "preprocess_fps_per_core")
        for key in ("ratio_stored_vs_tsav_images_raw", "ratio_disk_vs_tsav_images_disk"):
            g[f"bytes_{key}_both_masks_stored"] = at_most(p["bytes_per_frame"][key], "bytes_ratio")
        for label, var in p["bytes_per_frame"].get("variants", {}).items():
            for key in ("ratio_stored", "ratio_disk"):
                g[f"bytes_{key} {label}"] = at_most(var[key], "bytes_ratio")
    if "loader" in results:
        for w, e in results["loader"]["workers"].items():
            for key in ("speedup", "speedup_drawn_mask", "speedup_webp_drawn_mask"):
                g[f"loader_{key}_{w}_workers"] = at_least(e[key], "speedup")
    if "infer" in results:
        for k in ("end_to_end", "inputs_only"):
            g[f"infer_speedup_{k}"] = at_least(results["infer"][k]["speedup"], "speedup")
        g["infer_speedup_cpu_side_with_gpu_model"] = at_least(results["infer"]["inputs_only"]["speedup_decode_only"],
                                                              "speedup")
    if "train" in results and "ddp" in results["train"]:
        g["ddp_scaling_efficiency"] = at_least(results["train"]["ddp"]["efficiency"], "ddp_efficiency")
    if "train" in results and "loader" in results and "best_clips_per_s" in results["train"]:
        need = results["train"]["best_clips_per_s"]
        loaders = results["loader"]["workers"]
        per_worker = max(e["lmdb"]["clips_per_s_per_worker"]["median"]
                         for w, e in loaders.items() if w != "0" or len(loaders) == 1)
        workers = math.ceil(need / per_worker) if per_worker > 0 else None
        g["loader_workers_to_feed_training"] = {
            "value": workers, "train_clips_per_s": need, "loader_clips_per_s_per_worker": per_worker,
            "target": f"<= {os.cpu_count()} (cores)", "met": workers is not None and workers <= (os.cpu_count() or 1)}
    return g


def print_goals(g: dict) -> None:
    if g:
        print_table(title="goals", right=True, header=["figure", "value", "target", "met"],
                    rows=[[k, f"{v['value']:.3g}" if isinstance(v["value"], float) else v["value"], v["target"],
                           "yes" if v["met"] else "NO"] for k, v in g.items()])


RUNNERS = {"preprocess": bench_preprocess, "loader": bench_loader, "train": bench_train, "infer": bench_infer}


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=COMMANDS, help="what to measure ('all': the four, one JSON)")
    p.add_argument("--json", default=None, help="write the results (and machine, versions, goals) to this file")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median, min, max reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="device of the model (train, infer); preprocessing and loading run on the CPU")
    p.add_argument("--work", default="bench_out", help="work folder for the data, database and TSAV export")
    p.add_argument("--seed", type=int, default=0, help="seed of the model weights and of the sampled clips")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for train and infer (default: torch's, one per core); preprocessing and "
                   "loading always run one thread per worker")
    g = p.add_argument_group("data and preprocessing")
    g.add_argument("--data", default=None,
                   help="mini Aff-Wild2 root (or a folder of videos) to use; default: generate the quick one "
                   "(3 s videos) in WORK/mini")
    g.add_argument("--video-names", nargs="*", default=list(DEFAULT_VIDEOS),
                   help="videos (file stems) to preprocess and build the benchmark database from")
    g.add_argument("--limit-frames", type=int, default=None, help="use at most this many frames per video")
    g.add_argument("--detector", choices=("hog", "cnn"), default="hog", help="dlib face detector")
    g.add_argument("--detect-every", type=int, default=5, help="run the detector every k frames (as create_database)")
    g = p.add_argument_group("clips (loader, train, infer)")
    g.add_argument("--size", type=int, default=None,
                   help="crop side given to the model (default the published one: 112; emma, cotex, cnu 224)")
    g.add_argument("--clip-len", type=int, default=None,
                   help="frames per clip (default 8; cnu: frames per block, default the published 16)")
    g.add_argument("--dilation", type=int, default=6, help="frames between clip frames")
    g.add_argument("--audio-seconds", type=float, default=10.0, help="log-mel window (10 s = 1001 columns)")
    g.add_argument("--model", choices=("tsav", "mtmt", "emma", "cotex", "cnu"), default="tsav",
                   help="model to time (train, infer; emma, cotex: train only, one frame per sample; cnu: train only, "
                   "a block of --clip-len frames per sample)")
    g.add_argument("--model-size", choices=("base", "small", "tiny"), default="base",
                   help="emma, cotex: the published ViT-B/16 (base) or the demo's tiny ViT; cnu: the published "
                   "ResNet-50 face network (base) or the demo's ResNet-18 (small)")
    g.add_argument("--no-history-grad", action="store_true",
                   help="cnu: the block's earlier frames without gradient (train.py --no-history-grad)")
    g.add_argument("--layout", default=None,
                   help="output layout of the model (default: abaw2021; emma: emma; cotex: lsd)")
    g = p.add_argument_group("loader")
    g.add_argument("--clips", type=int, default=128, help="clips drawn at random (the same for both loaders)")
    g.add_argument("--loader-batch", type=int, default=8, help="DataLoader batch size")
    g.add_argument("--loader-workers", type=int, nargs="+", default=[0, 1, 2],
                   help="DataLoader worker counts (0: in the main process, with one torch thread like a worker)")
    g.add_argument("--any-frame", action="store_true",
                   help="draw clips from every frame, also the first ones whose clip reaches before the track start")
    g = p.add_argument_group("train")
    g.add_argument("--batch-size", type=int, default=2, help="clips per step (per process for DDP)")
    g.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                   help="fp32, and/or bf16 autocast (CPU or CUDA)")
    g.add_argument("--memory-formats", nargs="+", choices=("contiguous", "channels-last"),
                   default=["contiguous", "channels-last"], help="memory formats of the model and inputs")
    g.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="also time torch.compile'd steps (auto: on CUDA only; on CPU compiling takes minutes)")
    g.add_argument("--ddp-procs", type=int, default=2, help="processes of the CPU DDP run (gloo); < 2: skip DDP")
    g.add_argument("--ddp-threads", type=int, default=1, help="torch threads per DDP process (and the 1-process run)")
    g = p.add_argument_group("infer")
    g.add_argument("--frames", type=int, default=16,
                   help="frames run through the model (the track's first ones); the inputs-only run takes all")
    g.add_argument("--track", default=None, help="track to predict (default: the first one with sound)")
    g.add_argument("--infer-batch", type=int, default=16, help="app.inference batch size")
    g.add_argument("--infer-workers", type=int, default=0, help="app.inference DataLoader workers decoding chunks")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("tools.bench: --repeats must be >= 1 and --warmup >= 0")
    train_only = args.model in ("emma", "cotex", "cnu")
    if train_only and args.command != "train":
        raise SystemExit(f"tools.bench: --model {args.model} is measured by 'train' only (loader and infer compare "
                         "clip models with the TSAV-style pipeline)")
    args.size = args.size or (224 if train_only else 112)
    args.clip_len = args.clip_len or (16 if args.model == "cnu" else 8)
    args.layout = args.layout or {"emma": "emma", "cotex": "lsd", "cnu": "cnu"}.get(args.model, "abaw2021")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"machine": machine_info(), "versions": library_versions(), "args": vars(args), "results": {}}
    commands = list(RUNNERS) if args.command == "all" else [args.command]
    for name in commands:
        t0 = time.perf_counter()
        out["results"][name] = RUNNERS[name](args)
        out["results"][name]["wall_seconds"] = time.perf_counter() - t0
        print(f"({name}: {out['results'][name]['wall_seconds']:.0f} s)", flush=True)
    out["goals"] = goals(out["results"])
    out["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print_goals(out["goals"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(jsonable(out), indent=1) + "\n")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
