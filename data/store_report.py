"""The database summary behind ``create_database.py --report`` and the end-of-build table.

``totals`` sums video metas (videos ok/failed, frames, face rate, bytes, worker seconds per stage);
``report`` lists every track of a database with its frames, faces, valid labels, status and sha256.
"""

from __future__ import annotations

from data.store import Store


def totals(video_metas: list[dict]) -> dict:
    """Counts over video metas: videos ok/failed, tracks, frames (decoded frames, each video once),
    track_frames (frames × tracks), faces (over all tracks), face_rate = faces / track_frames,
    bytes (stored), bytes_per_frame = bytes / frames, and worker seconds per stage."""
    ok = [m for m in video_metas if m.get("status") == "ok"]
    t: dict = {"videos": len(video_metas), "videos_ok": len(ok), "videos_failed": len(video_metas) - len(ok),
               "tracks": sum(len(m.get("tracks", [])) for m in video_metas),
               "frames": sum(m.get("frames", 0) for m in ok),
               "track_frames": sum(m.get("frames", 0) * len(m.get("tracks", [])) for m in ok),
               "faces": sum(m.get("faces", 0) for m in ok),
               "bytes": sum(m.get("stats", {}).get("bytes", 0) for m in ok)}
    stages: dict[str, float] = {}
    for m in video_metas:
        for k, v in m.get("stats", {}).get("seconds", {}).items():
            stages[k] = stages.get(k, 0.0) + v
    t["face_rate"] = t["faces"] / t["track_frames"] if t["track_frames"] else 0.0
    t["bytes_per_frame"] = t["bytes"] / t["frames"] if t["frames"] else 0.0
    t["stage_seconds"] = stages
    t["seconds"] = sum(stages.values())
    return t


def report(db: Store) -> dict:
    """Per track (one entry per video, per person for two-person videos) and totals, as plain data.

    ``{"videos": {track: {"video", "frames", "faces", "audio", "labels": {task: valid frames},
    "splits", "status", "sha256"}}, "totals": totals(...) + disk_bytes(_per_frame), "schema": {...}}``;
    failed videos are included with their status (frames and faces 0).
    """
    videos: dict[str, dict] = {}
    metas = []
    for name in db.video_names():
        meta = db.video_meta(name)
        metas.append(meta)
        ok = meta.get("status") == "ok"
        for track in meta.get("tracks") or [name]:
            tm = (db.track_meta(track) or {}) if ok else {}
            videos[track] = {
                "video": name, "frames": meta.get("frames", 0) if ok else 0, "faces": tm.get("faces", 0),
                "audio": bool(meta.get("audio", False)),
                "labels": {task: v["valid"] for task, v in tm.get("labels", {}).items()},
                "splits": tm.get("splits", {}),
                "status": meta.get("status", "?"), "sha256": meta.get("sha256", ""),
            }
    t = totals(metas)
    t["disk_bytes"] = db.disk_bytes()
    t["disk_bytes_per_frame"] = t["disk_bytes"] / t["frames"] if t["frames"] else 0.0
    return {"videos": videos, "totals": t, "schema": db.schema()}
