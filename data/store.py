"""The LMDB schema: keys, record encoding, one write transaction per video, report and sha256.

One LMDB environment holds the whole database. Keys are ASCII; arrays are stored as ``.npy`` bytes
(self-describing dtype and shape), metadata as JSON. Frame indices are **0-based** source-frame
indices (annotation line k+1 and official crop ``%05d.jpg`` number k+1 both mean index k).

    __schema__                       JSON  {"version", "masks": [...]}
    v/<video>                        JSON  video meta; written last in the video's transaction, so its
                                           presence means the video is complete ("status": "ok" or
                                           "failed: <reason>")
    v/<video>/times                  npy   float64 (n,) presentation time of every decoded frame, s,
                                           relative to the first frame
    v/<video>/logmel                 npy   float16 (64, T) mel power in dB (not clamped, not
                                           normalised; see data.audio.window); absent without audio
    t/<track>                        JSON  track meta: video, person, faces, splits and label names
    t/<track>/face                   npy   bool (n,) has_face per source frame
    t/<track>/landmarks              npy   float16 (n, 68, 2) landmarks in 112x112 crop coordinates
                                           (NaN where there is no face)
    t/<track>/affine                 npy   float32 (n, 2, 3) frame → crop similarity (NaN: no face;
                                           unknown for imported official crops)
    t/<track>/confidence             npy   float16 (n,) face confidence in [0, 1] (0: no face)
    t/<track>/label/<TASK>/values    npy   labels fitted to n frames (sentinels kept)
    t/<track>/label/<TASK>/valid     npy   validity mask
    f/<track>/<%06d>/rgb             JPEG  112x112 RGB crop (quality 95); only frames with a face
    f/<track>/<%06d>/<mask>          PNG   112x112 grey mask (tsav, mtmt); only frames with a face

A track is a video name, or ``<video>_left`` / ``<video>_right`` for two-person videos.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np

SCHEMA_VERSION = 1
SCHEMA_KEY = b"__schema__"
INITIAL_MAP_SIZE = 1 << 30  # grows by doubling when full


def video_key(video: str) -> bytes:
    return f"v/{video}".encode()


def track_key(track: str) -> bytes:
    return f"t/{track}".encode()


def frame_key(track: str, index: int, part: str) -> bytes:
    return f"f/{track}/{index:06d}/{part}".encode()


def array_to_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def bytes_to_array(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


@dataclass
class VideoRecord:
    """Everything one video contributes to the database, as plain data (built by a worker)."""

    name: str
    meta: dict
    items: list[tuple[bytes, bytes]] = field(default_factory=list)  # every key except v/<video>

    def put_json(self, key: bytes, obj: dict) -> None:
        self.items.append((key, json.dumps(obj, sort_keys=True).encode()))

    def put_array(self, key: bytes, a: np.ndarray) -> None:
        self.items.append((key, array_to_bytes(a)))


def video_sha256(items: list[tuple[bytes, bytes]], meta: dict) -> str:
    """Hash of every stored byte of a video (keys and values in key order) and of its meta.

    The meta's own hash and its "stats" (timings, which differ run to run) are left out, so an
    interrupted-and-resumed build and an uninterrupted one give the same hash.
    """
    h = hashlib.sha256()
    for k, v in sorted(items):
        h.update(len(k).to_bytes(4, "little") + k + len(v).to_bytes(8, "little") + v)
    h.update(json.dumps({k: v for k, v in meta.items() if k not in ("sha256", "stats")}, sort_keys=True).encode())
    return h.hexdigest()


class Store:
    """A thin wrapper over one LMDB environment (single writer, many readers)."""

    def __init__(self, path: str | Path, readonly: bool = True, map_size: int = INITIAL_MAP_SIZE):
        self.path = Path(path)
        if readonly and not (self.path / "data.mdb").exists():
            raise FileNotFoundError(f"{self.path}: no LMDB database here (data.mdb missing)")
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
        self.readonly = readonly
        self.env = lmdb.open(str(self.path), readonly=readonly, lock=not readonly, readahead=False,
                             map_size=map_size, max_readers=512, subdir=True, meminit=False)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading -----------------------------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        with self.env.begin(buffers=False) as txn:
            return txn.get(key)

    def get_json(self, key: bytes) -> dict | None:
        b = self.get(key)
        return None if b is None else json.loads(b)

    def get_array(self, key: bytes) -> np.ndarray | None:
        b = self.get(key)
        return None if b is None else bytes_to_array(b)

    def schema(self) -> dict | None:
        return self.get_json(SCHEMA_KEY)

    def video_names(self) -> list[str]:
        """Names of the completed (ok or failed) videos, sorted."""
        return sorted(k.decode()[2:] for k, _ in self.scan(b"v/") if k.count(b"/") == 1)

    def video_meta(self, video: str) -> dict | None:
        return self.get_json(video_key(video))

    def track_meta(self, track: str) -> dict | None:
        return self.get_json(track_key(track))

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        with self.env.begin(buffers=False) as txn:
            cur = txn.cursor()
            if not cur.set_range(prefix):
                return
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                yield k, v

    def video_items(self, video: str) -> list[tuple[bytes, bytes]]:
        """Every stored (key, value) of a video except its meta key, in key order."""
        meta = self.video_meta(video) or {}
        items = [kv for kv in self.scan(video_key(video) + b"/")]
        for track in meta.get("tracks", []):
            items += [kv for kv in self.scan(track_key(track))
                      if kv[0] == track_key(track) or kv[0].startswith(track_key(track) + b"/")]
            items += list(self.scan(f"f/{track}/".encode()))
        return sorted(items)

    # --- writing -----------------------------------------------------------------------------------
    def write_schema(self, masks: list[str]) -> None:
        """Create the schema record, or check it matches an existing database."""
        have = self.schema()
        want = {"version": SCHEMA_VERSION, "masks": sorted(masks)}
        if have is None:
            self._put_all([(SCHEMA_KEY, json.dumps(want, sort_keys=True).encode())])
        elif have != want:
            raise ValueError(f"{self.path}: existing database has schema {have}, this run wants {want}; "
                             "use another --out or the same --masks")

    def delete_video(self, video: str) -> None:
        """Remove a video and all its tracks' keys (used before rewriting a failed video)."""
        keys = [k for k, _ in self.video_items(video)] + [video_key(video)]
        with self.env.begin(write=True) as txn:
            for k in keys:
                txn.delete(k)

    def write_video(self, rec: VideoRecord) -> str:
        """Commit a whole video in one transaction with its meta written last; returns the sha256."""
        if self.video_meta(rec.name) is not None:
            self.delete_video(rec.name)
        rec.meta["sha256"] = video_sha256(rec.items, rec.meta)
        meta = json.dumps(rec.meta, sort_keys=True).encode()
        self._put_all(rec.items + [(video_key(rec.name), meta)])
        return rec.meta["sha256"]

    def _put_all(self, items: list[tuple[bytes, bytes]]) -> None:
        """Write items in one transaction; on a full map, double the map size and retry."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for k, v in items:
                        txn.put(k, v)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)

    def copy_from(self, other: Store) -> int:
        """Copy every complete video of another database (a shard) into this one; returns the count."""
        n = 0
        for video in other.video_names():
            items = other.video_items(video)
            meta = other.get(video_key(video))
            if self.video_meta(video) is not None:
                self.delete_video(video)
            self._put_all(items + [(video_key(video), meta)])
            n += 1
        return n


def report(db: Store) -> dict:
    """Per track (one entry per video, per person for two-person videos) and totals, as plain data."""
    videos: dict[str, dict] = {}
    totals = {"videos": 0, "videos_ok": 0, "videos_failed": 0, "tracks": 0, "frames": 0, "faces": 0,
              "bytes": 0, "seconds": 0.0}
    for name in db.video_names():
        meta = db.video_meta(name)
        ok = meta["status"] == "ok"
        totals["videos"] += 1
        totals["videos_ok" if ok else "videos_failed"] += 1
        totals["bytes"] += meta.get("stats", {}).get("bytes", 0)
        totals["seconds"] += sum(meta.get("stats", {}).get("seconds", {}).values())
        for track in meta.get("tracks", [name]):
            tm = (db.track_meta(track) or {}) if ok else {}
            videos[track] = {
                "video": name, "frames": meta.get("frames", 0), "faces": tm.get("faces", 0),
                "audio": bool(meta.get("audio", False)),
                "labels": {task: v["valid"] for task, v in tm.get("labels", {}).items()},
                "status": meta["status"], "sha256": meta.get("sha256", ""),
            }
            totals["tracks"] += 1
            totals["frames"] += videos[track]["frames"]
            totals["faces"] += videos[track]["faces"]
    totals["face_rate"] = totals["faces"] / totals["frames"] if totals["frames"] else 0.0
    totals["bytes_per_frame"] = totals["bytes"] / totals["frames"] if totals["frames"] else 0.0
    return {"videos": videos, "totals": totals, "schema": db.schema()}
