"""The stored PCM of a video and TSAV's reference audio windows made from it (``--audio-window reference``).

``create_database.py --store-pcm`` keeps each video's 44.1 kHz mono samples as int16 under
``v/<video>/pcm`` (``data.audio.to_pcm16`` of the very samples the log-mel is computed from, on the video
clock; 2 bytes a sample, 88.2 KB per second, ≈ 2.9 KB per frame at 30 fps). Readers never load it whole for
training: a sample's segment is cut from a zero-copy view of the LMDB value (``window_from_txn``), so
memory does not grow with the video. Inference holds one track's int16 PCM (``read_pcm``) and computes a
batch's windows on the model's device (``ReferenceWindows``), with the same operations as
``data.audio.reference_window_db``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from data import audio, store


class MissingPcmError(ValueError):
    """A track with sound whose database has no PCM, asked for the reference audio window."""


def pcm_key(video: str) -> bytes:
    return store.video_key(video) + b"/pcm"


def missing_pcm_message(db_path: str, tracks: Sequence[str]) -> str:
    """One line naming the tracks and both ways out."""
    names = ", ".join(list(tracks)[:5]) + (" ..." if len(tracks) > 5 else "")
    return (f"{db_path}: no stored PCM for track(s) {names}, which the reference audio window (TSAV's per-frame "
            "mel of the waveform) needs: rebuild the database with create_database.py --store-pcm (the same "
            "command plus that flag; complete videos are rebuilt with their PCM), or run with --audio-window "
            "centred")


def silent_windows(n: int, columns: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, 1, N_MELS, columns) float32 dB windows of a video without sound (as the centred window's silence)."""
    return torch.full((n, 1, audio.N_MELS, columns), audio.SILENCE_DB, dtype=torch.float32, device=device)


def window_from_txn(txn, video: str, t: float, columns: int, seconds: float, where: str = "") -> np.ndarray:
    """(1, N_MELS, columns) float32 reference dB window of frame time ``t`` from the PCM stored for ``video``,
    read inside ``txn`` (opened with buffers=True: only the segment's pages are touched)."""
    value = txn.get(pcm_key(video))
    if value is None:
        raise MissingPcmError(missing_pcm_message(where or "the database", [video]))
    return audio.reference_window_db(store.array_view(value), t, columns, seconds)


def read_pcm(db: store.Store, video: str) -> np.ndarray | None:
    """The int16 PCM stored for ``video`` (None when there is none)."""
    return db.get_array(pcm_key(video))


class ReferenceWindows:
    """Reference dB windows of one track's frames, computed on ``device`` from its int16 PCM.

    ``pcm`` None: a video without sound (every window silent). The PCM goes to the device once (2 bytes
    a sample); each window is ``data.audio.reference_window_db``'s computation on that device.
    """

    def __init__(self, pcm: np.ndarray | None, columns: int, seconds: float, device: torch.device | str = "cpu"):
        self.columns, self.seconds, self.device = columns, seconds, torch.device(device)
        if pcm is not None and np.asarray(pcm).dtype != np.int16:
            raise TypeError(f"PCM must be int16 (data.audio.to_pcm16), got {np.asarray(pcm).dtype}")
        self.pcm = None if pcm is None else torch.from_numpy(np.ascontiguousarray(pcm)).to(self.device)

    def window(self, t: float) -> torch.Tensor:
        """(N_MELS, columns) dB of the frame at ``t`` s."""
        offset, num = audio.reference_segment(float(t), self.seconds)
        segment = self.pcm[offset:offset + num].float() / audio.PCM_SCALE  # exact, as pcm_to_float
        return audio.power_to_db_torch(audio.reference_power(segment, self.columns))

    def __call__(self, times: Sequence[float] | np.ndarray) -> torch.Tensor:
        """(B, 1, N_MELS, columns) float32 dB windows of frames at ``times`` (s), on the device."""
        times = np.asarray(times, np.float64).reshape(-1)
        if self.pcm is None:
            return silent_windows(len(times), self.columns, self.device)
        return torch.stack([self.window(t) for t in times]).unsqueeze(1)

    def indexed(self, times: np.ndarray) -> Callable[[torch.Tensor], torch.Tensor]:
        """A function of a batch of indices into ``times`` (a tensor, any device) → their windows
        (``app.inference.predict_chunk``'s ``audio_fn``)."""
        times = np.asarray(times, np.float64)
        return lambda batch: self(times[batch.cpu().numpy()])
