"""Train any model of models.registry on the LMDB database (see opts.train_parser and app.training).

    python train.py --db demo_out/db --output-dir runs/tsav
    torchrun --nproc_per_node 4 train.py --db DB --output-dir runs/mtmt --model mtmt --ssl mean_teacher ...

An --output-dir that holds a run already (config.json, last.pth, best.pth, log.csv or tb/) is refused
unless --resume continues a checkpoint in it or --overwrite replaces it (utils.run_dir).

Exit codes: 0 done; 2 bad arguments or inputs, an output folder holding another run (reported before any
training step).
"""

from __future__ import annotations

import sys

from app.training import SetupError, run
from opts import train_parser


def main(argv: list[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    try:
        result = run(args)
    except SetupError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        return 2
    print(f"best validation total {result['best_score']:.4f} at epoch {result['best_epoch']}; "
          f"{result['epochs']} epochs, {result['steps']} steps; checkpoints in {result['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
