"""What a model takes as input, as plain data: the input kinds and the geometry of one sample.

A model declares an ``InputSpec``; the dataset (``data.clips``), inference (``app.inference``) and the
bench serve exactly that. Three kinds:

- ``clip_audio``: T frames ending at the labelled frame (causal, ``dilation`` source frames apart), RGB
  (+ a mask channel), and a log-mel window centred on the frame's time (TSAV, MTMT);
- ``frame``: the labelled frame alone, RGB (+ mask if asked), no audio;
- ``frame_block``: the labelled frame and the T − 1 frames before it, RGB, no audio (a causal block of
  per-frame inputs, e.g. temporal statistics models). ``block='source'``: the T − 1 source frames before it,
  ``dilation`` apart (black where a face is missing); ``block='selected'``: the last T − 1 *selected* frames
  before it (gaps skipped, the first selected frame repeated at the track's start; ``data.blocks``), as
  CNU_ADL's blocks are made — such a sample reaches back an unbounded number of source frames.

The raw sample the data layer serves is uint8 pixels under ``PIXELS`` (``clip_audio``: C×T×S×S;
``frame``: C×S×S; ``frame_block``: T×C×S×S) and, for the audio kind, the window in dB (float16 centred,
float32 reference) under ``AUDIO_DB``; what the network finally sees is decided by the model's own
``prepare`` step on the device.
Also here: the log-mel normalisation of the audio input (shared by the data layer's reference window
and the models' device-side step) and the identity colour-jitter factors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

INPUT_KINDS = ("clip_audio", "frame", "frame_block")
MASK_KINDS = ("tsav", "mtmt")
AUDIO_WINDOWS = ("centred", "reference")
BLOCK_MODES = ("source", "selected")  # frame_block: fixed source-frame offsets, or the selected frames
CROP = 112  # size of the stored aligned crops

PIXELS = "pixels"  # raw sample key: uint8 frames, laid out by kind (see the module docstring)
AUDIO_DB = "audio_db"  # raw sample key: (1, 64, W) log-mel window in dB, float16 (centred) or float32 (reference)
JITTER = "jitter"  # (4,) student colour-jitter factors drawn for the sample
TEACHER_JITTER = "teacher_jitter"  # (2,) the teacher view's brightness/contrast factors (mean teacher)

# Log-mel window → network input: floor 80 dB under the window's maximum, then (x − mean) / std (TSAV).
TOP_DB = 80.0
NORM_MEAN = -14.8
NORM_STD = 19.895
SAMPLE_RATE = 44100
HOP = 441  # one log-mel column per 10 ms

IDENTITY_JITTER = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation factors and hue shift


@dataclass(frozen=True)
class InputSpec:
    """Kind and geometry of one model input. Defaults are the published TSAV/MTMT settings (SPEC §3).

    ``mask``: None (RGB only) or the mask drawn as a 4th channel; ``audio_seconds``: the log-mel window
    (``clip_audio`` only; 0 for the other kinds).
    """

    kind: str = "clip_audio"
    clip_len: int = 8
    dilation: int = 6  # in source frames
    size: int = CROP  # the 112×112 crops are resized to size × size
    mask: str | None = "tsav"
    audio_seconds: float = 10.0
    # 'centred': a slice of the video's log-mel centred on the frame (ours); 'reference': TSAV's per-frame
    # computation from the waveform (data.audio.reference_window_db), which published checkpoints were trained on.
    audio_window: str = "centred"
    # frame_block only: 'source' (fixed offsets) or 'selected' (gaps skipped; see the module docstring)
    block: str = "source"

    def __post_init__(self) -> None:
        if self.kind not in INPUT_KINDS:
            raise ValueError(f"input kind must be one of {INPUT_KINDS}, got {self.kind!r}")
        if self.clip_len < 1 or self.dilation < 1 or self.size < 8 or self.audio_seconds < 0:
            raise ValueError(f"bad input settings {self}")
        if self.mask is not None and self.mask not in MASK_KINDS:
            raise ValueError(f"mask must be None or one of {MASK_KINDS}, got {self.mask!r}")
        if self.kind == "frame" and self.clip_len != 1:
            raise ValueError(f"a 'frame' input has clip_len 1, got {self.clip_len}")
        if self.audio_window not in AUDIO_WINDOWS:
            raise ValueError(f"audio_window must be one of {AUDIO_WINDOWS}, got {self.audio_window!r}")
        if self.block not in BLOCK_MODES or (self.block == "selected" and self.kind != "frame_block"):
            raise ValueError(f"block must be one of {BLOCK_MODES} ('selected' for the frame_block kind only), "
                             f"got {self.block!r} for {self.kind!r}")
        if (self.kind == "clip_audio") != (self.audio_seconds > 0):
            raise ValueError(f"only the 'clip_audio' kind has an audio window (audio_seconds > 0): {self}")

    @classmethod
    def frame(cls, size: int = 224, mask: str | None = None) -> InputSpec:
        return cls(kind="frame", clip_len=1, dilation=1, size=size, mask=mask, audio_seconds=0.0)

    @classmethod
    def frame_block(cls, length: int, size: int = 224, dilation: int = 1, block: str = "source") -> InputSpec:
        return cls(kind="frame_block", clip_len=length, dilation=dilation, size=size, mask=None, audio_seconds=0.0,
                   block=block)

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        """From a checkpoint's stored settings; older files stored only clip geometry (the clip+audio kind)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def channels(self) -> int:
        return 3 + (self.mask is not None)

    @property
    def has_audio(self) -> bool:
        return self.audio_seconds > 0

    @property
    def history(self) -> int:
        """Source frames before the labelled one that a sample reaches back to (fixed offsets only: a 'selected'
        block's reach depends on the track, so it has none here)."""
        if self.block == "selected":
            return 0
        return (self.clip_len - 1) * self.dilation

    @property
    def audio_columns(self) -> int:
        """Odd number of 10 ms columns so the frame sits in the middle one: 10 s → 1001 (0 without audio)."""
        if not self.has_audio:
            return 0
        return 1 + 2 * int(round(self.audio_seconds * SAMPLE_RATE / HOP / 2))

    def frame_offsets(self) -> np.ndarray:
        """Offsets of the sample's frames from the labelled frame, oldest first (the last is 0)."""
        if self.block == "selected":
            raise ValueError("a 'selected' frame block has no fixed frame offsets: its frames come from "
                             "data.blocks (the track's selected frames)")
        return (np.arange(self.clip_len) - (self.clip_len - 1)) * self.dilation
