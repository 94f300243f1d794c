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
                   help="with --check: test-set list file(s) that name the expected tracks instead of the "
                   "annotation split: one track name per line (needs --videos for frame counts) or one "
                   "image per line (video/00001.jpg). A list is for the task its file name names "
                   "(VA/valence, EXPR/expression, AU/action), else for every task")
    return p


def create_database_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Raw videos → aligned 112x112 faces, TSAV/MTMT masks, log-mel and labels in one LMDB. "
        "Resumable: rerun the same command after a kill and finished videos are skipped.")
    p.add_argument("--videos", nargs="+", default=[f"{DEFAULT_DATA}/videos"],
                   help="folder(s) searched recursively for .mp4/.avi videos (batch1/ batch2/ or flat)")
    p.add_argument("--annotations", default=DEFAULT_ANNOTATIONS,
                   help="annotation folder of any edition (task folders or the multi-task files); "
                   "'' to build without labels")
    p.add_argument("--test-lists", nargs="*", default=[],
                   help="test-set list files: their _left/_right track names tell which videos hold two people")
    p.add_argument("--out", default="demo_out/db", help="LMDB folder to create or resume")
    p.add_argument("--workers", type=int, default=2,
                   help="processes that decode/detect/align in parallel (one writer); 1 = in-process")
    p.add_argument("--detector", choices=("hog", "cnn"), default="hog",
                   help="dlib face detector: HOG (fast, CPU) or the CNN/MMOD model (slow on CPU)")
    p.add_argument("--detect-every", type=int, default=5,
                   help="run the detector every k frames; landmarks follow the face in between")
    p.add_argument("--masks", default="tsav,mtmt",
                   help="comma-separated masks to render and store: tsav (lines), mtmt (filled regions)")
    p.add_argument("--shard", default=None, help="K/N: build only every N-th video starting at K (0-based)")
    p.add_argument("--merge", nargs="+", default=None, metavar="SHARD_DB",
                   help="instead of building, merge these shard databases into --out")
    p.add_argument("--cropped-aligned", default=None,
                   help="import official cropped_aligned/<track>/%%05d.jpg crops instead of detecting faces")
    p.add_argument("--tsav-alignment", default=None,
                   help="import TSAV alignment pickles (<video>.pkl or <video>_alignment_mask.pkl)")
    p.add_argument("--limit", type=int, default=None, help="process only the first N videos (after --shard)")
    p.add_argument("--limit-frames", type=int, default=None, help="debugging: only the first N frames per video")
    p.add_argument("--report", metavar="DB", default=None,
                   help="print a per-video summary of an existing database instead of building")
    p.add_argument("--json", default=None, help="with --report: also write the report as JSON here")
    return p
