"""Command line of the generator (``python -m tools.synthetic --out DIR --seed N [--quick]``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tools.synthetic.dataset import generate_timed


def print_summary(meta: dict, timings: dict[str, float], total_s: float) -> None:
    """Per-video table: name, container, frames, seconds of video, seconds to render."""
    print(f"{'video':<18}{'cont':>5}{'frames':>8}{'video s':>9}{'render s':>10}")
    for v in meta["videos"]:
        print(f"{v['name']:<18}{v['container']:>5}{v['n_frames']:>8}{v['duration_s']:>9.1f}"
              f"{timings[v['name']]:>10.1f}")
    frames = sum(v["n_frames"] for v in meta["videos"])
    seconds = sum(v["duration_s"] for v in meta["videos"])
    print(f"{'total':<18}{len(meta['videos']):>5}{frames:>8}{seconds:>9.1f}{total_s:>10.1f}  (wall)")


def build_parser() -> argparse.ArgumentParser:
    """The flags of ``python -m tools.synthetic``."""
    parser = argparse.ArgumentParser(prog="python -m tools.synthetic",
                                     description="Generate a mini Aff-Wild2 (videos, labels, crops).")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; same seed → same dataset")
    parser.add_argument("--quick", action="store_true", help="3-second videos instead of 10-20 s (for tests)")
    parser.add_argument("--workers", type=int, default=None,
                        help="parallel render processes (default: min(2, CPU count))")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Generate the dataset the flags ask for and print a per-video summary."""
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    meta, timings = generate_timed(args.out, args.seed, args.quick, args.workers)
    print_summary(meta, timings, time.perf_counter() - t0)
