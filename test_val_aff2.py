"""Per-frame predictions for every video of a split (ABAW submission files), or for any one video.

    python test_val_aff2.py --checkpoint best.pth --db DB --split val --edition abaw2021 --out DIR
    python test_val_aff2.py --checkpoint best.pth --video FILE.mp4 --out DIR [--overlay]

See README "Inference", app/split_run.py and app/video_run.py.
"""

from __future__ import annotations

import sys

from app.split_run import run_split
from app.video_run import run_video
from opts import test_parser


def main(argv: list[str] | None = None) -> int:
    args = test_parser().parse_args(argv)
    try:
        result = run_video(args) if args.video else run_split(args)
    except (ValueError, FileNotFoundError, KeyError, RuntimeError) as e:
        print(f"test_val_aff2.py: error: {e}", file=sys.stderr)
        return 2
    return 1 if result.get("problems") else 0


if __name__ == "__main__":
    sys.exit(main())
