"""One video file → per-frame predictions in memory that does not grow with the video's length.

The frames are decoded, tracked and aligned by the database builder's own loop (``data.build.run_detection``)
and handed to ``StreamWriter`` one at a time; it renders the mask, shrinks the frame to the model's size and
keeps only a rolling window: the current chunk of ``chunk`` frames plus the (T−1)·d frames of history its
first samples need. Each full chunk is predicted at once (``app.inference.predict_chunk``, the same batches as
the database path), so a crop lives for at most one chunk and its history. A model of blocks of face frames
(``InputSpec.block == 'selected'``, CNU_ADL) keeps no pixel history: each chunk goes to the same
``app.block_inference.BlockStream`` as the database path, which carries the last face frames' outputs.

What still grows with the length: the audio (decoded whole, 176 KB per second of sound, turned into the
log-mel of 12.8 KB per second and freed before the frames are decoded; for a model whose spec asks for the
reference audio window, into the int16 PCM of 88.2 KB per second instead, from which each frame's window is
computed at its own time, ``data.pcm.ReferenceWindows``) and the small per-frame arrays (time, face flag,
confidence, frame→crop affine, outputs: about 0.3 KB per frame).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from app import inference
from app.block_inference import BlockStream
from data import audio, masks, video
from data.pcm import ReferenceWindows
from data.reader import padded_mel
from models.base import model_input
from utils.inputs import CROP, InputSpec


class RollingClips:
    """Frames arrive one at a time; every ``chunk`` frames (and at ``finish``) the chunk is predicted.

    The buffer holds the H = (T−1)·d frames before the chunk (zeros before the first frame) and the chunk,
    exactly the array ``inference.ChunkFrames`` builds from a whole track, so the outputs are the same.
    A 'selected' block model (H = 0) hands each chunk and its face flags to a ``BlockStream`` instead.
    """

    def __init__(self, model: nn.Module, mel_db: np.ndarray | None, batch_size: int = 64,
                 chunk: int = 512, device: torch.device | str = "cpu", amp: str = "none",
                 channels_last: bool = False, flip_tta: bool = False, pcm: np.ndarray | None = None):
        """``mel_db``: the video's log-mel (None: no sound); ``pcm``: its int16 samples, what a spec with the
        reference audio window needs instead (None there: no sound)."""
        self.model, self.spec, self.chunk = model, model_input(model), chunk
        self.batch_size, self.device, self.amp = batch_size, torch.device(device), amp
        self.channels_last, self.flip_tta = channels_last, flip_tta
        spec = self.spec
        self.history = spec.history
        self.buffer = np.zeros((self.history + chunk, spec.size, spec.size, spec.channels), np.uint8)
        self.filled = 0  # frames of the current chunk in the buffer
        self.face = np.zeros(chunk, bool)  # and whether each has a face
        self.blocks = (BlockStream(model, batch_size, self.device, amp, channels_last, flip_tta)
                       if spec.block == "selected" else None)
        self.centres: list[int] = []  # log-mel column of every frame so far
        self.times: list[float] = []  # and its time (the reference window is cut at the frame's own sample)
        self.reference = None
        if spec.has_audio and spec.audio_window == "reference":
            if pcm is None and mel_db is not None:
                raise ValueError("the reference audio window is computed from the int16 PCM (pcm=), not the log-mel")
            self.reference, mel_db = ReferenceWindows(pcm, spec.audio_columns, spec.audio_seconds, self.device), None
        n_columns = 0 if mel_db is None else mel_db.shape[1]
        # silence after the audio: frames beyond it read the silent last column (data.reader.audio_windows)
        self.mel = (padded_mel(mel_db, spec.audio_columns, n_columns, self.device)
                    if spec.has_audio and self.reference is None else None)
        self.outputs: dict[str, list[torch.Tensor]] = {}
        model.eval()

    def push(self, frame: np.ndarray | None, t: float) -> None:
        """One frame: uint8 (size, size, C) RGB (+ mask) at the model's size, or None (no face → zeros)."""
        row = self.history + self.filled
        if frame is None:
            self.buffer[row] = 0
        else:
            self.buffer[row] = frame
        self.face[self.filled] = frame is not None
        self.centres.append(audio.centre_column(float(t)))
        self.times.append(float(t))
        self.filled += 1
        if self.filled == self.chunk:
            self._predict_chunk()

    def _predict_chunk(self) -> None:
        if self.filled == 0:
            return
        if self.blocks is not None:
            self.blocks.push_chunk(self.buffer[:self.filled], self.face[:self.filled])
            self.filled = 0
            return
        host = torch.from_numpy(self.buffer[:self.history + self.filled].copy())
        centres = torch.as_tensor(self.centres[-self.filled:], device=self.device)
        audio_fn = None if self.reference is None else self.reference.indexed(np.asarray(self.times[-self.filled:]))
        out = inference.predict_chunk(self.model, host, centres, self.mel, self.batch_size, self.device,
                                      self.amp, self.channels_last, self.flip_tta, audio_fn=audio_fn)
        for key, v in out.items():
            self.outputs.setdefault(key, []).append(v)
        end = self.history + self.filled
        self.buffer[:self.history] = self.buffer[end - self.history:end].copy()  # the next chunk's history
        self.filled = 0

    def finish(self) -> dict[str, np.ndarray]:
        """Predict what is left; the scores of every frame pushed, in order (``app.inference`` contract)."""
        self._predict_chunk()
        if not self.times:
            raise ValueError("no frame was pushed")
        if self.blocks is not None:
            return self.blocks.finish()
        return {k: torch.cat(v).numpy() for k, v in self.outputs.items()}


def model_frame(crop: np.ndarray, lm_crop: np.ndarray, spec: InputSpec) -> np.ndarray:
    """112×112 RGB crop (+ the mask drawn from its landmarks, as a database reader draws it) → the model's
    (size, size, C) frame."""
    frame = np.empty((CROP, CROP, spec.channels), np.uint8)
    frame[..., :3] = crop
    if spec.mask is not None:
        frame[..., 3] = masks.render(spec.mask, lm_crop)
    size = spec.size
    if size == CROP:
        return frame
    return cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)  # as data.reader.resize_frames


class StreamWriter:
    """The ``TrackWriter`` interface of data.build for one track, feeding ``RollingClips`` as frames arrive.

    ``times`` is the list ``run_detection`` appends each frame's time to before it calls ``add``.
    Keeps per frame only the face flag, the detector confidence and the frame→crop affine.
    """

    def __init__(self, clips: RollingClips, times: list[float], progress: tqdm | None = None):
        self.clips, self.times, self.progress = clips, times, progress
        self.face: list[bool] = []
        self.confidence: list[float] = []
        self.affines: list[np.ndarray] = []

    def add(self, index: int, crop: np.ndarray | None, lm_crop: np.ndarray | None, conf: float = 0.0,
            affine: np.ndarray | None = None) -> None:
        if index != len(self.face):
            raise ValueError(f"frame {index} out of order (expected {len(self.face)})")
        frame = None if crop is None else model_frame(crop, lm_crop, self.clips.spec)
        self.clips.push(frame, self.times[index])
        self.face.append(crop is not None)
        self.confidence.append(conf if crop is not None else 0.0)
        self.affines.append(np.full((2, 3), np.nan) if affine is None else np.asarray(affine, float))
        if self.progress is not None:
            self.progress.update(1)


@dataclass
class VideoPrediction:
    """Everything a report needs about one predicted video (all per-frame arrays have n rows)."""

    times: np.ndarray  # (n,) seconds from the first frame
    face: np.ndarray  # (n,) bool
    confidence: np.ndarray  # (n,) detector confidence, 0 without a face
    affines: np.ndarray  # (n, 2, 3) frame→crop, NaN without a face
    preds: dict[str, np.ndarray]  # per-frame scores (the app.inference contract)
    has_audio: bool

    def __len__(self) -> int:
        return len(self.times)


def read_logmel(path: str, has_audio: bool) -> np.ndarray | None:
    """The video's log-mel (float16 dB), or None without an audio stream; the samples are freed here."""
    sound = video.read_audio(path, audio.SR) if has_audio else None
    return audio.logmel_db(sound, audio.SR) if sound is not None else None


def read_pcm16(path: str, has_audio: bool) -> np.ndarray | None:
    """The video's int16 PCM (``data.audio.to_pcm16``, as a database built with --store-pcm stores it), or None
    without an audio stream; the float samples are freed here."""
    sound = video.read_audio(path, audio.SR) if has_audio else None
    return audio.to_pcm16(sound) if sound is not None else None


def predict_video(path: str, model: nn.Module, detector: str = "hog", detect_every: int = 5,
                  batch_size: int = 64, chunk: int = 512, device: torch.device | str = "cpu", amp: str = "none",
                  channels_last: bool = False, flip_tta: bool = False, progress: bool = True) -> VideoPrediction:
    """Decode, track the most prominent face, align and predict one video, chunk by chunk."""
    from data import build, build_plan

    info = video.probe(path)
    spec = model_input(model)
    mel = pcm = None
    if spec.has_audio and spec.audio_window == "reference":
        pcm = read_pcm16(path, info.has_audio)
    else:
        mel = read_logmel(path, info.has_audio)
    name = "video"
    times: list[float] = []
    clips = RollingClips(model, mel, batch_size, chunk, device, amp, channels_last, flip_tta, pcm=pcm)
    spec = clips.spec
    with tqdm(total=info.num_frames or None, desc="frames", unit="frame", dynamic_ncols=True,
              disable=not progress) as bar:
        writer = StreamWriter(clips, times, bar)
        job = build_plan.VideoJob(str(path), name, [name])
        opts = build_plan.BuildOptions(masks=(spec.mask,) if spec.mask else (), detector=detector,
                                       detect_every=detect_every)
        build.run_detection(job, opts, {name: writer}, build.Timer(), times)
    if not times:
        raise ValueError(f"{path}: no frames decoded")
    return VideoPrediction(np.asarray(times), np.asarray(writer.face, bool), np.asarray(writer.confidence),
                           np.stack(writer.affines), clips.finish(), mel is not None or pcm is not None)
