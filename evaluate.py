"""Score an ABAW submission with the official metrics of an edition, or check its format.

    python evaluate.py --pred SUBMISSION --annotations DIR --edition abaw2021 [--json scores.json] [--allow-partial]
    python evaluate.py --check SUBMISSION --annotations DIR --edition abaw3 [--videos DIR ...]

Exit codes: 0 ok; 1 --check found problems; 2 wrong usage or unreadable inputs (a missing submission, a
partial one given to --pred without --allow-partial).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from app.submission import check_submission, expected_for_check, score_submission
from opts import evaluate_parser
from utils.metrics import format_scores, write_json


def run_check(args) -> int:
    if not Path(args.check).exists():  # nothing to check is unusable input, not a format problem
        raise FileNotFoundError(f"{args.check}: no such file or folder")
    expected = expected_for_check(args.check, args.annotations, args.split, args.videos, args.test_list)
    problems = check_submission(args.check, args.edition, expected)
    for p in problems:
        print(p)
    print(f"{len(problems)} problem{'s' * (len(problems) != 1)} in {args.check}")
    return 1 if problems else 0


def run_score(args) -> int:
    scores = score_submission(args.pred, args.annotations, args.edition, args.split, args.allow_partial)
    print(format_scores(scores))
    if args.json:
        write_json(scores, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = evaluate_parser()
    args = parser.parse_args(argv)
    if args.pred and (args.videos is not None or args.test_list is not None):
        parser.error("--videos and --test-list only apply to --check")
    if args.check and args.allow_partial:
        parser.error("--allow-partial only applies to --pred")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        return run_check(args) if args.check else run_score(args)
    except (OSError, ValueError) as e:  # AnnotationError and SubmissionError are ValueErrors
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
