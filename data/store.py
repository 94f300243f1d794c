"""The LMDB schema: keys, record encoding, writing a video with its meta last, and sha256.

One LMDB environment holds the whole database. Keys are ASCII; arrays are stored as ``.npy`` bytes
(self-describing dtype and shape), metadata as JSON. Frame indices are **0-based** source-frame
indices (annotation line k+1 and official crop ``%05d.jpg`` number k+1 both mean index k).

    __schema__                       JSON  {"version", "masks": [...]}
    v/<video>                        JSON  video meta; written in the video's last transaction, so its
                                           presence means the video is complete ("status": "ok" or
                                           "failed: <reason>"); also "tracks", "frames", "faces" (all
                                           tracks), "audio", "importer", "options", "sha256", "stats"
    v/<video>/times                  npy   float64 (n,) presentation time of every decoded frame, s,
                                           relative to the first frame
    v/<video>/logmel                 npy   float16 (64, T) mel power in dB (not clamped, not
                                           normalised; see data.audio.window); absent without audio
    v/<video>/pcm                    npy   int16 (samples,) the same audio as 44.1 kHz PCM (data/pcm.py);
                                           only with --store-pcm (meta "pcm": true), absent without audio
    t/<track>                        JSON  track meta: video, person, frames, faces, "labels" (per
                                           annotated task: split, names, lines, valid) and "splits"
                                           (task → Train_Set | Validation_Set | test)
    t/<track>/face                   npy   bool (n,) has_face per source frame
    t/<track>/landmarks              npy   float16 (n, 68, 2) landmarks in 112x112 crop coordinates
                                           (NaN where there is no face)
    t/<track>/affine                 npy   float32 (n, 2, 3) frame → crop similarity (NaN: no face;
                                           unknown for imported official crops)
    t/<track>/confidence             npy   float16 (n,) face confidence in [0, 1] (0: no face)
    t/<track>/label/<TASK>/values    npy   labels fitted to n frames (sentinels kept)
    t/<track>/label/<TASK>/valid     npy   validity mask
    f/<track>/<%06d>                 group of FRAMES_PER_VALUE (8) consecutive frames from that index
                                           (``pack_frames``/``read_frame``), per frame with a face:
                                           rgb   112x112 RGB crop, JPEG q95 (--crop-format/quality)
                                           <mask> PNG 112x112 grey mask, for the masks in the schema
                                           (--masks); readers draw the others from the landmarks
                                           A group without any face is not stored. One value per 8
                                           frames instead of one per part: LMDB rounds every value over
                                           ~2 KiB up to whole 4 KiB pages.

    partial/<video>                  JSON  {"tracks": [...]}: only while a long video is written in several
                                           transactions (data/chunks.py); never next to v/<video>

A track is a video name, or ``<video>_left`` / ``<video>_right`` for two-person videos.

A failed video keeps only its meta key (with "tracks" and the reason in "status"). Rewriting a
video deletes its old keys; a short video is written whole in one transaction, a long one in
chunks with its meta in the last transaction (data/chunks.py), so a reader that goes by the meta
never sees a half-written video. A full map is grown (doubled) and the transaction retried; a full
disk raises NoSpaceError naming the folder.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import lmdb
import numpy as np

SCHEMA_VERSION = 2  # 2: frames packed FRAMES_PER_VALUE to a value (1: a value per frame and part)
SCHEMA_KEY = b"__schema__"
FRAMES_PER_VALUE = 8  # one LMDB value holds 8 consecutive frames' parts: no half-empty 4 KiB page per crop
INITIAL_MAP_SIZE = 1 << 30  # grows by doubling when full

# Meta fields that do not describe the content: left out of the sha256 (timings, where the file was).
VOLATILE_META = ("sha256", "stats", "source")


def video_key(video: str) -> bytes:
    return f"v/{video}".encode()


def track_key(track: str) -> bytes:
    return f"t/{track}".encode()


def group_key(track: str, index: int) -> bytes:
    """Key of the value holding frame ``index`` of a track (named by the group's first frame)."""
    return f"f/{track}/{index - index % FRAMES_PER_VALUE:06d}".encode()


_GROUP_MAGIC = b"FG"


def pack_frames(frames: dict[int, dict[str, bytes]]) -> bytes:
    """One group's value: {slot in the group (0..FRAMES_PER_VALUE-1): {part: bytes}} → header + payload.

    Header: b"FG", uint8 number of parts, uint8 slots, each part name (uint8 length + ASCII), then
    uint32 offsets into the payload of slot-major (slot, part) entries plus the end; an absent part or
    frame has length 0.
    """
    parts = sorted({p for f in frames.values() for p in f})
    head = bytearray(_GROUP_MAGIC + struct.pack("<BB", len(parts), FRAMES_PER_VALUE))
    for p in parts:
        head += struct.pack("<B", len(p)) + p.encode()
    offsets, payload, pos = [], [], 0
    for slot in range(FRAMES_PER_VALUE):
        for p in parts:
            b = frames.get(slot, {}).get(p, b"")
            offsets.append(pos)
            payload.append(b)
            pos += len(b)
    offsets.append(pos)
    return bytes(head) + struct.pack(f"<{len(offsets)}I", *offsets) + b"".join(payload)


def _group_header(mv: memoryview) -> tuple[list[str], int, int]:
    """(part names, slots, position of the offset table) of a group value."""
    if bytes(mv[:2]) != _GROUP_MAGIC:
        raise ValueError("not a frame group value (database built by another version?)")
    n_parts, n_slots = mv[2], mv[3]
    pos, names = 4, []
    for _ in range(n_parts):
        n = mv[pos]
        names.append(bytes(mv[pos + 1:pos + 1 + n]).decode())
        pos += 1 + n
    return names, n_slots, pos


def unpack_frame(value: bytes | memoryview, slot: int, part: str) -> memoryview | None:
    """The ``part`` bytes of ``slot`` in a group value (a view, no copy), None when absent."""
    mv = memoryview(value)
    names, n_slots, pos = _group_header(mv)
    if part not in names or not 0 <= slot < n_slots:
        return None
    entry = slot * len(names) + names.index(part)
    start, end = struct.unpack_from("<II", mv, pos + 4 * entry)
    base = pos + 4 * (n_slots * len(names) + 1)
    return mv[base + start:base + end] if end > start else None


def group_part_bytes(value: bytes | memoryview) -> dict[str, int]:
    """Bytes per part in a group value, and of its header ('header')."""
    mv = memoryview(value)
    names, n_slots, pos = _group_header(mv)
    offsets = struct.unpack_from(f"<{n_slots * len(names) + 1}I", mv, pos)
    out = {"header": pos + 4 * len(offsets)}
    for k, name in enumerate(names):
        out[name] = sum(offsets[e + 1] - offsets[e] for e in range(k, n_slots * len(names), len(names)))
    return out


def read_frame(txn, track: str, index: int, part: str) -> memoryview | None:
    """A stored frame part ('rgb' JPEG, 'tsav'/'mtmt' PNG) read inside ``txn``; None when not stored."""
    value = txn.get(group_key(track, index))
    return None if value is None else unpack_frame(value, index % FRAMES_PER_VALUE, part)


def array_to_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def bytes_to_array(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def array_view(buf: bytes | memoryview) -> np.ndarray:
    """A read-only view of ``.npy`` bytes without copying them (valid as long as ``buf`` is: inside the
    read transaction for an LMDB buffer). Reading 8 rows of a track's landmarks this way costs
    microseconds, where ``bytes_to_array`` copies the whole track."""
    mv = memoryview(buf)
    major = mv[6]
    size, start = (2, 8) if major == 1 else (4, 8)
    header_len = int.from_bytes(mv[start:start + size], "little")
    offset = start + size + header_len
    header = ast.literal_eval(bytes(mv[start + size:offset]).decode("latin1"))
    if header["fortran_order"]:
        raise ValueError("Fortran-ordered arrays are not stored by this project")
    dtype = np.dtype(header["descr"])
    count = int(np.prod(header["shape"], dtype=np.int64))
    return np.frombuffer(mv, dtype, count=count, offset=offset).reshape(header["shape"])


@dataclass
class VideoRecord:
    """Everything one video contributes to the database, as plain data (built by a worker)."""

    name: str
    meta: dict
    items: list[tuple[bytes, bytes]] = field(default_factory=list)  # every key except v/<video>
    log: list[tuple[int, str, str]] = field(default_factory=list)  # (level, logger, message) from a worker
    chunks: int = 0  # chunks of items already handed to the writer ahead of this record (data.chunks)

    def put_json(self, key: bytes, obj: dict) -> None:
        self.items.append((key, json.dumps(obj, sort_keys=True).encode()))

    def put_array(self, key: bytes, a: np.ndarray) -> None:
        self.items.append((key, array_to_bytes(a)))


def video_sha256(items: Iterable[tuple[bytes, bytes]], meta: dict) -> str:
    """Hash of every stored byte of a video (keys and values in key order) and of its meta.

    The meta's own hash, its "stats" (timings, which differ run to run) and its "source" (the path
    the video was read from) are left out, so an interrupted-and-resumed build, a sharded one, a
    parallel one and an uninterrupted one all give the same hash for the same content.
    """
    return sorted_items_sha256(sorted(items), meta)


def sorted_items_sha256(items: Iterable[tuple[bytes, bytes]], meta: dict) -> str:
    """``video_sha256`` of items already in key order, consumed one at a time (a video too large to hold)."""
    h = hashlib.sha256()
    for k, v in items:
        h.update(len(k).to_bytes(4, "little") + k + len(v).to_bytes(8, "little") + v)
    h.update(json.dumps({k: v for k, v in meta.items() if k not in VOLATILE_META}, sort_keys=True).encode())
    return h.hexdigest()


class NoSpaceError(lmdb.Error):
    """A write that failed because the disk is full (LMDB only says "Input/output error")."""


# LMDB reports a full disk as EIO; below this much free space a failed write is taken for a full disk.
NO_SPACE_MARGIN = 64 << 20


def free_bytes(path: str | Path) -> int | None:
    """Bytes free for this process on the file system of ``path`` (None when it cannot be asked)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bfree * st.f_frsize if os.geteuid() == 0 else st.f_bavail * st.f_frsize


_OPEN: dict[str, list] = {}  # resolved folder → [env, writable, users, pid]: LMDB allows one env per process


class Store:
    """A thin wrapper over one LMDB environment (single writer, many readers).

    ``readonly=True`` (the default) never creates anything and fails with FileNotFoundError naming
    the folder when there is no database. Readers take LMDB's reader lock when they may (so reading
    while a build writes is safe) and fall back to lock-free reading on read-only media. LMDB allows
    one open environment per database and process, so Stores of the same folder in one process
    share it (a reader may share a writer's; a writer cannot join a read-only one).
    """

    def __init__(self, path: str | Path, readonly: bool = True, map_size: int = INITIAL_MAP_SIZE):
        self.path = Path(path)
        if readonly:
            if not self.path.is_dir():
                raise FileNotFoundError(f"{self.path}: no such database folder")
            if not (self.path / "data.mdb").is_file():
                raise FileNotFoundError(f"{self.path}: not an LMDB database (no data.mdb in it)")
        else:
            if self.path.exists() and not self.path.is_dir():
                raise NotADirectoryError(f"{self.path}: exists and is not a folder")
            self.path.mkdir(parents=True, exist_ok=True)
        self.readonly = readonly
        self._key = str(self.path.resolve())
        shared = _OPEN.get(self._key)
        if shared is not None and shared[3] == os.getpid():
            if not readonly and not shared[1]:
                raise lmdb.Error(f"{self.path}: already open read-only in this process; close it before writing")
            shared[2] += 1
            self.env = shared[0]
            return
        self.env = self._open(readonly, map_size)
        _OPEN[self._key] = [self.env, not readonly, 1, os.getpid()]

    def _open(self, readonly: bool, map_size: int) -> lmdb.Environment:
        kw = dict(readonly=readonly, readahead=False, map_size=map_size, max_readers=512, subdir=True,
                  meminit=False, create=not readonly)
        try:
            return lmdb.open(str(self.path), lock=True, **kw)
        except lmdb.Error as e:
            if not readonly:
                raise lmdb.Error(f"{self.path}: cannot open the database for writing ({e})") from e
            try:  # e.g. lock.mdb not writable (read-only medium): read without the lock table
                return lmdb.open(str(self.path), lock=False, **kw)
            except lmdb.Error as e2:
                raise lmdb.Error(f"{self.path}: cannot open the database ({e2})") from e2

    def close(self) -> None:
        if self.env is None:
            return
        shared = _OPEN.get(self._key)
        if shared is not None and shared[0] is self.env:
            shared[2] -= 1
            if shared[2] == 0:
                del _OPEN[self._key]
                self.env.close()
        else:
            self.env.close()
        self.env = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- reading -----------------------------------------------------------------------------------
    def _begin(self, write: bool = False) -> lmdb.Transaction:
        """A transaction; a reader whose map was grown by another process adopts the new size."""
        try:
            return self.env.begin(write=write, buffers=False)
        except lmdb.MapResizedError:
            self.env.set_mapsize(0)  # 0 = adopt the size the writer set
            return self.env.begin(write=write, buffers=False)

    def get(self, key: bytes) -> bytes | None:
        with self._begin() as txn:
            return txn.get(key)

    def get_json(self, key: bytes) -> dict | None:
        b = self.get(key)
        return None if b is None else json.loads(b)

    def get_array(self, key: bytes) -> np.ndarray | None:
        b = self.get(key)
        return None if b is None else bytes_to_array(b)

    def schema(self) -> dict | None:
        return self.get_json(SCHEMA_KEY)

    def keys(self, prefix: bytes) -> list[bytes]:
        """Every key starting with ``prefix``, sorted (values are not read)."""
        out = []
        with self._begin() as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k in cur.iternext(keys=True, values=False):
                    if not k.startswith(prefix):
                        break
                    out.append(k)
        return out

    def video_names(self) -> list[str]:
        """Names of the completed (ok or failed) videos, sorted; reads keys only, not the values."""
        return sorted(k[2:].decode() for k in self.keys(b"v/") if b"/" not in k[2:])

    def video_meta(self, video: str) -> dict | None:
        return self.get_json(video_key(video))

    def track_meta(self, track: str) -> dict | None:
        return self.get_json(track_key(track))

    def scan(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of every key starting with ``prefix``, in key order (read in one transaction)."""
        out = []
        with self._begin() as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    out.append((k, v))
        return iter(out)

    def _video_prefixes(self, video: str, tracks: Iterable[str]) -> tuple[list[bytes], list[bytes]]:
        """(exact keys, key prefixes) that belong to a video with these tracks, its meta key excluded."""
        exact, prefixes = [], [video_key(video) + b"/"]
        for track in tracks:
            exact.append(track_key(track))
            prefixes += [track_key(track) + b"/", f"f/{track}/".encode()]
        return exact, prefixes

    def video_keys(self, video: str, tracks: Iterable[str] | None = None) -> list[bytes]:
        """Every stored key of a video except its meta key, sorted (values are not read). ``tracks``:
        those of its meta by default; pass them for a video without a meta (one being written)."""
        if tracks is None:
            tracks = (self.video_meta(video) or {}).get("tracks", [])
        exact, prefixes = self._video_prefixes(video, tracks)
        with self._begin() as txn:
            found = [k for k in exact if txn.get(k) is not None]
        return sorted(set(found + [k for p in prefixes for k in self.keys(p)]))

    def iter_items(self, keys: Iterable[bytes]) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) of each key that exists, reading one value at a time in one read transaction."""
        with self._begin() as txn:
            for k in keys:
                v = txn.get(k)
                if v is not None:
                    yield k, v

    def video_items(self, video: str) -> list[tuple[bytes, bytes]]:
        """Every stored (key, value) of a video except its meta key, in key order."""
        return list(self.iter_items(self.video_keys(video)))

    def disk_bytes(self) -> int:
        """Bytes of the database file in use (pages up to the last one written, free pages included).

        More than the stored bytes: a value over ~2 KiB (a JPEG crop) takes whole 4 KiB overflow pages.
        """
        return (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]

    def stored_sha256(self, video: str, meta: dict | None = None) -> str:
        """The sha256 of what is stored for a video now (its meta's own "sha256" aside), read value by
        value: memory does not grow with the video's length."""
        meta = self.video_meta(video) if meta is None else meta
        return sorted_items_sha256(self.iter_items(self.video_keys(video, meta.get("tracks", []))), meta)

    def verify(self, video: str) -> bool:
        """True when a video's stored bytes still hash to the sha256 in its meta."""
        meta = self.video_meta(video)
        return meta is not None and self.stored_sha256(video, meta) == meta.get("sha256")

    # --- writing -----------------------------------------------------------------------------------
    def write_schema(self, masks: list[str]) -> None:
        """Create the schema record, or check it matches an existing database."""
        have = self.schema()
        want = {"version": SCHEMA_VERSION, "masks": sorted(masks)}
        if have is None:
            self._transaction([(SCHEMA_KEY, json.dumps(want, sort_keys=True).encode())])
        elif have.get("version") != SCHEMA_VERSION:
            raise ValueError(f"{self.path}: built by another version of create_database.py (schema version "
                             f"{have.get('version')}, this one writes {SCHEMA_VERSION}); delete it or use another "
                             "--out")
        elif have != want:
            raise ValueError(f"{self.path}: existing database has schema {have}, this run wants {want}; "
                             "use another --out or the same --masks")

    def _old_keys(self, video: str) -> list[bytes]:
        """Keys of the stored version of a video (meta key included), to delete before rewriting it."""
        meta = self.video_meta(video)
        if meta is None:
            return []
        return [video_key(video)] + self.video_keys(video, meta.get("tracks", []))

    def delete_video(self, video: str) -> None:
        """Remove a video and all its tracks' keys."""
        self._transaction([], self._old_keys(video))

    def write_video(self, rec: VideoRecord) -> str:
        """Commit a whole video (replacing any stored version) in one transaction; returns the sha256."""
        rec.meta["sha256"] = video_sha256(rec.items, rec.meta)
        meta = json.dumps(rec.meta, sort_keys=True).encode()
        self._transaction(rec.items + [(video_key(rec.name), meta)], self._old_keys(rec.name))
        return rec.meta["sha256"]

    def write(self, items: list[tuple[bytes, bytes]], delete: Iterable[bytes] = ()) -> None:
        """Delete keys then write items, in one transaction (see ``_transaction``)."""
        self._transaction(items, delete)

    def _transaction(self, items: list[tuple[bytes, bytes]], delete: Iterable[bytes] = ()) -> None:
        """Delete keys then write items, atomically; on a full map, double the map size and retry.

        A full disk raises NoSpaceError naming the folder (LMDB itself only says "Input/output
        error"); nothing of the transaction is kept, so rerunning after freeing space resumes.
        """
        if self.readonly:
            raise lmdb.ReadonlyError(f"{self.path}: opened read-only")
        delete = list(delete)
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for k in delete:
                        txn.delete(k)
                    for k, v in items:
                        txn.put(k, v)
                return
            except lmdb.MapFullError:
                self.env.set_mapsize(self.env.info()["map_size"] * 2)
            except lmdb.Error as e:
                free = free_bytes(self.path)
                needed = sum(len(k) + len(v) for k, v in items)
                if free is not None and free < needed + NO_SPACE_MARGIN:
                    raise NoSpaceError(f"{self.path}: no space left on the device ({free / 2**20:.0f} MiB free) "
                                       f"while writing the database (LMDB: {e}); free some space and rerun the "
                                       "same command: complete videos are kept and the build resumes") from e
                raise lmdb.Error(f"{self.path}: writing the database failed ({e})") from e

    def copy_from(self, other: Store) -> int:
        """Copy every complete video of another database (a shard) into this one; returns the count.

        Each video's bytes are checked against its sha256 first. A video already stored here with
        status ok is not replaced by a failed one.
        """
        n = 0
        for video in other.video_names():
            meta = other.video_meta(video)
            if other.stored_sha256(video, meta) != meta.get("sha256"):
                raise ValueError(f"{other.path}: video {video} does not match its sha256 (damaged database?)")
            mine = self.video_meta(video)
            if mine is not None and mine.get("status") == "ok" and meta.get("status") != "ok":
                continue
            meta_item = (video_key(video), json.dumps(meta, sort_keys=True).encode())
            self._transaction(other.video_items(video) + [meta_item], self._old_keys(video))
            n += 1
        return n
