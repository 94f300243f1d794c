"""Recomputing every video's sha256 from the bytes stored now (``create_database.py --report DB --verify``).

The sha256 in a video's meta was computed when the video was written; ``--report`` alone prints it
without reading the video. Flipped bytes in data.mdb (a bad disk, a bad copy) only show when the
stored values are hashed again. Values are read one at a time, so memory does not grow with a video.
"""

from __future__ import annotations

import lmdb
from tqdm import tqdm

from data import store

OK, MISMATCH = "ok", "MISMATCH"


def verify_video(db: store.Store, video: str) -> str:
    """'ok', 'MISMATCH' (stored bytes no longer hash to the meta's sha256) or 'unreadable: <LMDB error>'."""
    try:
        meta = db.video_meta(video)
        if meta is None:
            return "unreadable: no meta"
        return OK if db.stored_sha256(video, meta) == meta.get("sha256") else MISMATCH
    except (lmdb.Error, ValueError) as e:  # a damaged page or meta: as damaged as a mismatch
        return f"unreadable: {e}"


def verify_videos(db: store.Store, videos: list[str]) -> dict[str, str]:
    """``verify_video`` of each video, with a progress bar over the stored bytes."""
    sizes = {}
    for v in videos:
        try:
            sizes[v] = int(((db.video_meta(v) or {}).get("stats") or {}).get("bytes", 0)) or 1
        except (lmdb.Error, ValueError):
            sizes[v] = 1
    out = {}
    with tqdm(total=sum(sizes.values()), desc="verifying sha256", unit="B", unit_scale=True, dynamic_ncols=True,
              disable=not videos) as bar:
        for v in videos:
            bar.set_postfix_str(v)
            out[v] = verify_video(db, v)
            bar.update(sizes[v])
    return out
