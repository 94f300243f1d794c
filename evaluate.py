"""Score an ABAW submission with the official metrics of an edition, or check its format.

    python evaluate.py --pred SUBMISSION --annotations DIR --edition abaw2021 [--json scores.json] [--allow-partial]
    python evaluate.py --check SUBMISSION --annotations DIR --edition abaw3 [--videos DIR ...]
    python evaluate.py --compare A B --edition abaw2021 [--json agreement.json]
    python evaluate.py --pred predictions.txt --annotations LSD_ROOT/val --edition lsd [--json scores.json]
    python evaluate.py --check predictions.txt --annotations LSD_ROOT/val --edition lsd

With --edition lsd the submission is one LSD prediction file (rows image,class 0-5; app/submission/lsd.py) and
--annotations is the split folder it is for: its class folders are the truth (a folder of bare images can be
checked, not scored).

Exit codes: 0 ok (for --compare: compared, whatever the agreement); 1 --check found problems; 2 wrong usage
or unreadable inputs (a missing submission, a partial one given to --pred without --allow-partial, a
submission compared with raw outputs).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from app.submission import check_lsd, check_submission, expected_for_check, score_lsd, score_submission
from app.submission.compare import compare_sets, print_comparison
from app.submission.lsd import format_lsd_scores
from opts import evaluate_parser
from utils.metrics import format_scores, write_json


def run_check(args) -> int:
    if not Path(args.check).exists():  # nothing to check is unusable input, not a format problem
        raise FileNotFoundError(f"{args.check}: no such file or folder")
    if args.edition == "lsd":
        problems = check_lsd(args.check, args.annotations)
    else:
        expected = expected_for_check(args.check, args.annotations, args.split, args.videos, args.test_list)
        problems = check_submission(args.check, args.edition, expected)
    for p in problems:
        print(p)
    print(f"{len(problems)} problem{'s' * (len(problems) != 1)} in {args.check}")
    return 1 if problems else 0


def run_score(args) -> int:
    if args.edition == "lsd":
        scores = score_lsd(args.pred, args.annotations)
        print(format_lsd_scores(scores))
    else:
        scores = score_submission(args.pred, args.annotations, args.edition, args.split, args.allow_partial)
        print(format_scores(scores))
    if args.json:
        write_json(scores, args.json)
    return 0


def run_compare(args) -> int:
    result = compare_sets(args.compare[0], args.compare[1], args.edition)
    print_comparison(result)
    if args.json:
        write_json(result, args.json)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = evaluate_parser()
    args = parser.parse_args(argv)
    if not args.check and (args.videos is not None or args.test_list is not None):
        parser.error("--videos and --test-list only apply to --check")
    if not args.pred and args.allow_partial:
        parser.error("--allow-partial only applies to --pred")
    if args.edition == "lsd" and (args.compare or args.allow_partial or args.videos is not None
                                  or args.test_list is not None):
        parser.error("--edition lsd takes --pred or --check with --annotations SPLIT_DIR (no --compare, "
                     "--allow-partial, --videos or --test-list)")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.compare:
            return run_compare(args)
        return run_check(args) if args.check else run_score(args)
    except (OSError, ValueError) as e:  # AnnotationError and SubmissionError are ValueErrors
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
