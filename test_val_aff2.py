"""Per-frame predictions for every video of a split (ABAW submission files), for any one video, the late
fusion of the raw outputs of several split runs, or the class of every image of an LSD split folder.

    python test_val_aff2.py --checkpoint best.pth --db DB --split val --edition abaw2021 --out DIR
    python test_val_aff2.py --checkpoint best.pth --video FILE.mp4 --out DIR [--overlay]
    python test_val_aff2.py --fuse RUN_A/raw RUN_B/raw [--fuse-weights 0.6,0.4] --db DB --split val --out DIR
    python test_val_aff2.py --checkpoint best.pth --lsd LSD_ROOT --split val --out DIR

See README "Inference" and "LSD predictions", app/split_run.py, app/video_run.py, app/fusion.py and
app/lsd_run.py.
"""

from __future__ import annotations

import sys

from app.fusion import flag_problem, run_fusion
from app.lsd_run import lsd_flag_problem, run_lsd
from app.split_run import run_split
from app.video_run import run_video
from opts import test_parser


def main(argv: list[str] | None = None) -> int:
    parser = test_parser()
    args = parser.parse_args(argv)
    problem = lsd_flag_problem(args) or flag_problem(args)  # --checkpoint or --fuse, and what goes with each
    if problem:
        parser.error(problem)
    try:
        if args.lsd is not None:
            result = run_lsd(args)
        else:
            result = run_fusion(args) if args.fuse else run_video(args) if args.video else run_split(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"test_val_aff2.py: error: {e}", file=sys.stderr)
        return 2
    return 1 if result.get("problems") else 0


if __name__ == "__main__":
    sys.exit(main())
