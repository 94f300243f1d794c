"""The audio track: one tone per person synthesised from the labels, and its interleaved encoding."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from tools.synthetic.labels import TrackPlan
from tools.synthetic.mapping import EXPR_TONE_HZ, arousal_amplitude, valence_harmonic
from tools.synthetic.specs import VideoSpec


def synthesize_audio(spec: VideoSpec, tracks: list[TrackPlan], times: np.ndarray,
                     rng: np.random.Generator) -> np.ndarray:
    """Mono float32 audio from ``audio_offset_s`` to the end of the last frame: one tone per person."""
    sr = spec.audio_rate
    end = times[-1] + (times[-1] - times[-2])
    t = spec.audio_offset_s + np.arange(int(round((end - spec.audio_offset_s) * sr))) / sr
    k = np.clip(np.searchsorted(times, t, side="right") - 1, 0, len(times) - 1)
    out = 0.002 * rng.standard_normal(len(t))
    n = len(times)
    for tr in tracks:
        freq = np.array(EXPR_TONE_HZ)[tr.expr[:n]][k]
        phase = 2 * np.pi * np.cumsum(freq) / sr
        amp = np.interp(t, times, arousal_amplitude(tr.va[:n, 1]))
        harm = np.interp(t, times, valence_harmonic(tr.va[:n, 0]))
        out += amp * (np.sin(phase) + harm * np.sin(2 * phase))
    return np.clip(out, -1, 1).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Encoding


def encoder_delay(codec: str, rate: int) -> int:
    """Priming samples an audio encoder puts before the signal (minus the first packet's pts), by a dry run."""
    ctx = av.CodecContext.create(codec, "w")
    ctx.sample_rate, ctx.layout, ctx.format, ctx.time_base = rate, "mono", "fltp", Fraction(1, rate)
    packets = []
    for i in range(3):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = rate, i * 1152, Fraction(1, rate)
        packets += ctx.encode(frame)
    packets += ctx.encode(None)
    return max(0, -int(packets[0].pts))


class AudioFeeder:
    """Encodes the audio in 1024-sample chunks as the video advances, so the file is interleaved.

    MP4 records an encoder's priming (AAC, 1024 samples) in an edit list, so decoded pts are exact. AVI
    cannot: its muxer would shift every stream to hide the negative pts, misplacing video frames. There
    the first ``delay`` samples of the signal are dropped and packets shifted by ``delay``, so the decoded
    audio at pts t still carries the content of time t (MP3: the 1105 priming samples replace it).
    ``video_start_s`` (the first frame's container time, > 0 for an AVI with B-frames) delays the signal
    by as much, behind silence: the audio at t seconds after the first frame carries the content of t.
    """

    def __init__(self, container: av.container.OutputContainer, spec: VideoSpec, samples: np.ndarray,
                 video_start_s: float = 0.0):
        self.container, self.pos = container, 0
        self.rate, self.codec = spec.audio_rate, spec.audio_codec
        self.start = int(round(spec.audio_offset_s * spec.audio_rate))
        self.shift = 0
        if spec.container == "avi" and spec.audio_codec != "pcm_s16le":
            self.shift = encoder_delay(spec.audio_codec, spec.audio_rate)
        lead = np.zeros(int(round(video_start_s * spec.audio_rate)), np.float32)
        self.samples = np.concatenate([lead, samples])[self.shift:]
        self.stream = container.add_stream(spec.audio_codec, rate=spec.audio_rate)
        self.stream.layout = "mono"

    def mux(self, packets: list[av.Packet]) -> None:
        for p in packets:
            if self.shift and p.pts is not None:
                p.pts, p.dts = p.pts + self.shift, p.dts + self.shift
        self.container.mux(packets)

    def feed_until(self, t: float) -> None:
        while self.pos < len(self.samples) and (self.start + self.pos) / self.rate < t:
            chunk = self.samples[self.pos:self.pos + 1024]
            if self.codec == "pcm_s16le":
                frame = av.AudioFrame.from_ndarray(np.round(chunk * 32767).astype(np.int16)[None],
                                                   format="s16", layout="mono")
            else:
                frame = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
            frame.sample_rate, frame.time_base = self.rate, Fraction(1, self.rate)
            frame.pts = self.start + self.pos
            self.mux(self.stream.encode(frame))
            self.pos += len(chunk)

    def finish(self) -> None:
        self.feed_until(float("inf"))
        self.mux(self.stream.encode(None))
