"""Fast per-frame inference: every source frame of a track, batched sliding windows, each crop decoded once.

The per-clip path (``utils.predict``, TSAV's way) decodes the T frames of every clip and builds every
audio window on its own, so each crop is decoded T times. Here a track is cut into chunks of
consecutive target frames; a chunk's crops (plus the (T−1)·d frames of history its first clips need)
are decoded once, by DataLoader workers, and every clip of the chunk is a gather from that array. Audio
windows are gathered from the per-video log-mel, padded with silence at both ends, then floored and
normalised per window, on the model's device. The outputs equal the per-clip path's (checked in
``tests/test_infer.py``). ``predict_chunk`` is the step per chunk; the --video path calls it from a rolling
window of frames as they are decoded (``utils.video_stream``).

Frames without a face get a prediction too: their clip holds black frames where the face is missing,
the earlier frames of the clip where it was visible, and the audio — the model predicts from context
and sound, exactly as the clip dataset trains it.

Per-frame outputs (the contract with the writers): ``{"va": (n, 2) in [-1, 1] (the layout's VA
activation), "expr_prob": (n, C) softmax over the layout's classes, "au_prob": (n, K) sigmoid in the
layout's AU order, "logits": (n, L) raw}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from data import audio, store
from data.clips import (
    CROP,
    ClipConfig,
    flip_frames,
    mask_is_stored,
    open_store,
    prepare_batch,
    read_frames,
    resize_frames,
)
from models.tsav import model_layout, split_outputs, va_output
from tasks import OutputLayout
from utils.predict import autocast


@dataclass
class TrackSource:
    """Where a track's pixels, times and sound come from: the database, or arrays held in memory."""

    name: str
    times: np.ndarray  # (n,) seconds
    face: np.ndarray  # (n,) bool
    mel_db: np.ndarray | None  # (64, T) float16 dB, None without audio
    db_path: str | None = None  # read crops from this LMDB ...
    frames: np.ndarray | None = None  # ... or from (n, 112, 112, 4) uint8 RGB + mask in memory

    def __len__(self) -> int:
        return len(self.times)


def db_track_source(db_path: str, track: str) -> TrackSource:
    db = open_store(db_path)
    meta = db.track_meta(track)
    if meta is None:
        raise KeyError(f"{db_path}: no track {track}")
    video = meta["video"]
    times = db.get_array(store.video_key(video) + b"/times")
    face = db.get_array(store.track_key(track) + b"/face").astype(bool)
    mel = db.get_array(store.video_key(video) + b"/logmel")
    return TrackSource(track, times, face, mel, db_path=db_path)


class ChunkFrames(Dataset):
    """Item k = uint8 (H + C, S, S, 4): frames [c0 − H, c1) of chunk k; zeros before the start / without face."""

    def __init__(self, source: TrackSource, clip: ClipConfig, chunk: int):
        self.source, self.clip, self.chunk = source, clip, chunk
        self.history = (clip.clip_len - 1) * clip.dilation
        self.starts = list(range(0, len(source), chunk))
        self.draw_mask = source.db_path is not None and not mask_is_stored(open_store(source.db_path), clip.mask)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, k: int) -> torch.Tensor:
        c0 = self.starts[k]
        c1 = min(c0 + self.chunk, len(self.source))
        out = np.zeros((self.history + c1 - c0, CROP, CROP, 4), np.uint8)
        lo, base = max(0, c0 - self.history), c0 - self.history  # base: the frame in row 0 of out
        src = self.source
        if src.frames is not None:
            out[lo - base:] = src.frames[lo:c1] * src.face[lo:c1, None, None, None]
        else:
            rows = [(i - base, i) for i in range(lo, c1) if src.face[i]]
            with open_store(src.db_path).env.begin(buffers=True) as txn:
                read_frames(txn, src.name, rows, self.clip.mask, self.draw_mask, out)
        return torch.from_numpy(resize_frames(out, self.clip.size))


def clip_batch(frames: torch.Tensor, targets: torch.Tensor, clip: ClipConfig, history: int) -> torch.Tensor:
    """Gather clips: frames (H + C, S, S, 4) uint8, targets = chunk-local frame numbers → uint8 (B, 4, T, S, S)."""
    offsets = torch.as_tensor(clip.frame_offsets(), device=frames.device)
    x = frames[(targets[:, None] + history + offsets[None]).reshape(-1)]
    return x.reshape(len(targets), clip.clip_len, *frames.shape[1:]).permute(0, 4, 1, 2, 3).contiguous()


def audio_batch(mel_pad: torch.Tensor, centres: torch.Tensor, columns: int) -> torch.Tensor:
    """(B, 1, 64, columns) dB windows sliced from a silence-padded log-mel (64, T + 2·half).

    Columns past the end read the last one, which ``padded_mel`` makes silent: a stream whose last frame
    time is not known in advance pads for the audio only.
    """
    idx = centres[:, None] + torch.arange(columns, device=mel_pad.device)[None]
    idx = idx.clamp_(max=mel_pad.shape[1] - 1)
    return mel_pad[:, idx].permute(1, 0, 2).unsqueeze(1)  # B×64×W → B×1×64×W


def padded_mel(mel_db: np.ndarray | None, columns: int, last_centre: int, device: torch.device) -> torch.Tensor:
    """The log-mel in float32 with ``columns // 2`` silent columns before it and silence after it up to
    ``last_centre + columns // 2`` (all silence without audio), so every window is a plain slice.
    With ``last_centre`` ≥ the number of columns the last column is silence (see ``audio_batch``)."""
    half = columns // 2
    n = 0 if mel_db is None else mel_db.shape[1]
    out = torch.full((audio.N_MELS, max(n, last_centre + 1) + 2 * half), audio.SILENCE_DB, dtype=torch.float32)
    if mel_db is not None:
        out[:, half:half + n] = torch.from_numpy(mel_db.astype(np.float32))
    return out.to(device)


def decode_raw(out: torch.Tensor | tuple, layout: OutputLayout) -> dict[str, torch.Tensor]:
    parts = {k: v.float() for k, v in split_outputs(out, layout).items()}
    return {"va": va_output(parts["va"], layout), "expr_prob": parts["expr"].softmax(dim=1),
            "au_prob": torch.sigmoid(parts["au"])}


@torch.no_grad()
def predict_source(model: nn.Module, source: TrackSource, clip: ClipConfig, batch_size: int = 64,
                   chunk: int = 512, workers: int = 0, device: torch.device | str = "cpu", amp: str = "none",
                   channels_last: bool = False, flip_tta: bool = False) -> dict[str, np.ndarray]:
    """Per-frame outputs for every source frame of a track, in frame order (see the module docstring)."""
    device = torch.device(device)
    model.eval()
    chunks = ChunkFrames(source, clip, chunk)
    loader = DataLoader(chunks, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=2 if workers else None)
    columns = clip.audio_columns
    centres = torch.as_tensor([audio.centre_column(float(t)) for t in source.times], device=device)
    mel = padded_mel(source.mel_db, columns, int(centres.max()), device)
    collected: dict[str, list[torch.Tensor]] = {"va": [], "expr_prob": [], "au_prob": [], "logits": []}
    for k, host in enumerate(loader):
        c0 = chunks.starts[k]
        out = predict_chunk(model, host, centres[c0:c0 + len(host) - chunks.history], mel, clip, batch_size,
                            device, amp, channels_last, flip_tta)
        for key, v in out.items():
            collected[key].append(v)
    return {k: torch.cat(v).numpy() for k, v in collected.items()}


@torch.no_grad()
def predict_chunk(model: nn.Module, host: torch.Tensor, centres: torch.Tensor, mel: torch.Tensor,
                  clip: ClipConfig, batch_size: int, device: torch.device, amp: str = "none",
                  channels_last: bool = False, flip_tta: bool = False) -> dict[str, torch.Tensor]:
    """Outputs (on the CPU) for the C target frames of one chunk.

    ``host``: uint8 (H + C, S, S, 4) on the CPU, the H = (T−1)·d frames before the chunk then its C frames
    (zeros before the start and without a face); ``centres``: the C frames' log-mel columns; ``mel``: the
    output of ``padded_mel``. The database path and the streaming video path both go through here, with
    the same batches, so they give the same numbers.
    """
    layout = model_layout(model)
    history = (clip.clip_len - 1) * clip.dilation
    frames = host.to(device, non_blocking=True)
    flipped = torch.from_numpy(flip_frames(host.numpy(), clip.mask)).to(device) if flip_tta else None
    collected: dict[str, list[torch.Tensor]] = {"va": [], "expr_prob": [], "au_prob": [], "logits": []}
    n = len(frames) - history
    for b0 in range(0, n, batch_size):
        targets = torch.arange(b0, min(b0 + batch_size, n), device=device)
        batch = prepare_batch({"clip": clip_batch(frames, targets, clip, history),
                               "audio_db": audio_batch(mel, centres[targets], clip.audio_columns)}, device,
                              channels_last)
        out = run_model(model, batch, layout, device, amp)
        if flipped is not None:
            batch["clip"] = prepare_batch({"clip": clip_batch(flipped, targets, clip, history)}, device,
                                          channels_last)["clip"]
            out_f = run_model(model, batch, layout, device, amp)
            out = {k: (out[k] + out_f[k]) / 2 for k in out}
        for key, v in out.items():
            collected[key].append(v.cpu())
    return {k: torch.cat(v) for k, v in collected.items()}


def run_model(model: nn.Module, batch: dict[str, torch.Tensor], layout: OutputLayout, device: torch.device,
              amp: str) -> dict[str, torch.Tensor]:
    with autocast(device, amp):
        out = model(batch)
    raw = out[0] if isinstance(out, tuple) else out
    return {**decode_raw(out, layout), "logits": raw.float()}


def smooth(preds: dict[str, np.ndarray], window: int) -> dict[str, np.ndarray]:
    """Centred moving average of VA and the probabilities over ``window`` frames (odd; 1 = off)."""
    if window <= 1:
        return preds
    kernel = np.ones(window) / window
    out = dict(preds)
    for key in ("va", "expr_prob", "au_prob"):
        x = preds[key]
        pad = np.pad(x, ((window // 2, window - 1 - window // 2), (0, 0)), mode="edge")
        out[key] = np.stack([np.convolve(pad[:, j], kernel, mode="valid") for j in range(x.shape[1])], axis=1)
    return out

