"""Raw videos (+ annotations) → one LMDB of aligned faces, masks, log-mel and labels.

    python create_database.py --videos VIDEOS --annotations ANNOTATIONS --out DB [--workers N]
    python create_database.py --report DB [--json FILE]
    python create_database.py --out DB --merge SHARD0 SHARD1 ...

See README "Database" for the key scheme and data/build.py for the pipeline.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import opts
from data import build, store


def print_table(rows: list[list], header: list[str]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for r in [header, ["-" * w for w in widths]] + rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))


def run_report(db_path: str, json_path: str | None) -> int:
    with store.Store(db_path) as db:
        rep = store.report(db)
    rows = [[t, v["frames"], v["faces"], "yes" if v["audio"] else "no",
             " ".join(f"{k}:{n}" for k, n in sorted(v["labels"].items())) or "-", v["status"][:40],
             v["sha256"][:12]] for t, v in sorted(rep["videos"].items())]
    print_table(rows, ["track", "frames", "faces", "audio", "valid labels", "status", "sha256"])
    t = rep["totals"]
    print(f"\n{t['videos']} videos ({t['videos_ok']} ok, {t['videos_failed']} failed), {t['tracks']} tracks, "
          f"{t['frames']} frames, face rate {t['face_rate']:.1%}, {t['bytes_per_frame'] / 1024:.1f} KiB/frame")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(rep, indent=1, sort_keys=True))
    return 0


def print_summary(metas: list[dict], seconds: float) -> None:
    ok = [m for m in metas if m["status"] == "ok"]
    frames = sum(m.get("frames", 0) for m in ok)
    faces = sum(m.get("faces", 0) for m in ok)
    n_tracks = sum(len(m.get("tracks", [])) for m in ok)
    nbytes = sum(m["stats"]["bytes"] for m in ok)
    stages: dict[str, float] = {}
    for m in metas:
        for k, v in m["stats"]["seconds"].items():
            stages[k] = stages.get(k, 0.0) + v
    rows = [["videos ok / failed", f"{len(ok)} / {len(metas) - len(ok)}"],
            ["frames", frames],
            ["face rate", f"{faces / max(1, frames * max(1, n_tracks) / max(1, len(ok))):.1%}"],
            ["wall seconds", f"{seconds:.1f}"],
            ["frames/s (wall)", f"{frames / seconds:.1f}" if seconds else "-"],
            ["bytes/frame", f"{nbytes / max(1, frames):.0f}"]]
    rows += [[f"  worker s in {k}", f"{v:.1f}"] for k, v in sorted(stages.items(), key=lambda kv: -kv[1])]
    print_table(rows, ["summary", "value"])
    for m in metas:
        if m["status"] != "ok":
            print(f"FAILED {m['source']}: {m['status']}")


def main(argv: list[str] | None = None) -> int:
    args = opts.create_database_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.report:
        return run_report(args.report, args.json)
    if args.merge:
        n = build.merge(args.out, args.merge)
        print(f"merged {n} videos into {args.out}")
        return 0
    mask_kinds = tuple(m.strip() for m in args.masks.split(",") if m.strip())
    unknown = set(mask_kinds) - set(build.MASK_RENDERERS)
    if unknown:
        print(f"error: --masks: unknown mask type(s) {sorted(unknown)}; choose from tsav, mtmt", file=sys.stderr)
        return 2
    jobs = build.collect_jobs(args.videos, args.annotations or None, args.test_lists, args.cropped_aligned,
                              args.tsav_alignment)
    jobs = build.select_shard(jobs, build.parse_shard(args.shard))[: args.limit]
    options = build.BuildOptions(masks=mask_kinds, detector=args.detector, detect_every=args.detect_every,
                                 limit_frames=args.limit_frames)
    t0 = time.perf_counter()
    metas = build.build(jobs, args.out, options, workers=args.workers)
    print_summary(metas, time.perf_counter() - t0)
    return 0 if all(m["status"] == "ok" for m in metas) else 1


if __name__ == "__main__":
    sys.exit(main())
