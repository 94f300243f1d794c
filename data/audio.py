"""TSAV's log-mel spectrogram, computed once per video, and its 10 s windows (SPEC §2).

The published pipeline recomputed a mel spectrogram for every frame from 10 s of samples, and padded
on the wrong side near the start and end of the file. Here the dB spectrogram of the whole video is
computed once (``logmel_db``, stored as float16) and each frame's model input is a slice of it centred
on the frame's time (``window``), padded with silence on the side where the audio is missing. The
steps that depend on the window's content (the 80 dB floor below the window's maximum, then the
normalisation) are applied per window, so a slice equals the per-clip computation
(``reference_logmel_clip``) except in the few columns whose STFT frames reach past the clip or past
the audio, where the clip computation sees reflected or zero samples instead of the real neighbours:
the first and last column of the window, and the one or two columns at the start / end of the audio.
Everywhere else they agree to float32 rounding (see tests/test_audio.py for the measured numbers).

Models trained by TSAV's own code (the published checkpoints) saw another window, which
``reference_window_db`` computes exactly from the waveform: cut at the frame's own sample, its mel
computed alone and zero-padded on the left when short (InputSpec.audio_window == 'reference').

Column j of a spectrogram is the STFT frame centred on sample j * HOP, i.e. on time j * 0.01 s.
No torchaudio: torch.stft plus our own HTK mel filterbank reproduce torchaudio's ``MelSpectrogram``
(power 2, htk scale, no norm) followed by ``AmplitudeToDB(top_db=80)``.
"""

from __future__ import annotations

import numpy as np
import torch

from utils.inputs import NORM_MEAN, NORM_STD, TOP_DB  # the model input's normalisation (shared with models/)

SR = 44100
N_FFT = 1024
WIN = 882  # 20 ms
HOP = 441  # 10 ms: one column per 0.01 s
N_MELS = 64
WINDOW_SECONDS = 10
WINDOW_COLUMNS = 1 + WINDOW_SECONDS * SR // HOP  # 1001
HALF_COLUMNS = WINDOW_COLUMNS // 2  # 500 columns each side of the centre

AMIN = 1e-10  # power floor before the log (torchaudio's default amin)
SILENCE_DB = 10.0 * np.log10(AMIN)  # -100 dB: the value of a column with no sound at all

# STFT columns computed per torch.stft call: bounds memory on long videos (~20 MB per chunk).
_CHUNK_COLUMNS = 4096


def hz_to_mel(f: np.ndarray | float) -> np.ndarray | float:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray | float:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int = N_FFT // 2 + 1, f_min: float = 0.0, f_max: float | None = None,
                   n_mels: int = N_MELS, sr: int = SR) -> np.ndarray:
    """Triangular HTK-mel filters as a (n_freqs, n_mels) float32 matrix, without area normalisation.

    Filter m rises linearly from corner m to corner m+1 and falls to corner m+2, where the n_mels + 2
    corners are equally spaced on the mel scale between f_min and f_max; weights are evaluated at the
    FFT bin frequencies linspace(0, sr/2, n_freqs). Peak weight 1 at the centre frequency.
    """
    f_max = sr / 2 if f_max is None else f_max
    bins = np.linspace(0.0, sr // 2, n_freqs)
    corners = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = corners[:-2], corners[1:-1], corners[2:]
    rising = (bins[:, None] - lower) / (centre - lower)
    falling = (upper - bins[:, None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


_FILTERBANK = torch.from_numpy(mel_filterbank())
_HANN = torch.hann_window(WIN)  # periodic, as torchaudio uses


def _check_rate(sr: int) -> None:
    if sr != SR:
        raise ValueError(f"log-mel settings are defined for {SR} Hz audio, got {sr} Hz: resample first "
                         "(data.video.read_audio(path, sr=44100))")


def _pad_centre(audio: np.ndarray) -> np.ndarray:
    """What torch.stft(center=True, pad_mode="reflect") does before framing.

    Reflection needs more than N_FFT // 2 samples; shorter signals are zero-padded instead.
    """
    mode = "reflect" if len(audio) > N_FFT // 2 else "constant"
    return np.pad(audio, N_FFT // 2, mode=mode)


def power_mel(audio: np.ndarray, sr: int = SR) -> np.ndarray:
    """Power mel spectrogram, float32 (N_MELS, 1 + len(audio) // HOP).

    Same numbers as torchaudio.transforms.MelSpectrogram(sr, n_fft=1024, win_length=882, hop_length=441,
    n_mels=64, mel_scale="htk") on the whole signal: centred frames with reflect padding at both ends.
    Computed in chunks of columns so that a 15-minute video needs no more than a few tens of MB.
    """
    _check_rate(sr)
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    n_columns = 1 + len(audio) // HOP
    padded = torch.from_numpy(_pad_centre(audio))
    out = np.empty((N_MELS, n_columns), dtype=np.float32)
    for c0 in range(0, n_columns, _CHUNK_COLUMNS):
        c1 = min(n_columns, c0 + _CHUNK_COLUMNS)
        # columns c0..c1-1 need padded samples [c0 * HOP, (c1 - 1) * HOP + N_FFT)
        segment = padded[c0 * HOP:(c1 - 1) * HOP + N_FFT]
        spec = torch.stft(segment, N_FFT, hop_length=HOP, win_length=WIN, window=_HANN, center=False,
                          return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (N_FFT // 2 + 1, c1 - c0)
        out[:, c0:c1] = (_FILTERBANK.T @ power).numpy()
    return out


def power_to_db(power: np.ndarray) -> np.ndarray:
    return 10.0 * np.log10(np.maximum(power, AMIN))


def logmel_db(audio: np.ndarray, sr: int = SR) -> np.ndarray:
    """dB mel spectrogram of a whole video, float16 (N_MELS, 1 + len(audio) // HOP).

    Neither floored to top_db nor normalised: both depend on the window and happen in ``window``.
    float16 keeps values within ~0.03 dB (spacing 0.0625 between 64 and 128 dB magnitude).
    """
    return power_to_db(power_mel(audio, sr)).astype(np.float16)


def finish_window(db: np.ndarray) -> np.ndarray:
    """Per-window steps on a (N_MELS, WINDOW_COLUMNS) dB array: 80 dB floor under its max, normalise."""
    db = np.maximum(db, db.max() - TOP_DB)
    return ((db - NORM_MEAN) / NORM_STD).astype(np.float32)[None]


def centre_column(t_center: float) -> int:
    """Column whose STFT frame is centred nearest to time t (seconds on the video clock)."""
    return int(round(t_center * SR / HOP))


def window(mel_db: np.ndarray, t_center: float) -> np.ndarray:
    """Model input (1, N_MELS, 1001) float32: the 10 s of ``logmel_db`` output centred on t_center.

    Columns centre-500 … centre+500 with centre = round(t / 0.01); the part of that range outside the
    audio (before its start or after its end) is silence (-100 dB), so the frame at t stays in the
    middle column wherever it is in the video. t is quantised to the 10 ms column grid (at most 5 ms).
    """
    c = centre_column(t_center)
    first, last = c - HALF_COLUMNS, c + HALF_COLUMNS + 1
    n = mel_db.shape[1]
    db = np.full((mel_db.shape[0], WINDOW_COLUMNS), SILENCE_DB, dtype=np.float32)
    lo, hi = max(first, 0), min(last, n)
    if lo < hi:
        db[:, lo - first:hi - first] = mel_db[:, lo:hi]
    return finish_window(db)


def silent_window() -> np.ndarray:
    """Input for a video without sound: the normalised silence (-100 + 14.8) / 19.895 ≈ -4.2825 everywhere.

    This is what the per-clip computation gives on all-zero samples (every column at the -100 dB
    floor), so a silent audio track and a missing one look the same to the model.
    """
    return finish_window(np.full((N_MELS, WINDOW_COLUMNS), SILENCE_DB, dtype=np.float32))


def reference_logmel_clip(audio: np.ndarray, sr: int, t_center: float) -> np.ndarray:
    """Straightforward per-clip computation (TSAV's, with the padding side fixed), (1, N_MELS, 1001).

    Cuts samples [round(t * sr) - 5 s, round(t * sr) + 5 s), zero-fills the part outside the audio on
    its own side, then STFT (centred, reflect) → mel → dB → 80 dB floor → normalisation, all on the clip.
    Slow on purpose: used by tests and benchmarks to check ``window``.
    """
    _check_rate(sr)
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    n = WINDOW_SECONDS * sr
    start = int(round(t_center * sr)) - n // 2
    clip = np.zeros(n, dtype=np.float32)
    lo, hi = max(start, 0), min(start + n, len(audio))
    if lo < hi:
        clip[lo - start:hi - start] = audio[lo:hi]
    spec = torch.stft(torch.from_numpy(clip), N_FFT, hop_length=HOP, win_length=WIN, window=_HANN,
                      center=True, pad_mode="reflect", return_complex=True)
    mel = mel_filterbank().T @ (spec.abs() ** 2).numpy()
    return finish_window(power_to_db(mel))


# --- TSAV's per-frame window (``InputSpec.audio_window == 'reference'``) -------------------------------
# The published checkpoints were trained on this, so serving it exactly is what running them as their
# authors did needs: a segment cut at the frame's own sample (not on the 10 ms grid), its mel computed
# alone (reflect padding at the segment's edges), shorter segments zero-padded on the LEFT, so in the
# first S and the last S/2 seconds of a video the frame is not in the middle of its window.
PCM_SCALE = 32768.0  # int16 PCM ↔ float: TSAV read a 16-bit wav as int16 / 32768


def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples → int16 as ffmpeg's float→s16 conversion writes them: round(x·32768), half to even, clipped."""
    x = np.rint(np.asarray(samples, np.float32) * np.float32(PCM_SCALE))
    return np.clip(x, -32768, 32767).astype(np.int16)


def pcm_to_float(pcm: np.ndarray) -> np.ndarray:
    """int16 PCM → float32 / 32768 (exact); float samples pass through as float32."""
    pcm = np.asarray(pcm)
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / np.float32(PCM_SCALE)
    return pcm.astype(np.float32, copy=False)


def reference_segment(t: float, seconds: float, sr: int = SR) -> tuple[int, int]:
    """(first sample, number of samples) TSAV cut for a frame at t s: max(int(t·sr − S/2·sr), 0) and
    min(int(S·sr), max(int(t·sr), int(0.02·sr))), with these exact float operations."""
    offset = max(int(t * sr - (seconds / 2) * sr), 0)
    num = min(int(seconds * sr), max(int(t * sr), int(0.02 * sr)))
    return offset, num


_ON_DEVICE: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}


def _constants_on(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hann window and the filterbank on ``device``, copied there once (not once per window)."""
    if device not in _ON_DEVICE:
        _ON_DEVICE[device] = (_HANN.to(device), _FILTERBANK.to(device))
    return _ON_DEVICE[device]


def reference_power(segment: torch.Tensor, columns: int) -> torch.Tensor:
    """(N_MELS, columns) float32 power mel of ``segment`` (float32 samples, any device) on its own.

    Centred STFT with reflect padding at the segment's own edges (zeros for a segment of ≤ 512 samples,
    which reflection cannot pad, as ``power_mel``), then zero POWER columns on the left up to ``columns``;
    a segment with more columns keeps its last ``columns`` (only for S whose samples exceed W − 1 hops,
    e.g. 0.25 s: 26 columns for W = 25). An empty segment (a frame past the end of the audio) is silence.
    """
    out = torch.zeros((N_MELS, columns), dtype=torch.float32, device=segment.device)
    if segment.numel() == 0:
        return out
    hann, filterbank = _constants_on(segment.device)
    mode = "reflect" if segment.numel() > N_FFT // 2 else "constant"
    spec = torch.stft(segment, N_FFT, hop_length=HOP, win_length=WIN, window=hann, center=True, pad_mode=mode,
                      return_complex=True)
    mel = filterbank.T @ (spec.real.square() + spec.imag.square())
    k = min(mel.shape[1], columns)
    out[:, columns - k:] = mel[:, mel.shape[1] - k:]
    return out


def power_to_db_torch(power: torch.Tensor) -> torch.Tensor:
    """``power_to_db`` on a tensor (its device)."""
    return 10.0 * torch.log10(torch.clamp(power, min=AMIN))


def reference_window_db(pcm: np.ndarray, t: float, columns: int, seconds: float) -> np.ndarray:
    """TSAV's audio window for a frame at t s, in dB: (1, N_MELS, columns) float32, before the 80 dB floor
    and the normalisation (``finish_window`` / the model's ``prepare`` do those).

    ``pcm``: the video's 44.1 kHz mono samples on the video clock, float32 in [−1, 1] or int16 as the
    database stores them (÷ 32768); only the segment is read, so a zero-copy view of a stored array works.
    Segment: ``reference_segment`` (shorter where the audio ends first); mel: ``reference_power``.
    """
    offset, num = reference_segment(t, seconds)
    segment = torch.from_numpy(np.ascontiguousarray(pcm_to_float(pcm[offset:offset + num])))
    return power_to_db_torch(reference_power(segment, columns)).numpy()[None]
