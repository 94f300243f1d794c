"""data/blocks.py and models/cnu_stats.py (CNU_ADL, issue 16): causal blocks over selected frames, the
block statistics, the EmotiW ↔ Aff-Wild2 class mapping and the auxiliary VA targets, on hand-made tracks."""

import numpy as np
import pytest
import torch

from data.blocks import block_indices, block_of, selected_frames
from models.cnu_stats import (
    AFFWILD2_TO_EMOTIW,
    EMOTIW_NAMES,
    EMOTIW_TO_AFFWILD2,
    aux_targets,
    block_statistics,
    cnu_features,
    sliding_statistics,
    to_affwild2,
    to_emotiw,
)
from tasks import EXPR_NAMES_7


def mask(n: int, frames) -> np.ndarray:
    out = np.zeros(n, bool)
    out[list(frames)] = True
    return out


# --- blocks ---------------------------------------------------------------------------------------------------
def test_blocks_skip_gaps_and_pad_with_the_first_selected_frame():
    sel = mask(12, [2, 3, 5, 8, 9, 11])  # the first selected frame is not frame 0
    blocks = block_indices(sel, length=4)
    assert blocks.dtype == np.int64 and blocks.shape == (6, 4)
    np.testing.assert_array_equal(blocks, [[2, 2, 2, 2],
                                           [2, 2, 2, 3],
                                           [2, 2, 3, 5],
                                           [2, 3, 5, 8],
                                           [3, 5, 8, 9],
                                           [5, 8, 9, 11]])
    assert not np.isin(blocks, [0, 1, 4, 6, 7, 10]).any()  # unselected frames never enter a block


def test_block_of_matches_the_rows_and_refuses_unselected_frames():
    rng = np.random.default_rng(0)
    sel = rng.random(60) < 0.6
    sel[0] = False
    blocks = block_indices(sel, length=16)
    for row, frame in zip(blocks, np.flatnonzero(sel), strict=True):
        assert row[-1] == frame  # the current frame closes its own block
        assert (np.diff(row) >= 0).all()
        np.testing.assert_array_equal(block_of(sel, int(frame), 16), row)
    for bad in (0, int(np.flatnonzero(~sel)[-1]), -1, 60):
        with pytest.raises(ValueError, match="not a selected frame"):
            block_of(sel, bad, 16)


def test_length_one_and_empty_tracks():
    sel = mask(5, [1, 4])
    np.testing.assert_array_equal(block_indices(sel, length=1), [[1], [4]])
    assert block_indices(np.zeros(5, bool), length=16).shape == (0, 16)
    with pytest.raises(ValueError):
        block_indices(sel, length=0)


def test_train_selection_needs_face_expr_and_va_test_only_a_face():
    face = mask(8, [0, 1, 2, 3, 5, 6])
    expr = mask(8, [1, 2, 3, 4, 5, 7])
    va = mask(8, [0, 2, 3, 4, 6, 7])
    for mode in ("train", "val"):
        np.testing.assert_array_equal(np.flatnonzero(selected_frames(face, expr, va, mode)), [2, 3])
    np.testing.assert_array_equal(np.flatnonzero(selected_frames(face, expr, va, "test")), [0, 1, 2, 3, 5, 6])
    # The test block of frame 5 reaches back over frame 4 (no face) even though frames 0-1 lack labels.
    np.testing.assert_array_equal(block_of(selected_frames(face, expr, va, "test"), 5, 4), [1, 2, 3, 5])
    np.testing.assert_array_equal(block_of(selected_frames(face, expr, va, "train"), 3, 4), [2, 2, 2, 3])
    with pytest.raises(ValueError, match="mode"):
        selected_frames(face, expr, va, "predict")


# --- statistics -----------------------------------------------------------------------------------------------
def test_block_statistics_against_numpy():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(7), size=(3, 5, 16))  # [batch, track, T, 7]
    stats = block_statistics(torch.from_numpy(probs))
    assert stats.shape == (3, 5, 21)
    expected = np.concatenate([probs.max(axis=-2), probs.min(axis=-2), probs.mean(axis=-2)], axis=-1)
    np.testing.assert_allclose(stats.numpy(), expected, rtol=0, atol=1e-12)
    # A block made of one repeated frame (a track's first frame): max = min = mean = that frame.
    one = torch.from_numpy(probs[0, 0, :1]).expand(16, 7)
    torch.testing.assert_close(block_statistics(one), one[0].repeat(3))


def test_sliding_statistics_equal_per_block_evaluation():
    rng = np.random.default_rng(2)
    sel = rng.random(200) < 0.7
    blocks = torch.from_numpy(block_indices(sel, length=16))
    frame_probs = torch.softmax(torch.randn(200, 7, generator=torch.Generator().manual_seed(3)), dim=-1)
    fast = sliding_statistics(frame_probs, blocks)
    per_block = torch.stack([block_statistics(frame_probs[b]) for b in blocks])
    assert fast.shape == (int(sel.sum()), 21)
    torch.testing.assert_close(fast, per_block, rtol=0, atol=0)
    with pytest.raises(IndexError):
        sliding_statistics(frame_probs[:100], blocks)


def test_features_in_the_published_order():
    stats, feat, probs = torch.rand(4, 21), torch.rand(4, 2048), torch.rand(4, 7)
    out = cnu_features(stats, feat, probs)
    assert out.shape == (4, 2076)
    torch.testing.assert_close(out[:, :21], stats)
    torch.testing.assert_close(out[:, 21:2069], feat)
    torch.testing.assert_close(out[:, 2069:], probs)
    with pytest.raises(ValueError):
        cnu_features(stats, feat, torch.rand(4, 8))


# --- class mapping and auxiliary targets ---------------------------------------------------------------------
SAME = {"Angry": "Anger", "Disgust": "Disgust", "Fear": "Fear", "Happy": "Happiness", "Neutral": "Neutral",
        "Sad": "Sadness", "Surprise": "Surprise"}


def test_emotiw_one_hot_lands_on_the_same_expression():
    assert EMOTIW_TO_AFFWILD2 == (4, 0, 1, 2, 3, 5, 6) and AFFWILD2_TO_EMOTIW == (1, 2, 3, 4, 0, 5, 6)
    for i, name in enumerate(EMOTIW_NAMES):
        hot = torch.nn.functional.one_hot(torch.tensor(i), 7).float()
        assert EXPR_NAMES_7[int(to_affwild2(hot).argmax())] == SAME[name]
    for j, name in enumerate(EXPR_NAMES_7):
        hot = torch.nn.functional.one_hot(torch.tensor(j), 7).float()
        assert SAME[EMOTIW_NAMES[int(to_emotiw(hot).argmax())]] == name
    probs = torch.softmax(torch.randn(2, 16, 7), dim=-1)
    torch.testing.assert_close(to_emotiw(to_affwild2(probs)), probs, rtol=0, atol=0)
    torch.testing.assert_close(to_affwild2(to_emotiw(probs)), probs, rtol=0, atol=0)
    with pytest.raises(ValueError):
        to_affwild2(torch.rand(3, 8))


def test_aux_targets_by_hand():
    a = torch.tensor([0.6, -0.2, 0.0])
    v = torch.tensor([0.2, 0.4, -1.0])
    expected = torch.tensor([[0.6, 0.2, 0.4, 0.2, 0.2],
                             [-0.2, 0.4, 0.1, 0.3, 0.3],
                             [0.0, -1.0, -0.5, 0.5, 0.5]])
    torch.testing.assert_close(aux_targets(a, v), expected)
    assert aux_targets(torch.zeros(2, 3), torch.zeros(2, 3)).shape == (2, 3, 5)
