"""A tiny hand-made database for the clip and training tests (no video decoding, no face detection).

Written through ``data.store`` exactly as create_database.py lays it out, with content that makes every
value checkable: frame i of a track has R = ``red(i)`` everywhere, a TSAV mask whose left half holds the
left-brow level (right half 0), and the log-mel column j holds the value j / 10 dB.
Tracks (frames at 30 fps):
- ``a`` (video a, 30 frames): every task in Train_Set; frames 5 and 6 have no face.
- ``b_left``/``b_right`` (video b, 24 frames, no audio): every task in Validation_Set.
- ``c`` (video c, 20 frames): VA in Train_Set, EXPR in Validation_Set, no AU labels; label 7 ('Other')
  on frame 3.
- ``d`` (video d, 12 frames): no labels (a test track).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from data import masks, store
from tasks import AU_NAMES_12, EXPR_NAMES_7, EXPR_NAMES_8

FPS = 30.0


def red(i: int) -> int:
    return (40 + 9 * i) % 256


def expr_of(i: int) -> int:
    return i % 7


def va_of(i: int) -> tuple[float, float]:
    return (round(-0.9 + 0.06 * i, 3), round(0.5 - 0.03 * i, 3))


def au_of(i: int) -> np.ndarray:
    return np.array([(i >> (k % 5)) & 1 for k in range(12)], np.int8)


def frame_rgb(i: int) -> np.ndarray:
    img = np.zeros((112, 112, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = red(i), 100, 200
    return img


def tsav_mask() -> np.ndarray:
    m = np.zeros((112, 112), np.uint8)
    m[:, :56] = masks.TSAV_LEFT_BROW
    return m


def jpeg(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def labels_for(n: int, invalid_every: int = 5, other_at: int | None = None) -> dict[str, tuple]:
    expr = np.array([expr_of(i) for i in range(n)], np.int64)
    expr_valid = np.arange(n) % invalid_every != 0
    if other_at is not None:
        expr[other_at] = 7
    va = np.array([va_of(i) for i in range(n)], np.float32)
    va_valid = np.arange(n) % invalid_every != 1
    au = np.stack([au_of(i) for i in range(n)])
    au_valid = np.ones_like(au, bool)
    au_valid[::invalid_every, 3] = False
    return {"EXPR": (np.where(expr_valid, expr, -1), expr_valid), "VA": (np.where(va_valid[:, None], va, -5), va_valid),
            "AU": (np.where(au_valid, au, -1).astype(np.int8), au_valid)}


def add_video(db: store.Store, name: str, tracks: dict[str, dict[str, str]], n: int, audio: bool = True,
              no_face: tuple[int, ...] = (), mask_kinds: tuple[str, ...] = ("tsav", "mtmt"),
              other_at: int | None = None) -> None:
    """One video; ``tracks`` maps each track to {task: split} of the labels it carries."""
    rec = store.VideoRecord(name, {"name": name, "tracks": sorted(tracks), "status": "ok", "frames": n,
                                   "fps": FPS, "audio": audio, "masks": list(mask_kinds)})
    rec.put_array(store.video_key(name) + b"/times", np.arange(n) / FPS)
    if audio:
        columns = 1 + int(n / FPS * 100)
        rec.put_array(store.video_key(name) + b"/logmel",
                      np.tile(np.arange(columns, dtype=np.float32) / 10, (64, 1)).astype(np.float16))
    for track, splits in tracks.items():
        face = np.array([i not in no_face for i in range(n)])
        rec.put_array(store.track_key(track) + b"/face", face)
        groups: dict[int, dict[int, dict[str, bytes]]] = {}
        for i in np.flatnonzero(face):
            parts = {"rgb": jpeg(frame_rgb(int(i)))}
            for kind in mask_kinds:
                m = tsav_mask() if kind == "tsav" else np.full((112, 112), masks.MTMT_EYES, np.uint8)
                parts[kind] = masks.encode_png(m)
            groups.setdefault(int(i) // store.FRAMES_PER_VALUE, {})[int(i) % store.FRAMES_PER_VALUE] = parts
        for g, frames in groups.items():
            rec.items.append((store.group_key(track, g * store.FRAMES_PER_VALUE), store.pack_frames(frames)))
        labels = labels_for(n, other_at=other_at)
        meta_labels = {}
        for task, split in splits.items():
            values, valid = labels[task]
            names = {"EXPR": EXPR_NAMES_8 if other_at is not None else EXPR_NAMES_7, "VA": ("valence", "arousal"),
                     "AU": AU_NAMES_12}[task]
            rec.put_array(store.track_key(track) + f"/label/{task}/values".encode(), values)
            rec.put_array(store.track_key(track) + f"/label/{task}/valid".encode(), valid)
            meta_labels[task] = {"split": split, "names": list(names), "lines": n, "valid": int(valid.sum())}
        rec.put_json(store.track_key(track), {"video": name, "frames": n, "faces": int(face.sum()),
                                               "labels": meta_labels})
    db.write_video(rec)


ALL_TRAIN = {"VA": "Train_Set", "EXPR": "Train_Set", "AU": "Train_Set"}
ALL_VAL = {"VA": "Validation_Set", "EXPR": "Validation_Set", "AU": "Validation_Set"}


def make_toy_db(path: str | Path, mask_kinds: tuple[str, ...] = ("tsav", "mtmt"), with_val: bool = True) -> Path:
    path = Path(path)
    with store.Store(path, readonly=False) as db:
        db.write_schema(list(mask_kinds))
        add_video(db, "a", {"a": ALL_TRAIN}, 30, no_face=(5, 6), mask_kinds=mask_kinds)
        if with_val:
            add_video(db, "b", {"b_left": ALL_VAL, "b_right": ALL_VAL}, 24, audio=False, mask_kinds=mask_kinds)
        add_video(db, "c", {"c": {"VA": "Train_Set", "EXPR": "Validation_Set" if with_val else "Train_Set"}}, 20,
                  mask_kinds=mask_kinds, other_at=3)
        add_video(db, "d", {"d": {}}, 12, mask_kinds=mask_kinds)
    return path
