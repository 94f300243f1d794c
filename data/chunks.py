"""One video written in several transactions, its meta last: a long video never sits whole in memory.

The pipeline hands its finished frame groups on every ``chunk_bytes`` (``Spill``, in the process that
runs the pipeline); the single writer (``VideoWriter``, in the main process) commits each chunk as its
own transaction and the rest of the video with its meta in a last one. So "the meta is present ⇔ the
video is complete" still holds, and a reader never uses a half-written video.

While a video is being written a marker ``partial/<video>`` (JSON ``{"tracks": [...]}``) names the
tracks whose keys it wrote. The first chunk's transaction deletes every key the video name had (an
older version, or what an interrupted write left) and writes the marker; the last one writes the meta
and deletes the marker. A build killed in between leaves the marker: the next build deletes that
partial data first (``clear_interrupted``), so a resumed build ends with the same bytes and sha256 as
an uninterrupted one. The sha256 of a video written in chunks is computed from the stored values, read
one at a time, merged in key order with the last transaction's items: the same number
``store.video_sha256`` gives for the whole record.
"""

from __future__ import annotations

import heapq
import json
import time
from collections.abc import Callable

from data import store

PARTIAL_PREFIX = b"partial/"
CHUNK_BYTES = 16 << 20  # default bytes of frame groups per transaction (~1,000 frames of 17 KB)
PROGRESS_SECONDS = 1.0  # at most one progress report per second per video


def partial_key(video: str) -> bytes:
    return PARTIAL_PREFIX + video.encode()


class Spill:
    """Producer side: sends the record's items once they reach ``limit`` bytes, reports frame progress.

    ``send(items)`` takes a list of (key, value) that no later chunk repeats (finished frame groups);
    ``progress(frames_done, frames_expected)`` is called at most every PROGRESS_SECONDS. Either may be None.
    """

    def __init__(self, rec: store.VideoRecord, limit: int, total_frames: int,
                 send: Callable[[list[tuple[bytes, bytes]]], None] | None = None,
                 progress: Callable[[int, int], None] | None = None):
        self.rec, self.limit, self.total = rec, limit, total_frames
        self.send, self.progress = send, progress
        self.chunks = 0  # chunks sent
        self.sent_bytes = 0  # key + value bytes sent
        self._pending = 0  # bytes of rec.items[:self._counted]
        self._counted = 0
        self._last_report = -float("inf")  # the first frame is reported at once

    def frame_done(self, frames: int) -> None:
        """After each frame: send the pending items when they are large enough; report progress."""
        if self.send is not None:
            new = self.rec.items[self._counted:]
            self._pending += sum(len(k) + len(v) for k, v in new)
            self._counted += len(new)
            if self._pending >= self.limit:
                self.flush()
        now = time.monotonic()
        if self.progress is not None and now - self._last_report >= PROGRESS_SECONDS:
            self._last_report = now
            self.progress(frames, max(self.total, frames))

    def flush(self) -> None:
        """Send every item collected so far (nothing when there is none)."""
        if self.send is None or not self.rec.items:
            return
        items, self.rec.items = self.rec.items, []
        self.send(items)
        self.chunks += 1
        self.sent_bytes += sum(len(k) + len(v) for k, v in items)
        self._pending = self._counted = 0


class VideoWriter:
    """Writer side (the one process that writes the database): chunks, then the last transaction."""

    def __init__(self, db: store.Store):
        self.db = db
        self.started: dict[str, list[str]] = {}  # video → tracks, for videos with chunks written

    def _stale_keys(self, video: str, tracks: list[str]) -> list[bytes]:
        """Every key the name ``video`` has now: its meta, an older version's keys, an interrupted write's."""
        old = self.db.video_meta(video) or {}
        marker = self.db.get_json(partial_key(video)) or {}
        every = set(tracks) | set(old.get("tracks", [])) | set(marker.get("tracks", []))
        return [store.video_key(video), partial_key(video)] + self.db.video_keys(video, sorted(every))

    def chunk(self, video: str, tracks: list[str], items: list[tuple[bytes, bytes]]) -> None:
        """Commit one chunk; the first one of a video clears what its name had and writes the marker."""
        delete: list[bytes] = []
        if video not in self.started:
            delete = self._stale_keys(video, tracks)
            items = items + [(partial_key(video), json.dumps({"tracks": list(tracks)}).encode())]
            self.started[video] = list(tracks)
        self.db.write(items, delete)

    def abandon(self, video: str) -> None:
        """Forget a video whose producer died: its chunks stay (with the marker) until it is rewritten."""
        self.started.pop(video, None)

    def finish(self, rec: store.VideoRecord) -> str:
        """The last transaction: the record's remaining items and its meta (with the sha256 over every
        stored byte of the video); returns the sha256. A failed record removes the chunks written."""
        tracks = self.started.pop(rec.name, None)
        ok = rec.meta.get("status") == "ok"
        if tracks is None or not ok:
            delete = self._stale_keys(rec.name, list(rec.meta.get("tracks") or tracks or []))
            rec.meta["sha256"] = store.video_sha256(rec.items, rec.meta)
        else:
            stored = self.db.iter_items(self.db.video_keys(rec.name, tracks))
            merged = heapq.merge(stored, sorted(rec.items), key=lambda kv: kv[0])
            rec.meta["sha256"] = store.sorted_items_sha256(merged, rec.meta)
            delete = [partial_key(rec.name)]
        meta = json.dumps(rec.meta, sort_keys=True).encode()
        self.db.write(rec.items + [(store.video_key(rec.name), meta)], delete)
        return rec.meta["sha256"]


def clear_interrupted(db: store.Store) -> list[str]:
    """Delete what interrupted writes left (keys of videos with a marker and no meta); returns their names."""
    names = []
    for key in db.keys(PARTIAL_PREFIX):
        video = key[len(PARTIAL_PREFIX):].decode()
        tracks = (db.get_json(key) or {}).get("tracks", [])
        db.write([], [key] + db.video_keys(video, tracks))
        names.append(video)
    return names


def copy_videos(src: store.Store, writer: VideoWriter, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Copy every complete video of ``src`` (a shard) through ``writer``, ``chunk_bytes`` at a time; returns
    the count. Each video's stored bytes are checked against its sha256 first; a video stored here with
    status ok is not replaced by a failed one."""
    n = 0
    for video in src.video_names():
        meta = src.video_meta(video)
        if src.stored_sha256(video, meta) != meta.get("sha256"):
            raise ValueError(f"{src.path}: video {video} does not match its sha256 (damaged database?)")
        mine = writer.db.video_meta(video)
        if mine is not None and mine.get("status") == "ok" and meta.get("status") != "ok":
            continue
        tracks = list(meta.get("tracks", []))
        batch, size = [], 0
        for k, v in src.iter_items(src.video_keys(video, tracks)):
            batch.append((k, v))
            size += len(k) + len(v)
            if size >= chunk_bytes:
                writer.chunk(video, tracks, batch)
                batch, size = [], 0
        want = meta["sha256"]
        if writer.finish(store.VideoRecord(video, dict(meta), batch)) != want:
            raise ValueError(f"{writer.db.path}: video {video} copied from {src.path} does not match its sha256")
        n += 1
    return n
