"""The one inference path: per-frame scores of a model for frames of tracks, each stored crop decoded once.

test_val_aff2.py (split and --video modes), per-epoch validation in training, the learning check and the
bench all go through here. A track is cut into chunks of at most ``chunk`` consecutive source frames that
hold frames to predict (the targets: every frame, or e.g. the validation frames); a chunk's crops — the
targets' own frames and the earlier frames their samples reach back to (``InputSpec.history``) — are
decoded once, by DataLoader workers, and every sample of the chunk is a gather from that array
(``data.reader.gather_pixels``), laid out exactly as the dataset lays out one sample. Audio windows (the
clip+audio kind) are gathered from the per-video log-mel padded with silence, on the model's device; for a
spec with ``audio_window == 'reference'`` they are computed there from the track's int16 PCM at each frame's
own time (``data.pcm.ReferenceWindows``, the numbers of ``data.audio.reference_window_db``). The
model's ``prepare`` hook then makes its inputs, and ``utils.outputs.output_scores`` (its decision profile)
turns the outputs into scores.

Frames without a face get a prediction too: their sample holds black frames where the face is missing,
the earlier frames where it was visible, and the audio — the model predicts from context and sound,
exactly as the dataset trains it. Filling them from neighbouring face frames instead is an explicit
option of the writers (``fill_faceless``).

A model whose blocks are made of the track's selected frames (``InputSpec.block == 'selected'``, CNU_ADL) has
no fixed history: ``predict_sources`` hands it to ``app.block_inference``, which runs the face network once per
face frame and slides the block statistics over the cached outputs (its frames without a face hold the last
face frame's scores).

Per-frame scores (the contract with the writers): ``{"va": (n, 2) in [−1, 1], "expr_prob": (n, C),
"au_prob": (n, K) in the layout's AU order, "logits": (n, L) raw}`` (the blocks the layout has).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from data import audio, store
from data.pcm import MissingPcmError, ReferenceWindows, missing_pcm_message, read_pcm
from data.reader import (
    audio_windows,
    flip_frames,
    gather_pixels,
    mask_is_stored,
    open_store,
    padded_mel,
    read_frames,
    resize_frames,
)
from models.base import model_input, model_layout, prepare_inputs, unwrap_model
from utils.inputs import AUDIO_DB, CROP, PIXELS, InputSpec
from utils.outputs import output_scores


def autocast(device: torch.device, amp: str):
    """bf16/fp16 autocast on CUDA; a no-op for 'none' and on CPU."""
    if amp == "none" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def progress_bar(it: Iterable, enabled: bool, desc: str, unit: str = "batch") -> Iterable:
    """A tqdm bar over ``it`` (``set_postfix`` works on it) when ``enabled``, else ``it`` itself."""
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, desc=desc, unit=unit, dynamic_ncols=True, leave=False)


@dataclass
class TrackSource:
    """Where a track's pixels, times and sound come from: the database, or arrays held in memory."""

    name: str
    times: np.ndarray  # (n,) seconds
    face: np.ndarray  # (n,) bool
    mel_db: np.ndarray | None  # (64, T) float16 dB, None without audio
    db_path: str | None = None  # read crops from this LMDB ...
    frames: np.ndarray | None = None  # ... or from (n, 112, 112, 4) uint8 RGB + mask in memory
    video: str | None = None  # its video in the database (where the PCM is read from)
    pcm: np.ndarray | None = None  # int16 44.1 kHz samples (reference audio window); read from db_path if None

    def __len__(self) -> int:
        return len(self.times)


def db_track_frames(db_path: str, track: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(frame times, face flags, video name) of a stored track, without its audio."""
    db = open_store(db_path)
    meta = db.track_meta(track)
    if meta is None:
        raise KeyError(f"{db_path}: no track {track}")
    video = meta["video"]
    times = db.get_array(store.video_key(video) + b"/times")
    face = db.get_array(store.track_key(track) + b"/face").astype(bool)
    return times, face, video


def db_track_source(db_path: str, track: str) -> TrackSource:
    times, face, video = db_track_frames(db_path, track)
    mel = open_store(db_path).get_array(store.video_key(video) + b"/logmel")
    return TrackSource(track, times, face, mel, db_path=db_path, video=video)


@dataclass(frozen=True)
class Chunk:
    source: int  # index into the sources
    start: int  # first source frame of the chunk (c0)
    stop: int  # one past its last source frame (c1)
    targets: np.ndarray  # the frames to predict, chunk-local (0 = c0), sorted


def plan_chunks(sources: list[TrackSource], targets: list[np.ndarray | None], chunk: int) -> list[Chunk]:
    """Chunks of at most ``chunk`` source frames that hold targets (None: every frame of the source)."""
    out = []
    for s, (src, want) in enumerate(zip(sources, targets, strict=True)):
        want = np.arange(len(src)) if want is None else np.unique(np.asarray(want, np.int64))
        if len(want) and (want[0] < 0 or want[-1] >= len(src)):
            raise IndexError(f"track {src.name}: frames to predict outside 0..{len(src) - 1}")
        for c0 in range(0, len(src), chunk):
            local = want[(want >= c0) & (want < c0 + chunk)] - c0
            if len(local):
                out.append(Chunk(s, c0, min(c0 + chunk, len(src)), local))
    return out


class ChunkFrames(Dataset):
    """Item k = uint8 (H + C, S, S, ch): source frames [c0 − H, c1) of chunk k, only those its targets' samples
    use decoded; zeros before the start, without a face and where no sample looks."""

    def __init__(self, sources: list[TrackSource], spec: InputSpec, chunks: list[Chunk]):
        self.sources, self.spec, self.chunks = sources, spec, chunks
        self.history = spec.history
        self.draw_mask = {s.db_path: not mask_is_stored(open_store(s.db_path), spec.mask)
                          for s in sources if s.db_path is not None}

    def __len__(self) -> int:
        return len(self.chunks)

    def needed_rows(self, c: Chunk) -> np.ndarray:
        """Rows of the chunk's array that some target's sample reads (row r = source frame c0 − H + r)."""
        if self.spec.block == "selected":  # blocks of face frames (app.block_inference): every face frame is read
            return np.arange(c.stop - c.start)
        rows = (c.targets[:, None] + self.history + self.spec.frame_offsets()[None]).reshape(-1)
        return np.unique(rows)

    def __getitem__(self, k: int) -> torch.Tensor:
        c = self.chunks[k]
        src, spec = self.sources[c.source], self.spec
        out = np.zeros((self.history + c.stop - c.start, CROP, CROP, spec.channels), np.uint8)
        base = c.start - self.history  # the source frame in row 0 of out
        rows = [(int(r), int(r + base)) for r in self.needed_rows(c) if r + base >= 0 and src.face[r + base]]
        if src.frames is not None:
            for r, i in rows:
                out[r] = src.frames[i, ..., :spec.channels]
        else:
            with open_store(src.db_path).env.begin(buffers=True) as txn:
                read_frames(txn, src.name, rows, spec.mask, self.draw_mask[src.db_path], out)
        return torch.from_numpy(resize_frames(out, spec.size))


def reference_windows(src: TrackSource, spec: InputSpec, device: torch.device) -> ReferenceWindows:
    """The reference audio windows of a source: from its PCM, or the database's (silent without sound)."""
    pcm = src.pcm
    if pcm is None and src.mel_db is not None:  # a track with sound: its PCM is needed
        if src.db_path is None or src.video is None:
            raise MissingPcmError(f"track {src.name}: the reference audio window needs its int16 PCM "
                                  "(TrackSource.pcm), not only the log-mel")
        pcm = read_pcm(open_store(src.db_path), src.video)
        if pcm is None:
            raise MissingPcmError(missing_pcm_message(src.db_path, [src.name]))
    return ReferenceWindows(pcm, spec.audio_columns, spec.audio_seconds, device)


def centre_columns(times: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor([audio.centre_column(float(t)) for t in times], device=device)


@torch.no_grad()
def predict_sources(model: nn.Module, sources: list[TrackSource], targets: list[np.ndarray | None] | None = None,
                    batch_size: int = 64, chunk: int = 512, workers: int = 0, device: torch.device | str = "cpu",
                    amp: str = "none", channels_last: bool = False, flip_tta: bool = False,
                    progress: bool = False) -> list[dict[str, np.ndarray]]:
    """Per-frame scores for the ``targets`` frames of every source (None: all its frames), in sorted frame
    order, one dict per source (see the module docstring). ``model`` is put in eval mode and restored."""
    device = torch.device(device)
    spec = model_input(model)
    if spec.block == "selected":  # no fixed history: the face network once per face frame, blocks from a carry
        from app.block_inference import predict_block_sources

        return predict_block_sources(model, sources, targets, batch_size, chunk, workers, device, amp,
                                     channels_last, flip_tta, progress)
    targets = targets if targets is not None else [None] * len(sources)
    chunks = plan_chunks(sources, targets, chunk)
    data = ChunkFrames(sources, spec, chunks)
    loader = DataLoader(data, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=2 if workers else None)
    mels = [None] * len(sources)
    reference = spec.has_audio and spec.audio_window == "reference"
    if reference:  # refuse a database without PCM before any work (one track's PCM held at a time)
        missing = [s for s in sources if s.pcm is None and s.mel_db is not None and s.db_path is not None
                   and s.video is not None and not (open_store(s.db_path).video_meta(s.video) or {}).get("pcm")]
        if missing:
            raise MissingPcmError(missing_pcm_message(missing[0].db_path, [s.name for s in missing]))
    collected: list[dict[str, list[torch.Tensor]]] = [{} for _ in sources]
    was_training = model.training
    model.eval()
    try:
        for c, host in zip(chunks, progress_bar(loader, progress, "predict", "chunk"), strict=True):
            src = sources[c.source]
            centres, audio_fn = None, None
            if reference:
                if mels[c.source] is None:
                    mels = [None] * len(sources)  # sources come in order: free the previous track's PCM
                    mels[c.source] = reference_windows(src, spec, device)
                audio_fn = mels[c.source].indexed(src.times[c.start:c.stop])
            elif spec.has_audio:
                if mels[c.source] is None:  # one padded log-mel per source, on the device
                    last = audio.centre_column(float(src.times[-1]))
                    mels[c.source] = padded_mel(src.mel_db, spec.audio_columns, last, device)
                centres = centre_columns(src.times[c.start:c.stop], device)
            out = predict_chunk(model, host, centres, None if reference else mels[c.source], batch_size, device,
                                amp, channels_last, flip_tta, targets=torch.as_tensor(c.targets), audio_fn=audio_fn)
            for key, v in out.items():
                collected[c.source].setdefault(key, []).append(v)
    finally:
        model.train(was_training)
    return [{k: torch.cat(v).numpy() for k, v in got.items()} if got else empty_scores(model) for got in collected]


def empty_scores(model: nn.Module) -> dict[str, np.ndarray]:
    layout = model_layout(model)
    widths = {"va": 2, "expr_prob": layout.num_expr_classes, "au_prob": layout.num_au}
    out = {k: np.zeros((0, w), np.float32) for k, w in widths.items() if layout.has(k.split("_")[0])}
    out["logits"] = np.zeros((0, layout.num_outputs), np.float32)
    return out


def predict_source(model: nn.Module, source: TrackSource, **kw) -> dict[str, np.ndarray]:
    """Per-frame scores for every source frame of one track, in frame order."""
    return predict_sources(model, [source], **kw)[0]


@torch.no_grad()
def predict_chunk(model: nn.Module, host: torch.Tensor, centres: torch.Tensor | None, mel: torch.Tensor | None,
                  batch_size: int, device: torch.device, amp: str = "none", channels_last: bool = False,
                  flip_tta: bool = False, targets: torch.Tensor | None = None,
                  audio_fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Scores (on the CPU) for the target frames of one chunk (default: all its C frames).

    ``host``: uint8 (H + C, S, S, ch) on the CPU, the H = (T−1)·d frames before the chunk then its C frames
    (zeros before the start and without a face); ``centres``: the C frames' log-mel columns and ``mel`` the
    output of ``padded_mel`` (audio kinds only), or ``audio_fn``: a batch's chunk-local target indices → its
    (B, 1, 64, W) dB windows on the device (the reference window). The database path and the streaming video
    path both go through here, with the same batches, so they give the same numbers.
    """
    spec = model_input(model)
    history = spec.history
    frames = host.to(device, non_blocking=True)
    flipped = torch.from_numpy(flip_frames(host.numpy(), spec.mask)).to(device) if flip_tta else None
    if targets is None:
        targets = torch.arange(len(frames) - history)
    targets = targets.to(device)
    collected: dict[str, list[torch.Tensor]] = {}
    for b0 in range(0, len(targets), batch_size):
        batch = targets[b0:b0 + batch_size]
        raw = {PIXELS: gather_pixels(frames, batch, spec, history)}
        if spec.has_audio:
            raw[AUDIO_DB] = (audio_fn(batch) if audio_fn is not None
                             else audio_windows(mel, centres[batch], spec.audio_columns))
        out = run_model(model, raw, device, amp, channels_last)
        if flipped is not None:
            out_f = run_model(model, {**raw, PIXELS: gather_pixels(flipped, batch, spec, history)}, device, amp,
                              channels_last)
            out = {k: (out[k] + out_f[k]) / 2 for k in out}
        for key, v in out.items():
            collected.setdefault(key, []).append(v.cpu())
    return {k: torch.cat(v) for k, v in collected.items()}


def run_model(model: nn.Module, raw: dict[str, torch.Tensor], device: torch.device, amp: str,
              channels_last: bool = False) -> dict[str, torch.Tensor]:
    """Raw batch → the model's scores by its decision profile (``utils.outputs.output_scores``)."""
    inputs = prepare_inputs(model, raw, device, channels_last=channels_last)
    with autocast(device, amp):
        out = model(inputs)
    bare = unwrap_model(model)
    return output_scores(out, bare.layout, getattr(bare, "decision", "default"))


def smooth(preds: dict[str, np.ndarray], window: int) -> dict[str, np.ndarray]:
    """Centred moving average of VA and the probabilities over ``window`` frames (odd; 1 = off)."""
    if window <= 1:
        return preds
    kernel = np.ones(window) / window
    out = dict(preds)
    for key in ("va", "expr_prob", "au_prob"):
        if key not in preds:
            continue
        x = preds[key]
        pad = np.pad(x, ((window // 2, window - 1 - window // 2), (0, 0)), mode="edge")
        out[key] = np.stack([np.convolve(pad[:, j], kernel, mode="valid") for j in range(x.shape[1])], axis=1)
    return out


FACELESS_RULES = ("fill", "hold")


def fill_faceless(preds: dict[str, np.ndarray], face: np.ndarray, rule: str = "fill") -> dict[str, np.ndarray]:
    """Per-frame scores with the frames without a face replaced from the frames with one (an option of the
    writers; by default every frame keeps the model's own prediction): VA interpolated linearly between the
    nearest face frames (held at the ends), the other scores held from the nearest face frame (``rule``
    'fill'; the earlier one on a tie) or from the last face frame before, the first face frame's before any
    ('hold': CNU_ADL's published post-processing). A track without any face keeps the model's output."""
    if rule not in FACELESS_RULES:
        raise ValueError(f"faceless rule must be one of {FACELESS_RULES}, got {rule!r}")
    have = np.flatnonzero(face)
    if len(have) == 0 or len(have) == len(face):
        return preds
    frames = np.arange(len(face))
    if rule == "hold":
        nearest = have[np.clip(np.searchsorted(have, frames, side="right") - 1, 0, None)]
    else:
        after = np.clip(np.searchsorted(have, frames), 0, len(have) - 1)
        before = np.clip(after - 1, 0, len(have) - 1)
        nearest = np.where(np.abs(have[before] - frames) <= np.abs(have[after] - frames), have[before], have[after])
    out = {k: v[nearest] for k, v in preds.items() if k != "va"}
    if "va" in preds:
        out["va"] = np.stack([np.interp(frames, have, preds["va"][have, d]) for d in range(2)], axis=1)
    return out
