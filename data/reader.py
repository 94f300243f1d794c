"""Reading what the database stores, for training and inference alike: frames (RGB crop ± mask), audio windows.

One LMDB handle per process (``open_store``, closed before every fork and reopened lazily). A frame is
decoded from its stored JPEG crop and mask PNG — or its mask drawn from the stored landmarks — into a
caller's array; a frame that cannot be decoded raises ``DamagedFrameError`` naming track and frame. Audio
windows are slices of the per-video log-mel in dB, silence where they leave the audio. Also the gather
steps inference uses to cut many samples from one decoded run of frames (``gather_pixels``,
``audio_windows``), so they are laid out exactly as the dataset lays out one sample.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np
import torch

from data import audio, masks, store
from utils.inputs import CROP, InputSpec

# Horizontal flip swaps the face's left and right; TSAV's mask tells them apart by grey level.
_TSAV_FLIP_LUT = np.arange(256, dtype=np.uint8)
for _a, _b in ((masks.TSAV_LEFT_BROW, masks.TSAV_RIGHT_BROW), (masks.TSAV_LEFT_EYE, masks.TSAV_RIGHT_EYE)):
    _TSAV_FLIP_LUT[_a], _TSAV_FLIP_LUT[_b] = _b, _a


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


def decode_frame(txn, track: str, index: int, mask: str | None, landmarks: np.ndarray | None = None,
                 out: np.ndarray | None = None) -> np.ndarray | None:
    """112×112×4 uint8 RGB + mask of one stored frame (112×112×3 RGB when ``mask`` is None), or None when the
    frame has no stored crop.

    The mask is the stored PNG, or drawn from ``landmarks`` (the frame's 68 crop landmarks) when given:
    for databases that do not store that mask type. ``out``: a contiguous array of that shape to fill.
    """
    value = txn.get(store.group_key(track, index))
    if value is None:
        return None
    slot = index % store.FRAMES_PER_VALUE
    try:
        rgb_b = store.unpack_frame(value, slot, "rgb")
        mask_b = store.unpack_frame(value, slot, mask) if landmarks is None and mask is not None else None
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise _damaged(track, index, f"its stored frame group cannot be read ({e})") from None
    if rgb_b is None or (mask is not None and landmarks is None and mask_b is None):
        return None
    if mask is None:
        grey = None
    elif landmarks is None:
        try:
            grey = masks.decode_png(mask_b)
        except (ValueError, cv2.error) as e:
            raise _damaged(track, index, f"its stored {mask} mask cannot be decoded ({e})") from None
    else:
        grey = masks.render(mask, landmarks)
    bgr = cv2.imdecode(np.frombuffer(rgb_b, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.shape != (CROP, CROP, 3) or (grey is not None and grey.shape != (CROP, CROP)):
        raise _damaged(track, index, "its stored crop cannot be decoded" if bgr is None else
                       f"its stored crop decodes to {bgr.shape}, not {CROP}x{CROP}x3")
    if grey is None:
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=out)
    out = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA, dst=out)  # one SIMD pass, not a strided channel copy
    out[..., 3] = grey
    return out


def landmarks_key(track: str) -> bytes:
    return store.track_key(track) + b"/landmarks"


def mask_is_stored(db: store.Store, mask: str | None) -> bool:
    """Whether the database stores ``mask`` as PNG (None: no mask wanted); if not, readers draw it from the
    landmarks."""
    return mask is None or mask in (db.schema() or {}).get("masks", [])


def read_frames(txn, track: str, rows: list[tuple[int, int]], mask: str | None, draw_mask: bool, out: np.ndarray,
                where: str = "") -> None:
    """Decode frames of a track into ``out`` (N×112×112×C uint8, C = 4 with a mask, 3 without): ``rows`` =
    (row of out, frame index) of the
    frames with a face; the mask is read as PNG or, with ``draw_mask``, drawn from the stored landmarks.
    A frame that cannot be decoded raises DamagedFrameError (prefixed with ``where``, e.g. the database path)."""
    lms = store.array_view(txn.get(landmarks_key(track))) if draw_mask and mask and rows else None
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


def flip_frames(frames: np.ndarray, mask: str | None) -> np.ndarray:
    """Mirror T×H×W×C frames left-right; a TSAV mask (4th channel) also swaps its left/right grey levels."""
    out = frames[:, :, ::-1].copy()
    if mask == "tsav":
        out[..., 3] = _TSAV_FLIP_LUT[out[..., 3]]
    return out


def shift_scale_rotate(rng: np.random.Generator, size: int, shift: float, scale: float, degrees: float
                       ) -> np.ndarray:
    """A 2×3 affine of a size × size frame drawn as albumentations' ShiftScaleRotate draws it: a rotation by
    U(−degrees, degrees) and a zoom by U(1 − scale, 1 + scale) about the centre, then a shift of
    U(−shift, shift) × size in x and in y."""
    angle, zoom = rng.uniform(-degrees, degrees), rng.uniform(1 - scale, 1 + scale)
    dx, dy = rng.uniform(-shift, shift, size=2) * size
    matrix = cv2.getRotationMatrix2D(((size - 1) / 2, (size - 1) / 2), angle, zoom)
    matrix[:, 2] += (dx, dy)
    return matrix


def warp_frame(frame: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """H×W×C uint8 frame through a 2×3 affine: RGB bilinear, a mask channel nearest (its grey levels are
    labels); borders reflected (reflect-101, albumentations' default)."""
    h, w = frame.shape[:2]
    rgb = cv2.warpAffine(np.ascontiguousarray(frame[..., :3]), matrix, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    if frame.shape[-1] == 3:
        return rgb
    mask = cv2.warpAffine(np.ascontiguousarray(frame[..., 3]), matrix, (w, h), flags=cv2.INTER_NEAREST,
                          borderMode=cv2.BORDER_REFLECT_101)
    return np.concatenate([rgb, mask[..., None]], axis=-1)


def pixels_layout(frames: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """(…, T, S, S, C) uint8 frames → the raw pixel layout of the input kind (``utils.inputs``), leading dims kept:
    clip_audio C×T×S×S, frame C×S×S, frame_block T×C×S×S."""
    n = frames.dim()
    lead = list(range(n - 4))
    t, h, w, c = n - 4, n - 3, n - 2, n - 1
    if spec.kind == "clip_audio":
        return frames.permute(*lead, c, t, h, w).contiguous()
    if spec.kind == "frame":  # drop T (= 1): (…, S, S, C) → (…, C, S, S)
        return frames.select(t, 0).permute(*lead, n - 2, n - 4, n - 3).contiguous()
    return frames.permute(*lead, t, c, h, w).contiguous()


def gather_pixels(frames: torch.Tensor, targets: torch.Tensor, spec: InputSpec, history: int) -> torch.Tensor:
    """Cut the samples of ``targets`` from one decoded run of frames (H + C, S, S, ch) uint8, where row
    H + k is target position k: → (B, raw pixel layout of the kind)."""
    offsets = torch.as_tensor(spec.frame_offsets(), device=frames.device)
    x = frames[(targets[:, None] + history + offsets[None]).reshape(-1)]
    return pixels_layout(x.reshape(len(targets), spec.clip_len, *frames.shape[1:]), spec)


def audio_windows(mel_pad: torch.Tensor, centres: torch.Tensor, columns: int) -> torch.Tensor:
    """(B, 1, 64, columns) dB windows sliced from a silence-padded log-mel (64, T + 2·half) (``padded_mel``).

    Columns past the end read the last one, which ``padded_mel`` makes silent: a stream whose last frame
    time is not known in advance pads for the audio only.
    """
    idx = centres[:, None] + torch.arange(columns, device=mel_pad.device)[None]
    idx = idx.clamp_(max=mel_pad.shape[1] - 1)
    return mel_pad[:, idx].permute(1, 0, 2).unsqueeze(1)  # B×64×W → B×1×64×W


def padded_mel(mel_db: np.ndarray | None, columns: int, last_centre: int, device: torch.device) -> torch.Tensor:
    """The log-mel in float32 with ``columns // 2`` silent columns before it and silence after it up to
    ``last_centre + columns // 2`` (all silence without audio), so every window is a plain slice.
    With ``last_centre`` ≥ the number of columns the last column is silence (see ``audio_windows``)."""
    half = columns // 2
    n = 0 if mel_db is None else mel_db.shape[1]
    out = torch.full((audio.N_MELS, max(n, last_centre + 1) + 2 * half), audio.SILENCE_DB, dtype=torch.float32)
    if mel_db is not None:
        out[:, half:half + n] = torch.from_numpy(mel_db.astype(np.float32))
    return out.to(device)
