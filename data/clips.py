"""Training and validation samples read from the LMDB (``data.store``), laid out as the model declares.

The model's ``InputSpec`` (``utils.inputs``) decides what a sample holds; one sample is frame ``i`` of a
track with every task's label:

- ``pixels``: uint8 frames i − (T−1)·d, …, i − d, i (causal, the labelled frame last; the dilation d counts
  source frames), RGB plus the mask channel when the spec has one, resized to S×S, laid out by input kind
  (clip_audio C×T×S×S, frame C×S×S, frame_block T×C×S×S; a 'selected' frame block holds the last T selected
  frames instead, gaps skipped: ``data.blocks``, and training/validation select the frames with a face and the
  layout's EXPR and VA labels, which are also the only samples). A frame before the start of the track or
  without a face is black (RGB and mask 0), like TSAV. The model's ``prepare`` hook makes network inputs
  of it on the device (scaling, jitter with the drawn factors, normalisation).
- ``audio_db`` (clip_audio only): 1×64×W float16, the log-mel window (dB) centred on frame i's timestamp,
  sliced from the per-video spectrogram stored in the database; silence where the window leaves the audio
  or the video has none. With ``spec.audio_window == 'reference'``: 1×64×W float32, TSAV's window at frame
  i's own time, computed from the stored int16 PCM (``data.pcm``; float32 because float16 would round the
  dB by up to 0.03, 1.6e-3 after normalisation); a database without PCM for a track with sound is refused.
- ``expr``/``expr_valid`` (class id, bool), ``au``/``au_valid`` (n_au 0/1 floats, per-AU bools),
  ``va``/``va_valid`` (2 floats, bool), in the model layout's class and AU order. A label counts only in
  the split the track is annotated for *for that task*, so a track that is in Train_Set for VA and in
  Validation_Set for EXPR never leaks its EXPR labels into training.
- ``jitter``: (4,) the student's colour-jitter factors (identity without augmentation); ``teacher_jitter``
  (when a semi-supervised method asks for the teacher's view): (2,) its brightness/contrast factors for the
  same frames.
- ``track``/``frame``: where the sample comes from.

Augmentation is driven by a per-sample seed that the sampler (``data.sampling``) draws, so a sample is the
same whatever the number of DataLoader workers and after a resume. The LMDB environment is opened lazily
in each process (never pickled); per-video log-mel arrays are cached per process (LRU).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from data import blocks, store
from data.pcm import missing_pcm_message, silent_windows, window_from_txn
from data.reader import (
    audio_window_db,
    flip_frames,
    landmarks_key,
    mask_is_stored,
    open_store,
    pixels_layout,
    read_frames,
    resize_frames,
    shift_scale_rotate,
    warp_frame,
)
from data.tracks import stored_tracks
from tasks import MissingAUError, OutputLayout, au_columns, canonical_split, get_layout
from utils.inputs import AUDIO_DB, CROP, IDENTITY_JITTER, JITTER, PIXELS, TEACHER_JITTER, InputSpec


class DatasetError(ValueError):
    """A database that cannot give what the run asks for (mask, split, labels); raised before training."""


@dataclass(frozen=True)
class Augment:
    """Per-clip augmentation: one draw per clip, the same for all its frames (a 'selected' frame block: one draw
    per frame, as CNU_ADL augments); the mask is never jittered. ``shift_scale_rotate`` (shift, scale, degrees):
    an affine of the 112 px crop first (``data.reader.shift_scale_rotate``), then the flip, then the jitter.

    Student: horizontal flip with probability ``flip`` and colour jitter (factors in [1 − x, 1 + x] for
    brightness/contrast/saturation, hue shift in [−hue, hue] of the colour circle). The teacher view
    (``teacher=True``) shares the flip and gets its own brightness/contrast factors in
    [1 − teacher_jitter, 1 + teacher_jitter] (MTMT: 0.8–1.2), applied brightness then contrast.
    """

    flip: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    hue: float = 0.0
    teacher: bool = False
    teacher_jitter: float = 0.2
    # (shift, scale, degrees) of a ShiftScaleRotate before the flip, or None (CNU_ADL: 0.0625, 0.1, 45)
    shift_scale_rotate: tuple[float, float, float] | None = None


@dataclass
class Track:
    """Per-track arrays kept in memory (small: flags and labels, no pixels)."""

    name: str
    video: str
    face: np.ndarray  # (n,) bool
    times: np.ndarray  # (n,) float64 seconds
    has_audio: bool
    has_pcm: bool = False  # its video's int16 PCM is stored (the reference audio window reads it)


def draw_jitter(rng: np.random.Generator, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                hue: float = 0.0) -> list[float]:
    """One clip's colour-jitter factors; only the non-zero ranges are drawn, in this order (seeded samples)."""
    f = list(IDENTITY_JITTER)
    if brightness:
        f[0] = float(rng.uniform(1 - brightness, 1 + brightness))
    if contrast:
        f[1] = float(rng.uniform(1 - contrast, 1 + contrast))
    if saturation:
        f[2] = float(rng.uniform(1 - saturation, 1 + saturation))
    if hue:
        f[3] = float(rng.uniform(-hue, hue))
    return f


class ClipDataset(Dataset):
    """Every source frame of the chosen tracks as a sample of the ``spec``'s input kind (see the module docstring).

    ``split``: 'train'/'Train_Set', 'val'/'Validation_Set' (tracks annotated in that split for at least one
    task, labels of that split only), or None (every track of the database, labels of any split: for
    predicting unlabelled tracks). ``tracks`` restricts the tracks further; ``labels=False`` reads no label
    (all invalid: for prediction with a layout whose AU set the database lacks). The mask is read from its
    stored PNG, or drawn from the stored landmarks when the database does not store it or ``draw_mask``
    (same pixels; drawing TSAV's lines is faster than decoding their PNG). Items are a flat frame
    index, or (index, seed) from ``EpochSampler`` for augmented training samples.
    """

    def __init__(self, db_path: str | Path, split: str | None, layout: str | OutputLayout,
                 spec: InputSpec | None = None, augment: Augment | None = None,
                 tracks: list[str] | None = None, labels: bool = True, audio_cache: int = 32,
                 draw_mask: bool = False) -> None:
        self.db_path = str(db_path)
        self.draw_mask = draw_mask and spec.mask is not None
        self.with_labels = labels
        self.layout = get_layout(layout)
        spec = spec or InputSpec()
        self.spec = spec
        self.augment = augment or Augment()
        self.split = None if split is None else canonical_split(split)
        self._mel: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self._audio_cache = audio_cache
        db = open_store(self.db_path)
        self._check_schema(db)
        self._load(db, tracks)
        if self.draw_mask:
            self._check_landmarks(db)

    # --- index ------------------------------------------------------------------------------------------
    def _check_schema(self, db: store.Store) -> None:
        schema = db.schema()
        if schema is None:
            raise DatasetError(f"{self.db_path}: not a database built by create_database.py (no schema record)")
        if schema.get("version") != store.SCHEMA_VERSION:
            raise DatasetError(f"{self.db_path}: built by an older create_database.py (schema version "
                               f"{schema.get('version')}, this code reads {store.SCHEMA_VERSION}); rebuild it")
        if not mask_is_stored(db, self.spec.mask):
            self.draw_mask = True

    def _check_landmarks(self, db: store.Store) -> None:
        with db.env.begin(buffers=True) as txn:  # buffers: no copy of every track's landmarks at start-up
            missing = [t.name for t in self.tracks if txn.get(landmarks_key(t.name)) is None]
        if missing:
            raise DatasetError(f"{self.db_path}: built with masks {db.schema().get('masks')} and without landmarks "
                               f"for {', '.join(missing[:5])}, so the {self.spec.mask!r} mask cannot be drawn; "
                               f"rebuild with --masks {self.spec.mask} or pass --mask "
                               f"{'/'.join(db.schema().get('masks') or ['?'])}")

    def _load(self, db: store.Store, wanted: list[str] | None) -> None:
        self.tracks: list[Track] = []
        labels: dict[str, list[np.ndarray]] = {k: [] for k in
                                               ("expr", "expr_valid", "au", "au_valid", "va", "va_valid")}
        times_of: dict[str, np.ndarray] = {}
        for stored in stored_tracks(db, wanted):
            name, video = stored.name, stored.video
            tasks = stored.tasks_in(self.split)
            if self.split is not None and not tasks:
                continue
            if video not in times_of:
                times_of[video] = db.get_array(store.video_key(video) + b"/times")
            face = db.get_array(store.track_key(name) + b"/face").astype(bool)
            self.tracks.append(Track(name, video, face, times_of[video], bool(stored.video_meta.get("audio")),
                                     bool(stored.video_meta.get("pcm"))))
            for k, v in self._track_labels(db, name, len(face), tasks if self.with_labels else {}).items():
                labels[k].append(v)
        if wanted is not None:
            unknown = sorted(set(wanted) - {t.name for t in self.tracks})
            if unknown:
                raise DatasetError(f"{self.db_path}: tracks not found{' in ' + self.split if self.split else ''}: "
                                   f"{', '.join(unknown[:10])}")
        if not self.tracks:
            where = f"annotated in {self.split}" if self.split else "complete"
            raise DatasetError(f"{self.db_path}: no track {where}; nothing to train or evaluate on")
        if self.spec.has_audio and self.spec.audio_window == "reference":
            missing = [t.name for t in self.tracks if t.has_audio and not t.has_pcm]
            if missing:
                raise DatasetError(missing_pcm_message(self.db_path, missing))
        lengths = np.array([len(t.face) for t in self.tracks])
        self.starts = np.concatenate([[0], np.cumsum(lengths)])
        self.labels = {k: np.concatenate(v) for k, v in labels.items()}
        self.selected = self._selected_frames() if self.spec.block == "selected" else None
        # per track, the source indices of its selected frames: each sample's block is a binary search in them
        self.selected_positions = None if self.selected is None else [
            np.flatnonzero(self.selected[a:b]) for a, b in zip(self.starts[:-1], self.starts[1:], strict=True)]

    def _selected_frames(self) -> np.ndarray:
        """(N,) bool, the frames 'selected' blocks are made of (``data.blocks.selected_frames``): with labels, a
        face and a valid label of each of the layout's EXPR and VA; without (split None), every face frame."""
        face = np.concatenate([t.face for t in self.tracks])
        lab, everywhere = self.labels, np.ones(len(face), bool)
        mode = "train" if self.split is not None and self.with_labels else "test"
        return blocks.selected_frames(face, lab["expr_valid"] if self.layout.has("expr") else everywhere,
                                      lab["va_valid"] if self.layout.has("va") else everywhere, mode)

    def _track_labels(self, db: store.Store, name: str, n: int, tasks: dict) -> dict[str, np.ndarray]:
        """Per-frame labels in the layout's order; tasks not in ``tasks`` are invalid everywhere."""
        lay = self.layout
        out = {"expr": np.full(n, -1, np.int64), "expr_valid": np.zeros(n, bool),
               "au": np.zeros((n, lay.num_au), np.float32), "au_valid": np.zeros((n, lay.num_au), bool),
               "va": np.zeros((n, 2), np.float32), "va_valid": np.zeros(n, bool)}

        def get(task: str, part: str) -> np.ndarray:
            return db.get_array(store.track_key(name) + f"/label/{task}/{part}".encode())

        if "EXPR" in tasks and lay.has("expr"):
            values, valid = get("EXPR", "values").astype(np.int64), get("EXPR", "valid").astype(bool)
            out["expr_valid"] = valid & (values >= 0) & (values < lay.num_expr_classes)
            out["expr"] = np.where(out["expr_valid"], values, -1)
        if "AU" in tasks and lay.has("au"):
            cols = self._au_columns(tasks["AU"]["names"], name)
            values, valid = get("AU", "values")[:, cols], get("AU", "valid")[:, cols].astype(bool)
            out["au_valid"] = valid & ((values == 0) | (values == 1))
            out["au"] = np.where(out["au_valid"], values, 0).astype(np.float32)
        if "VA" in tasks and lay.has("va"):
            values, valid = get("VA", "values").astype(np.float32), get("VA", "valid").astype(bool)
            valid = valid.all(axis=-1) if valid.ndim > 1 else valid
            out["va_valid"] = valid & np.all(np.abs(values) <= 1, axis=1)
            out["va"] = np.where(out["va_valid"][:, None], values, 0).astype(np.float32)
        return out

    def _au_columns(self, names: list[str], track: str) -> list[int]:
        """Columns of the database's AU labels in the layout's AU order."""
        try:
            return au_columns(names, self.layout.au_names)
        except MissingAUError as e:
            raise DatasetError(f"{self.db_path} track {track}: the database's AU labels ({','.join(names)}) lack "
                               f"{','.join(e.missing)} needed by layout {self.layout.name!r}; use a layout with "
                               "the database's AU set") from None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Flat frame index → (track number, source frame)."""
        t = int(np.searchsorted(self.starts, index, side="right")) - 1
        return t, int(index - self.starts[t])

    def track_range(self, name: str) -> range:
        """Flat indices of every frame of a track, in frame order."""
        t = [x.name for x in self.tracks].index(name)
        return range(int(self.starts[t]), int(self.starts[t + 1]))

    def labelled(self) -> np.ndarray:
        """(N,) bool: frames with at least one valid label (for 'selected' blocks: the selected frames among them,
        what CNU_ADL trained and validated on)."""
        lab = self.labels
        out = lab["expr_valid"] | lab["au_valid"].any(axis=1) | lab["va_valid"]
        return out & self.selected if self.selected is not None else out

    # --- per-process resources ----------------------------------------------------------------------------
    def __getstate__(self) -> dict:
        return {**self.__dict__, "_mel": OrderedDict()}  # the cache stays in its process

    @property
    def db(self) -> store.Store:
        return open_store(self.db_path)

    def logmel(self, track: Track) -> np.ndarray | None:
        if track.video in self._mel:
            self._mel.move_to_end(track.video)
            return self._mel[track.video]
        mel = self.db.get_array(store.video_key(track.video) + b"/logmel") if track.has_audio else None
        self._mel[track.video] = mel
        if len(self._mel) > self._audio_cache:
            self._mel.popitem(last=False)
        return mel

    def reference_window(self, track: Track, t: float) -> torch.Tensor:
        """(1, 64, W) float32 dB: TSAV's window at ``t`` from the stored PCM, only its segment read (no cache)."""
        spec = self.spec
        if not track.has_audio:
            return silent_windows(1, spec.audio_columns)[0]
        with self.db.env.begin(buffers=True) as txn:
            db = window_from_txn(txn, track.video, t, spec.audio_columns, spec.audio_seconds, self.db_path)
        return torch.from_numpy(db)

    # --- samples ------------------------------------------------------------------------------------------
    def raw_frames(self, t: int, frame: int) -> np.ndarray:
        """T×112×112×C uint8 of the sample ending at ``frame`` (zeros for missing frames; C = 3 + mask)."""
        track = self.tracks[t]
        out = np.zeros((self.spec.clip_len, CROP, CROP, self.spec.channels), np.uint8)
        if self.selected_positions is not None:  # the last selected frames, gaps skipped
            frames = blocks.block_at(self.selected_positions[t], frame, self.spec.clip_len)
        else:
            frames = frame + self.spec.frame_offsets()
        rows = [(k, int(i)) for k, i in enumerate(frames) if 0 <= i < len(track.face) and track.face[i]]
        with self.db.env.begin(buffers=True) as txn:
            read_frames(txn, track.name, rows, self.spec.mask, self.draw_mask, out, where=str(self.db_path))
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = (key, None) if np.isscalar(key) else key
        t, frame = self.locate(int(index))
        track = self.tracks[t]
        frames = self.raw_frames(t, frame)
        aug = self.augment
        rng = np.random.default_rng(seed) if seed is not None else None
        per_frame = self.selected is not None  # CNU_ADL draws every frame of a block on its own
        if rng is not None and aug.shift_scale_rotate is not None:
            matrices = [shift_scale_rotate(rng, CROP, *aug.shift_scale_rotate)
                        for _ in range(len(frames) if per_frame else 1)]
            frames = np.stack([warp_frame(f, matrices[k if per_frame else 0]) for k, f in enumerate(frames)])
        if rng is not None and aug.flip and per_frame:
            for k in np.flatnonzero(rng.random(len(frames)) < aug.flip):
                frames[k] = flip_frames(frames[k:k + 1], self.spec.mask)[0]
        elif rng is not None and aug.flip and rng.random() < aug.flip:
            frames = flip_frames(frames, self.spec.mask)
        frames = resize_frames(frames, self.spec.size)
        sample = {PIXELS: pixels_layout(torch.from_numpy(frames), self.spec)}

        def draw() -> list[float]:
            return (draw_jitter(rng, aug.brightness, aug.contrast, aug.saturation, aug.hue) if rng is not None
                    else list(IDENTITY_JITTER))

        jitter = [draw() for _ in range(len(frames))] if per_frame else draw()  # (T, 4) or (4,)
        sample[JITTER] = torch.tensor(jitter, dtype=torch.float64)  # the drawn values, unrounded
        if aug.teacher:
            tj = draw_jitter(rng, aug.teacher_jitter, aug.teacher_jitter) if rng is not None else IDENTITY_JITTER
            sample[TEACHER_JITTER] = torch.tensor(tj[:2], dtype=torch.float64)
        if self.spec.has_audio and self.spec.audio_window == "reference":
            sample[AUDIO_DB] = self.reference_window(track, float(track.times[frame]))
        elif self.spec.has_audio:
            mel = self.logmel(track)
            sample[AUDIO_DB] = torch.from_numpy(audio_window_db(mel, float(track.times[frame]),
                                                                self.spec.audio_columns))
        lab = self.labels
        for k in lab:
            sample[k] = torch.as_tensor(lab[k][index])
        sample["track"] = torch.tensor(t)
        sample["frame"] = torch.tensor(frame)
        return sample


