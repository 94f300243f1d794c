"""Training and validation clips read from the LMDB (``data.store``): dataset, epoch sampler, augmentations.

One sample is the frame ``i`` of a track with everything the models take and every task's label:

- ``clip``: 4×T×S×S uint8, RGB + the chosen mask of source frames i − (T−1)·d, …, i − d, i (causal,
  the labelled frame last; the dilation d counts source frames, not rows of an index). A frame before
  the start of the track or without a face is black (RGB and mask 0), like TSAV. ``prepare_batch``
  turns a batch into model inputs on the training device: scaled to [0, 1], colour-jittered with the
  sample's ``jitter`` factors and normalised per channel with ``MEAN``/``STD`` (SPEC §3).
- ``audio_db``: 1×64×W float16, the log-mel window (dB) centred on frame i's timestamp, sliced from the
  per-video spectrogram stored in the database; where the window reaches past the audio it is silence
  on that side. A video without sound gets the silent window. ``prepare_batch`` floors and normalises
  it into the model's ``audio_features`` (``finish_audio``; the same numbers as ``audio_window``).
- ``expr``/``expr_valid`` (class id, bool), ``au``/``au_valid`` (n_au 0/1 floats, per-AU bools),
  ``va``/``va_valid`` (2 floats, bool), in the model layout's class and AU order. A label counts only in
  the split the track is annotated for *for that task*, so a track that is in Train_Set for VA and in
  Validation_Set for EXPR never leaks its EXPR labels into training.
- ``jitter``: (4,) the student's colour-jitter factors (identity without augmentation); ``teacher_jitter``
  (mean teacher only): (2,) the teacher view's brightness/contrast factors, applied to the same frames.
- ``track``/``frame``: where the sample comes from.

Augmentation is driven by a per-sample seed that the sampler draws, so a sample is the same whatever
the number of DataLoader workers and after a resume. The LMDB environment is opened lazily in each
process (never pickled); per-video log-mel arrays are cached per process (LRU).
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset, Sampler

from data import audio, masks, store
from data.tracks import stored_tracks
from tasks import MissingAUError, OutputLayout, au_columns, canonical_split, get_layout

MEAN = (0.43216, 0.394666, 0.37645, 0.5)  # Kinetics RGB statistics + 0.5 for the mask
STD = (0.22803, 0.22145, 0.216989, 0.225)
CROP = 112  # stored crop size
MASK_KINDS = ("tsav", "mtmt")

# Horizontal flip swaps the face's left and right; TSAV's mask tells them apart by grey level.
_TSAV_FLIP_LUT = np.arange(256, dtype=np.uint8)
for _a, _b in ((masks.TSAV_LEFT_BROW, masks.TSAV_RIGHT_BROW), (masks.TSAV_LEFT_EYE, masks.TSAV_RIGHT_EYE)):
    _TSAV_FLIP_LUT[_a], _TSAV_FLIP_LUT[_b] = _b, _a


class DatasetError(ValueError):
    """A database that cannot give what the run asks for (mask, split, labels); raised before training."""


class DamagedFrameError(ValueError):
    """A stored frame (group header, crop or mask) that cannot be decoded: one line naming track and frame."""


def _damaged(track: str, index: int, what: str) -> DamagedFrameError:
    return DamagedFrameError(f"track {track} frame {index}: {what}; the database is damaged (check it with "
                             "create_database.py --report DB --verify, rebuild with --verify)")


_OPEN: dict[str, store.Store] = {}


def open_store(path: str | Path) -> store.Store:
    """This process's read-only handle on a database, opened on first use and shared by its datasets.

    LMDB allows one open environment per file per process and none inherited through fork(), so every
    handle is closed just before this process forks (DataLoader workers) and reopened lazily afterwards:
    parent and children each open their own.
    """
    key = str(Path(path).resolve())
    if key not in _OPEN:
        _OPEN[key] = store.Store(path)
    return _OPEN[key]


def close_stores() -> None:
    """Close every handle ``open_store`` gave out (they reopen on the next use)."""
    while _OPEN:
        _OPEN.popitem()[1].close()


os.register_at_fork(before=close_stores)


@dataclass(frozen=True)
class ClipConfig:
    """Geometry of a sample. Defaults are the published TSAV/MTMT settings (SPEC §3)."""

    clip_len: int = 8
    dilation: int = 6  # in source frames
    size: int = CROP  # the 112x112 crops are resized to size x size
    mask: str = "tsav"
    audio_seconds: float = 10.0

    def __post_init__(self) -> None:
        if self.clip_len < 1 or self.dilation < 1 or self.size < 8 or self.audio_seconds <= 0:
            raise ValueError(f"bad clip settings {self}")
        if self.mask not in MASK_KINDS:
            raise ValueError(f"mask must be one of {MASK_KINDS}, got {self.mask!r}")

    @property
    def audio_columns(self) -> int:
        """Odd number of 10 ms columns so the frame sits in the middle one: 10 s → 1001."""
        return 1 + 2 * int(round(self.audio_seconds * audio.SR / audio.HOP / 2))

    def frame_offsets(self) -> np.ndarray:
        return (np.arange(self.clip_len) - (self.clip_len - 1)) * self.dilation


@dataclass(frozen=True)
class Augment:
    """Per-clip augmentation: one draw per clip, the same for all its frames; the mask is never jittered.

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


@dataclass
class Track:
    """Per-track arrays kept in memory (small: flags and labels, no pixels)."""

    name: str
    video: str
    face: np.ndarray  # (n,) bool
    times: np.ndarray  # (n,) float64 seconds
    has_audio: bool


def audio_window_db(mel_db: np.ndarray | None, t_center: float, columns: int) -> np.ndarray:
    """(1, 64, columns) float16 dB slice centred on t_center, silence where the window leaves the audio.

    The stored values as they are (float16, not floored, not normalised: ``finish_audio`` does that on the
    device); None = a video without sound.
    """
    half = columns // 2
    db = np.full((1, audio.N_MELS, columns), audio.SILENCE_DB, dtype=np.float16)
    if mel_db is not None:
        first = audio.centre_column(t_center) - half
        lo, hi = max(first, 0), min(first + columns, mel_db.shape[1])
        if lo < hi:
            db[0, :, lo - first:hi - first] = mel_db[:, lo:hi]
    return db


def audio_window(mel_db: np.ndarray | None, t_center: float, columns: int) -> np.ndarray:
    """(1, 64, columns) float32 model input centred on t_center, silence where the window leaves the audio.

    ``data.audio.window`` for any odd width (equal to it for 1001); None = a video without sound.
    """
    return audio.finish_window(audio_window_db(mel_db, t_center, columns)[0].astype(np.float32))


def finish_audio(db: torch.Tensor) -> torch.Tensor:
    """(B, …) dB windows → model input: floored 80 dB under each window's maximum and normalised, in float32
    (``data.audio.finish_window`` for a batch, on the batch's device)."""
    db = db.float()
    db = torch.maximum(db, db.amax(dim=tuple(range(1, db.dim())), keepdim=True) - audio.TOP_DB)
    return (db - audio.NORM_MEAN) / audio.NORM_STD


def decode_frame(txn, track: str, index: int, mask: str, landmarks: np.ndarray | None = None,
                 out: np.ndarray | None = None) -> np.ndarray | None:
    """112×112×4 uint8 RGB + mask of one stored frame, or None when the frame has no stored crop.

    The mask is the stored PNG, or drawn from ``landmarks`` (the frame's 68 crop landmarks) when given:
    for databases that do not store that mask type. ``out``: a contiguous 112×112×4 array to fill.
    """
    value = txn.get(store.group_key(track, index))
    if value is None:
        return None
    slot = index % store.FRAMES_PER_VALUE
    try:
        rgb_b = store.unpack_frame(value, slot, "rgb")
        mask_b = store.unpack_frame(value, slot, mask) if landmarks is None else None
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise _damaged(track, index, f"its stored frame group cannot be read ({e})") from None
    if rgb_b is None or (landmarks is None and mask_b is None):
        return None
    if landmarks is None:
        try:
            grey = masks.decode_png(mask_b)
        except (ValueError, cv2.error) as e:
            raise _damaged(track, index, f"its stored {mask} mask cannot be decoded ({e})") from None
    else:
        grey = masks.render(mask, landmarks)
    bgr = cv2.imdecode(np.frombuffer(rgb_b, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape != (CROP, CROP, 3) or grey.shape != (CROP, CROP):
        raise _damaged(track, index, "its stored crop cannot be decoded" if bgr is None else
                       f"its stored crop decodes to {bgr.shape}, not {CROP}x{CROP}x3")
    out = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA, dst=out)  # one SIMD pass, not a strided channel copy
    out[..., 3] = grey
    return out


def landmarks_key(track: str) -> bytes:
    return store.track_key(track) + b"/landmarks"


def mask_is_stored(db: store.Store, mask: str) -> bool:
    """Whether the database stores ``mask`` as PNG; if not, readers draw it from the landmarks."""
    return mask in (db.schema() or {}).get("masks", [])


def read_frames(txn, track: str, rows: list[tuple[int, int]], mask: str, draw_mask: bool, out: np.ndarray,
                where: str = "") -> None:
    """Decode frames of a track into ``out`` (N×112×112×4 uint8): ``rows`` = (row of out, frame index) of the
    frames with a face; the mask is read as PNG or, with ``draw_mask``, drawn from the stored landmarks.
    A frame that cannot be decoded raises DamagedFrameError (prefixed with ``where``, e.g. the database path)."""
    lms = store.array_view(txn.get(landmarks_key(track))) if draw_mask and rows else None
    try:
        for row, i in rows:
            decode_frame(txn, track, i, mask, None if lms is None else lms[i], out[row])
    except DamagedFrameError as e:
        if not where:
            raise
        raise DamagedFrameError(f"{where}: {e}") from None


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """T×H×W×4 uint8 → T×size×size×4 (area interpolation; at small sizes mask levels blend)."""
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


def flip_frames(frames: np.ndarray, mask: str) -> np.ndarray:
    """Mirror T×H×W×4 frames left-right; a TSAV mask also swaps its left/right grey levels."""
    out = frames[:, :, ::-1].copy()
    if mask == "tsav":
        out[..., 3] = _TSAV_FLIP_LUT[out[..., 3]]
    return out


IDENTITY_JITTER = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation factors and hue shift


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


def color_jitter(rgb: torch.Tensor, factors: list[float]) -> torch.Tensor:
    """T×3×H×W in [0, 1] → jittered copy (contrast uses each frame's mean); identity factors are skipped."""
    b, c, s, h = factors
    if b != 1:
        rgb = TF.adjust_brightness(rgb, b)
    if c != 1:
        rgb = TF.adjust_contrast(rgb, c)
    if s != 1:
        rgb = TF.adjust_saturation(rgb, s)
    if h != 0:
        rgb = TF.adjust_hue(rgb, h)
    return rgb


def jitter_batch(clips: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """B×4×T×H×W in [0, 1] with per-clip factors (B, 4) → the RGB channels jittered, the mask untouched."""
    factors = factors.cpu()
    todo = (factors != torch.tensor(IDENTITY_JITTER, dtype=factors.dtype)).any(dim=1).nonzero().flatten().tolist()
    if not todo:
        return clips
    out = clips.clone()
    for b in todo:
        out[b, :3] = color_jitter(clips[b, :3].transpose(0, 1), factors[b].tolist()).transpose(0, 1)
    return out


def normalise(clips: torch.Tensor) -> torch.Tensor:
    """(…, 4, T, H, W) in [0, 1] → normalised with MEAN/STD per channel, on the clips' device."""
    shape = (4, 1, 1, 1)
    mean = torch.tensor(MEAN, device=clips.device).reshape(shape)
    std = torch.tensor(STD, device=clips.device).reshape(shape)
    return (clips - mean) / std


def prepare_batch(batch: dict[str, torch.Tensor], device: torch.device, channels_last: bool = False
                  ) -> dict[str, torch.Tensor]:
    """A loader batch → model inputs on ``device``: uint8 clips become float, jittered, normalised there.

    Doing this on the device rather than in the loader workers moves 4× (clip) and 2× (audio) fewer bytes
    between processes and to the GPU, and takes the per-pixel arithmetic off the CPU. ``teacher_clip`` is
    made from the same frames when the batch carries ``teacher_jitter`` (mean teacher).
    """
    out = {k: v.to(device, non_blocking=True) for k, v in batch.items()
           if k not in ("jitter", "teacher_jitter", "audio_db")}
    if "audio_db" in batch:
        out["audio_features"] = finish_audio(batch["audio_db"].to(device, non_blocking=True))
    base = out["clip"].float().div_(255)
    if "jitter" in batch:
        out["clip"] = normalise(jitter_batch(base, batch["jitter"]))
    else:
        out["clip"] = normalise(base)
    if "teacher_jitter" in batch:
        tj = batch["teacher_jitter"]
        factors = torch.cat([tj, torch.tensor([[1.0, 0.0]], dtype=tj.dtype).expand(len(tj), 2)], dim=1)
        out["teacher_clip"] = normalise(jitter_batch(base, factors))
    if channels_last:
        for k in ("clip", "teacher_clip"):
            if k in out:
                out[k] = out[k].contiguous(memory_format=torch.channels_last_3d)
        if "audio_features" in out:
            out["audio_features"] = out["audio_features"].contiguous(memory_format=torch.channels_last)
    return out


class ClipDataset(Dataset):
    """Every source frame of the chosen tracks as a clip sample (see the module docstring).

    ``split``: 'train'/'Train_Set', 'val'/'Validation_Set' (tracks annotated in that split for at least one
    task, labels of that split only), or None (every track of the database, labels of any split: for
    predicting unlabelled tracks). ``tracks`` restricts the tracks further; ``labels=False`` reads no label
    (all invalid: for prediction with a layout whose AU set the database lacks). The mask is read from its
    stored PNG, or drawn from the stored landmarks when the database does not store it or ``draw_mask``
    (same pixels; drawing TSAV's lines is faster than decoding their PNG). Items are a flat frame
    index, or (index, seed) from ``EpochSampler`` for augmented training samples.
    """

    def __init__(self, db_path: str | Path, split: str | None, layout: str | OutputLayout,
                 clip: ClipConfig = ClipConfig(), augment: Augment | None = None,
                 tracks: list[str] | None = None, labels: bool = True, audio_cache: int = 32,
                 draw_mask: bool = False) -> None:
        self.db_path = str(db_path)
        self.draw_mask = draw_mask
        self.with_labels = labels
        self.layout = get_layout(layout)
        self.clip = clip
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
        if not mask_is_stored(db, self.clip.mask):
            self.draw_mask = True

    def _check_landmarks(self, db: store.Store) -> None:
        with db.env.begin(buffers=True) as txn:  # buffers: no copy of every track's landmarks at start-up
            missing = [t.name for t in self.tracks if txn.get(landmarks_key(t.name)) is None]
        if missing:
            raise DatasetError(f"{self.db_path}: built with masks {db.schema().get('masks')} and without landmarks "
                               f"for {', '.join(missing[:5])}, so the {self.clip.mask!r} mask cannot be drawn; "
                               f"rebuild with --masks {self.clip.mask} or pass --mask "
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
            self.tracks.append(Track(name, video, face, times_of[video], bool(stored.video_meta.get("audio"))))
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
        lengths = np.array([len(t.face) for t in self.tracks])
        self.starts = np.concatenate([[0], np.cumsum(lengths)])
        self.labels = {k: np.concatenate(v) for k, v in labels.items()}

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
        """(N,) bool: frames with at least one valid label."""
        lab = self.labels
        return lab["expr_valid"] | lab["au_valid"].any(axis=1) | lab["va_valid"]

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

    # --- samples ------------------------------------------------------------------------------------------
    def raw_frames(self, t: int, frame: int) -> np.ndarray:
        """T×112×112×4 uint8 of the clip ending at ``frame`` (zeros for missing frames)."""
        track = self.tracks[t]
        out = np.zeros((self.clip.clip_len, CROP, CROP, 4), np.uint8)
        rows = [(k, int(i)) for k, i in enumerate(frame + self.clip.frame_offsets())
                if 0 <= i < len(track.face) and track.face[i]]
        with self.db.env.begin(buffers=True) as txn:
            read_frames(txn, track.name, rows, self.clip.mask, self.draw_mask, out, where=str(self.db_path))
        return out

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = (key, None) if np.isscalar(key) else key
        t, frame = self.locate(int(index))
        track = self.tracks[t]
        frames = self.raw_frames(t, frame)
        aug = self.augment
        rng = np.random.default_rng(seed) if seed is not None else None
        if rng is not None and aug.flip and rng.random() < aug.flip:
            frames = flip_frames(frames, self.clip.mask)
        frames = resize_frames(frames, self.clip.size)
        sample = {"clip": torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous()}  # 4×T×S×S uint8
        jitter = (draw_jitter(rng, aug.brightness, aug.contrast, aug.saturation, aug.hue)
                  if rng is not None else list(IDENTITY_JITTER))
        sample["jitter"] = torch.tensor(jitter, dtype=torch.float64)  # the drawn values, unrounded
        if aug.teacher:
            tj = draw_jitter(rng, aug.teacher_jitter, aug.teacher_jitter) if rng is not None else IDENTITY_JITTER
            sample["teacher_jitter"] = torch.tensor(tj[:2], dtype=torch.float64)
        mel = self.logmel(track)
        sample["audio_db"] = torch.from_numpy(audio_window_db(mel, float(track.times[frame]), self.clip.audio_columns))
        lab = self.labels
        for k in lab:
            sample[k] = torch.as_tensor(lab[k][index])
        sample["track"] = torch.tensor(t)
        sample["frame"] = torch.tensor(frame)
        return sample


# ---------------------------------------------------------------------------------------------------------
# Sampling


def sampling_weights(dataset: ClipDataset, balance_tasks: bool = False, balance_expr: bool = False,
                     labelled_only: bool = True) -> np.ndarray:
    """Draw weight of every frame of ``dataset``.

    Plain: uniform over the frames with any label (``labelled_only``) or over all frames.
    ``balance_tasks``: every task gets the same total weight, spread over the frames labelled for it (a
    frame labelled for several tasks adds up its shares; frames without labels are then never drawn).
    ``balance_expr``: within the EXPR share, every class present gets the same weight.
    """
    lab = dataset.labels
    n = len(dataset)
    valid = {"expr": lab["expr_valid"], "au": lab["au_valid"].any(axis=1), "va": lab["va_valid"]}
    expr_factor = np.ones(n)
    if balance_expr and valid["expr"].any():
        counts = np.bincount(lab["expr"][valid["expr"]], minlength=dataset.layout.num_expr_classes)
        present = counts > 0
        per_class = np.zeros(len(counts))
        per_class[present] = valid["expr"].sum() / (present.sum() * counts[present])
        expr_factor[valid["expr"]] = per_class[lab["expr"][valid["expr"]]]
    if balance_tasks:
        w = np.zeros(n)
        for task, v in valid.items():
            if v.any():
                share = (expr_factor if task == "expr" else 1.0) / v.sum()
                w += np.where(v, share, 0.0)
        return w
    w = np.where(valid["expr"], expr_factor, 1.0)
    if labelled_only:
        w = w * dataset.labelled()
    return w


class EpochSampler(Sampler):
    """``num_samples`` (frame index, augmentation seed) pairs per epoch, a function of (seed, epoch) only.

    Uniform weights draw without replacement (each frame at most once per epoch, like MTMT's 1 %);
    balanced weights draw with replacement. Under DDP each rank takes every world_size-th draw, so the
    ranks see disjoint parts of one global draw. ``set_epoch`` before each epoch; the state to resume is
    ``state_dict()``.
    """

    def __init__(self, weights: np.ndarray, num_samples: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        weights = np.asarray(weights, np.float64)
        if num_samples < 1 or not (weights > 0).any():
            raise DatasetError("nothing to sample: no frame has a positive weight (no labels in this split?)")
        self.p = weights / weights.sum()
        self.uniform = bool(np.allclose(self.p[self.p > 0], self.p[self.p > 0][0]))
        self.replace = not self.uniform or num_samples > int((self.p > 0).sum())
        self.per_rank = -(-num_samples // world_size)
        self.total = self.per_rank * world_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def draws(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        index = rng.choice(len(self.p), size=self.total, replace=self.replace, p=self.p)
        seeds = rng.integers(0, 2**31 - 1, size=self.total)
        return index[self.rank::self.world_size], seeds[self.rank::self.world_size]

    def __iter__(self):
        index, seeds = self.draws()
        return iter(zip(index.tolist(), seeds.tolist()))

    def __len__(self) -> int:
        return self.per_rank

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = int(state["seed"]), int(state["epoch"])


def validation_indices(dataset: ClipDataset, num: int | None = None, seed: int = 0) -> np.ndarray:
    """Frames that validation scores: every labelled frame, or a fixed seeded subset of ``num`` of them."""
    index = np.flatnonzero(dataset.labelled())
    if num and num < len(index):
        index = np.sort(np.random.default_rng(seed).choice(index, size=num, replace=False))
    if len(index) == 0:
        raise DatasetError(f"{dataset.db_path}: no labelled frame in {dataset.split}; nothing to validate on")
    return index
