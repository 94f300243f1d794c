"""Raw videos (+ annotations) → one LMDB of aligned faces, masks, log-mel and labels.

    python create_database.py --videos VIDEOS --annotations ANNOTATIONS --out DB [--workers N]
    python create_database.py --report DB [--json FILE] [--verify]
    python create_database.py --out DB --merge SHARD0 SHARD1 ...

Exit status: 0 when every video is ok, 1 when some video failed (listed at the end; rerun the same
command to retry them) or, with --report --verify, when some video's stored bytes no longer match its
sha256; 2 for bad arguments or paths, a database another build is writing, or a full disk (one line
naming the flag or path).
See README "Database" for the key scheme and data/build.py for the pipeline.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import lmdb

import opts
from data import build, build_plan, masks, store, store_report
from data.annotations import AnnotationError
from data.db_lock import DatabaseBusyError
from data.verify import OK, verify_videos
from utils.tables import print_table


class UsageError(Exception):
    """A bad flag or path: printed as one line, exit status 2."""


def run_report(db_path: str, json_path: str | None, verify: bool = False) -> int:
    with store.Store(db_path) as db:
        if db.schema() is None:
            raise UsageError(f"{db_path}: not a database built by create_database.py (no schema record)")
        rep = store_report.report(db)
        for v in rep["videos"].values():  # whether the PCM that --audio-window reference needs is stored
            v["pcm"] = bool((db.video_meta(v["video"]) or {}).get("pcm", False))
        checked = verify_videos(db, db.video_names()) if verify else {}
    header = ["track", "frames", "faces", "audio", "pcm", "valid labels", "status", "sha256"]
    rows = [[t, v["frames"], v["faces"], "yes" if v["audio"] else "no",
             ("yes" if v["pcm"] else "no") if v["audio"] else "-",
             " ".join(f"{k}:{n}" for k, n in sorted(v["labels"].items())) or "-", v["status"][:40],
             v["sha256"][:12]] for t, v in sorted(rep["videos"].items())]
    if verify:
        header.append("verified")
        for row, (_, v) in zip(rows, sorted(rep["videos"].items())):
            v["verified"] = checked[v["video"]]
            row.append(v["verified"][:40])
    print_table(header, rows)
    t = rep["totals"]
    print(f"\n{t['videos']} videos ({t['videos_ok']} ok, {t['videos_failed']} failed), {t['tracks']} tracks, "
          f"{t['frames']} frames, face rate {t['face_rate']:.1%}, {t['bytes_per_frame'] / 1024:.1f} KiB/frame "
          f"stored, {t['disk_bytes_per_frame'] / 1024:.1f} KiB/frame on disk ({t['disk_bytes'] / 2**20:.1f} MiB)")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(rep, indent=1, sort_keys=True) + "\n")
    damaged = sorted(v for v, status in checked.items() if status != OK)
    if verify:
        print(f"verified: {len(checked) - len(damaged)} of {len(checked)} videos match their sha256"
              + (f"; DAMAGED: {', '.join(damaged)} (rerun the build command with --verify to rebuild them)"
                 if damaged else ""))
    return 1 if damaged else 0


def summary_rows(metas: list[dict], seconds: float) -> list[list]:
    """The end-of-build table: videos ok/failed, frames, face rate over all tracks, speed, size."""
    t = store_report.totals(metas)
    rows = [["videos ok / failed", f"{t['videos_ok']} / {t['videos_failed']}"],
            ["tracks", t["tracks"]],
            ["frames (decoded)", t["frames"]],
            ["face rate (faces / frames x tracks)", f"{t['face_rate']:.1%}" if t["track_frames"] else "-"],
            ["wall seconds", f"{seconds:.1f}"],
            ["frames/s (wall)", f"{t['frames'] / seconds:.1f}" if seconds > 0 else "-"],
            ["bytes/frame", f"{t['bytes_per_frame']:.0f}" if t["frames"] else "-"]]
    rows += [[f"  worker s in {k}", f"{v:.1f}"] for k, v in sorted(t["stage_seconds"].items(), key=lambda kv: -kv[1])]
    return rows


def print_summary(metas: list[dict], seconds: float) -> None:
    print_table(["summary", "value"], summary_rows(metas, seconds))
    for m in metas:
        if m["status"] != "ok":
            print(f"FAILED {m.get('source', m.get('name'))}: {m['status']}")


def mask_kinds(spec: str) -> tuple[str, ...]:
    """--masks → the mask types to store ('none': none; readers draw every mask from the landmarks)."""
    if spec.strip() == "none":
        return ()
    kinds = tuple(dict.fromkeys(m.strip() for m in spec.split(",") if m.strip()))
    unknown = sorted(set(kinds) - set(masks.RENDERERS))
    if unknown or not kinds:
        raise UsageError(f"--masks {spec!r}: unknown or no mask type {unknown}; choose from "
                         f"{', '.join(masks.RENDERERS)} or none")
    return kinds


def run(args) -> int:
    if args.json and not args.report:
        raise UsageError("--json is only used with --report")
    if args.report:
        return run_report(args.report, args.json, args.verify)
    if args.verify and args.merge:
        raise UsageError("--verify is used with --report or when building, not with --merge (which checks "
                         "every shard video's sha256 anyway)")
    if args.merge:
        n = build.merge(args.out, args.merge, int(args.chunk_mb * 2**20))
        print(f"merged {n} videos into {args.out}")
        return 0
    kinds = mask_kinds(args.masks)
    if args.tsav_alignment and "tsav" not in kinds:
        # Drawn from the pickle's own (float) landmarks, as TSAV drew them; a mask redrawn from the stored
        # float16 landmarks would move ~14 of ~240 line pixels by 1 px.
        kinds = (*kinds, "tsav")
        print("--tsav-alignment: storing the TSAV line masks drawn from the pickles' landmarks (--masks tsav)")
    for folder in args.videos:
        if not Path(folder).is_dir():
            raise UsageError(f"{folder}: video folder not found (--videos)")
    if args.annotations and not Path(args.annotations).is_dir():
        raise UsageError(f"{args.annotations}: annotation folder not found (--annotations; '' for none)")
    jobs = build_plan.collect_jobs(args.videos, args.annotations or None, args.test_lists, args.cropped_aligned,
                                   args.tsav_alignment)
    jobs = build_plan.select_shard(jobs, args.shard or (0, 1))[: args.limit]
    options = build_plan.BuildOptions(masks=kinds, detector=args.detector, detect_every=args.detect_every,
                                      limit_frames=args.limit_frames, crop_format=args.crop_format,
                                      crop_quality=args.crop_quality, chunk_bytes=int(args.chunk_mb * 2**20),
                                      store_pcm=args.store_pcm)
    t0 = time.perf_counter()
    metas = build.build(jobs, args.out, options, workers=args.workers, verify=args.verify)
    if not metas:
        print(f"nothing to do: all {len(jobs)} videos are already complete in {args.out}")
        return 0
    print_summary(metas, time.perf_counter() - t0)
    with store.Store(args.out) as db:
        print(f"database {args.out}: {len(db.video_names())} videos, {db.disk_bytes() / 2**20:.1f} MiB on disk")
    return 0 if all(m["status"] == "ok" for m in metas) else 1


def main(argv: list[str] | None = None) -> int:
    args = opts.create_database_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except (UsageError, FileNotFoundError, NotADirectoryError, AnnotationError, ValueError, lmdb.Error,
            DatabaseBusyError) as e:
        print(f"create_database.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
