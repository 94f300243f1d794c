"""CNU_ADL's causal blocks of face frames (ABAW 2020, issue 16) as index arrays, numpy only.

The published rule (issue 16, "Block"): *the last 16 selected frames up to and including the current
one, stride 1 over the selected frames (gaps skipped), padded at the video start by repeating the first
selected frame. Selected = train/val: a face and valid EXPR and valid VA; test: every frame with a face.*

So a block never holds an unselected frame: frames without a face (or, in training, without both labels)
are skipped rather than blacked out, unlike the ``clip_audio`` kind's fixed source-frame offsets. The
functions here only compute source-frame indices per track; reading pixels stays with ``data.clips``.
"""

from __future__ import annotations

import numpy as np

SELECTION_MODES = ("train", "val", "test")
BLOCK_LENGTH = 16  # CNU_ADL's n_blocks


def selected_frames(face: np.ndarray, expr_valid: np.ndarray, va_valid: np.ndarray, mode: str) -> np.ndarray:
    """(n,) bool: the frames of one track that blocks are made of (and that are samples).

    Published rule: train/val select a frame with a face and a valid EXPR and a valid VA label (CNU_ADL's
    multi-task models train on the EXPR∩VA frames); test selects every frame with a face, labels ignored.
    """
    if mode not in SELECTION_MODES:
        raise ValueError(f"mode must be one of {SELECTION_MODES}, got {mode!r}")
    face = np.asarray(face, bool)
    if face.ndim != 1:
        raise ValueError(f"face must be (n,) bool, got shape {face.shape}")
    if mode == "test":
        return face.copy()
    expr_valid, va_valid = np.asarray(expr_valid, bool), np.asarray(va_valid, bool)
    if not face.shape == expr_valid.shape == va_valid.shape:
        raise ValueError(f"face, expr_valid and va_valid must be (n,) alike, got {face.shape}, "
                         f"{expr_valid.shape}, {va_valid.shape}")
    return face & expr_valid & va_valid


def block_indices(selected: np.ndarray, length: int = BLOCK_LENGTH) -> np.ndarray:
    """(m, length) int64: the block of every selected frame, in frame order (m = number of selected frames).

    Published rule: the last ``length`` selected frames up to and including the current one, stride 1 over
    the selected frames (gaps skipped), padded at the video start by repeating the first selected frame.
    Row k holds source-frame indices, oldest first; its last entry is the k-th selected frame itself.
    """
    selected = np.asarray(selected, bool)
    if selected.ndim != 1:
        raise ValueError(f"selected must be (n,) bool, got shape {selected.shape}")
    if length < 1:
        raise ValueError(f"block length must be ≥ 1, got {length}")
    frames = np.flatnonzero(selected)  # the selected frames' source indices, in order
    # Position in the selected list of each block entry; clipping at 0 repeats the first selected frame.
    pos = np.arange(len(frames))[:, None] - (length - 1) + np.arange(length)[None, :]
    return frames[np.clip(pos, 0, None)].astype(np.int64).reshape(len(frames), length)


def block_of(selected: np.ndarray, frame: int, length: int = BLOCK_LENGTH) -> np.ndarray:
    """(length,) int64: the block ending at source frame ``frame``, which must be selected.

    Published rule: the last ``length`` selected frames up to and including ``frame``, stride 1 over the
    selected frames (gaps skipped), padded at the video start by repeating the first selected frame.
    """
    selected = np.asarray(selected, bool)
    if not (0 <= frame < len(selected)) or not selected[frame]:
        raise ValueError(f"frame {frame} is not a selected frame of this track ({len(selected)} frames, "
                         f"{int(selected.sum())} selected)")
    return block_at(np.flatnonzero(selected), frame, length)


def causal_block(selected: np.ndarray, frame: int, length: int = BLOCK_LENGTH) -> np.ndarray:
    """(length,) int64: the block of any frame — ``block_of`` for a selected one; for an unselected one (e.g. a
    validation frame with only one of the two labels) the last ``length`` − 1 selected frames before it and the
    frame itself, padded at the start with the block's first entry (the frame itself when nothing before it is
    selected). Ours: the published blocks end only at selected frames."""
    selected = np.asarray(selected, bool)
    if not 0 <= frame < len(selected):
        raise ValueError(f"frame {frame} outside the track's {len(selected)} frames")
    return block_at(np.flatnonzero(selected), frame, length)


def block_at(positions: np.ndarray, frame: int, length: int = BLOCK_LENGTH) -> np.ndarray:
    """``causal_block`` from ``positions``, the sorted source indices of a track's selected frames
    (``np.flatnonzero(selected)``, found once per track): a binary search, not a scan of the track, per block."""
    k = int(np.searchsorted(positions, frame, side="right"))  # selected frames at or before ``frame``
    if k and positions[k - 1] == frame:  # selected: the last ``length`` selected frames, the first one repeated
        return positions[np.clip(np.arange(k - length, k), 0, None)].astype(np.int64)
    before = positions[max(0, k - (length - 1)):k] if length > 1 else positions[:0]
    entries = np.concatenate([before, [frame]]).astype(np.int64)
    return np.concatenate([np.full(length - len(entries), entries[0], np.int64), entries])
