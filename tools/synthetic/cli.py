"""Command line of the generator (``python -m tools.synthetic --out DIR --seed N [--quick] [--lsd]
[--unlabelled-faces N]``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tools.synthetic import lsd, unlabelled
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
    parser.add_argument("--lsd", action="store_true",
                        help="also write DIR/lsd, an LSD set (synthetic train/, real val/ crops; see "
                             "tools.synthetic.lsd); on a DIR that holds the dataset of this --seed and "
                             "--quick, only DIR/lsd is added (no video is re-rendered)")
    parser.add_argument("--lsd-per-class", type=int, default=lsd.PER_CLASS,
                        help=f"synthetic training images per class of --lsd (default {lsd.PER_CLASS})")
    parser.add_argument("--unlabelled-faces", type=int, default=0, metavar="N",
                        help="also write N aligned faces without labels to DIR/unlabelled_faces/ and their hidden "
                             "truth to DIR/unlabelled_faces_truth.json (see tools.synthetic.unlabelled); on a DIR "
                             "that holds the dataset of this --seed and --quick, only they are added "
                             "(default 0: none)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Generate the dataset the flags ask for and print a per-video summary (and what the options added)."""
    args = build_parser().parse_args(argv)
    if args.lsd or args.unlabelled_faces:
        check_targets(args)
        if lsd.dataset_matches(args.out, args.seed, args.quick):
            print(f"{args.out}: the mini dataset of seed {args.seed}{' (quick)' * args.quick} is there; "
                  "videos not re-rendered")
        else:
            generate_and_report(args)
        if args.lsd:
            add_lsd(args)
        if args.unlabelled_faces:
            add_unlabelled(args)
    else:
        generate_and_report(args)


def generate_and_report(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    meta, timings = generate_timed(args.out, args.seed, args.quick, args.workers)
    print_summary(meta, timings, time.perf_counter() - t0)


def check_targets(args: argparse.Namespace) -> None:
    """Refuse (exit 1, before anything is written) what the options would clobber: a DIR/lsd, a pool of
    unlabelled faces or a dataset in DIR that this run did not make with these settings."""
    if args.lsd:
        if args.lsd_per_class < 1:
            sys.exit("--lsd-per-class must be at least 1")
        found = lsd.state(args.out, args.seed, args.quick, args.lsd_per_class)
        if found not in ("absent", "complete"):
            sys.exit(f"{args.out / 'lsd'} exists and is not a complete LSD set of seed {args.seed}: {found}; "
                     "remove it or choose another --out")
    if args.unlabelled_faces < 0:
        sys.exit("--unlabelled-faces must be at least 0")
    if args.unlabelled_faces:
        found = unlabelled.state(args.out, args.seed, args.quick, args.unlabelled_faces)
        if found not in ("absent", "complete"):
            sys.exit(unlabelled.refusal(args.out, args.seed, found))
    if lsd.dataset_matches(args.out, args.seed, args.quick) is False:
        sys.exit(f"{args.out / 'meta.json'}: {args.out} holds another mini dataset (other --seed or --quick); "
                 "--lsd and --unlabelled-faces add to the dataset of their own seed only: choose another --out")


def add_lsd(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    try:
        meta = lsd.generate_lsd(args.out, args.seed, args.quick, args.lsd_per_class)
    except lsd.LsdRefused as e:  # DIR/lsd appeared since the check
        sys.exit(str(e))
    if meta is None:
        print(f"{args.out / 'lsd'}: the LSD set of seed {args.seed} is already there; nothing written")
        return
    print(f"{'lsd class':<12}{'train':>7}{'val':>6}  (val from validation / training tracks)")
    for folder in lsd.LSD_FOLDERS:
        src = meta["val_sources"][folder]
        print(f"{folder:<12}{meta['counts']['train'][folder]:>7}{meta['counts']['val'][folder]:>6}"
              f"  ({src['Validation_Set']} / {src['Train_Set']})")
    print(f"{args.out / 'lsd'}: written in {time.perf_counter() - t0:.1f} s")


def add_unlabelled(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    n = args.unlabelled_faces
    try:
        meta = unlabelled.generate_unlabelled(args.out, args.seed, args.quick, n)
    except unlabelled.UnlabelledRefused as e:  # something appeared there since the check
        sys.exit(str(e))
    if meta is None:
        print(f"{args.out / unlabelled.FOLDER}: the pool of {n} unlabelled faces of seed {args.seed} is already "
              "there; nothing written")
        return
    counts = ", ".join(f"{name} {c}" for name, c in meta["expr_counts"].items())
    print(f"{args.out / unlabelled.FOLDER}: {n} unlabelled faces written in {time.perf_counter() - t0:.1f} s "
          f"(hidden classes: {counts}; truth in {args.out / unlabelled.TRUTH})")
