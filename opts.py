"""Every command-line flag of the top-level scripts, with relative defaults, grouped per script.

Each ``*_parser()`` returns a plain ``argparse.ArgumentParser``; the scripts only parse and call one
function. Nothing here reads global state.
"""

from __future__ import annotations

import argparse

EDITIONS = ("abaw2020", "abaw2021", "abaw3")

# Relative defaults shared by the scripts (the demo writes under demo_out/).
DEFAULT_DATA = "demo_out/mini_affwild2"
DEFAULT_ANNOTATIONS = f"{DEFAULT_DATA}/annotations/abaw2021"


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Score ABAW predictions with the official metrics of an edition, or check a "
        "submission for format problems (--check).")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--pred", help="submission folder (VA_Set/ EXPR_Set/ AU_Set/ of per-video files) "
                      "or one single-file submission (2023+ per track, or MTL)")
    what.add_argument("--check", metavar="PATH", help="check this submission (folder or file) and report "
                      "every problem with file and line; exit code 1 if there is any")
    p.add_argument("--annotations", default=DEFAULT_ANNOTATIONS,
                   help="folder holding the task folders (VA_Set/EXPR_Set/AU_Set or the 2022+ names) "
                   "or the multi-task annotation files")
    p.add_argument("--edition", choices=EDITIONS, default="abaw2021",
                   help="which edition's metrics, class count and AU set to use")
    p.add_argument("--split", default="Validation_Set",
                   help="annotation split to score against (Validation_Set or Train_Set)")
    p.add_argument("--json", default=None, help="also write the scores as JSON to this file")
    p.add_argument("--videos", nargs="*", default=None,
                   help="with --check: folders of the videos, to count the frames each file must have "
                   "(without it the annotation line counts are used)")
    p.add_argument("--test-list", nargs="*", default=None,
                   help="with --check: test-set list file(s) (one track name per line) that name the "
                   "expected tracks instead of the annotation split; needs --videos for frame counts")
    return p
