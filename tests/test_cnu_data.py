"""CNU_ADL's data side (issue 16): 'selected' frame blocks served by data.clips (gaps skipped, start padding,
per-frame augmentation, ShiftScaleRotate), data.blocks.causal_block for frames outside the selection, and the
class-cycling ("max") sampler of data.sampling. On the session's toy database, whose frame i is coloured red(i)."""

import numpy as np
import pytest
from toy_db import red

from data import clips
from data.blocks import block_at, block_of, causal_block
from data.clips import Augment, ClipDataset
from data.reader import shift_scale_rotate, warp_frame
from data.sampling import EpochSampler, class_cycle_size, cycle_classes
from utils.inputs import JITTER, PIXELS, InputSpec

SPEC = InputSpec.frame_block(4, size=112, block="selected")
# track a (30 frames, train): no face at 5, 6; EXPR invalid where i % 5 == 0, VA invalid where i % 5 == 1
SELECTED_A = [i for i in range(30) if i % 5 not in (0, 1) and i not in (5, 6)]


def mask(n: int, frames) -> np.ndarray:
    out = np.zeros(n, bool)
    out[list(frames)] = True
    return out


def frames_of(pixels) -> list[int]:
    """The toy frame each entry of a T×3×S×S block shows (by its red value; −1 for a black frame)."""
    lookup = {red(i): i for i in range(30)}
    out = []
    for p in pixels:
        r = int(p[0, 50, 50])
        out.append(-1 if int(p[2, 50, 50]) == 0 else lookup[min(lookup, key=lambda v: abs(v - r))])
    return out


def test_causal_block_of_selected_and_unselected_frames():
    sel = mask(10, [2, 4, 5, 8])
    np.testing.assert_array_equal(causal_block(sel, 5, 3), block_of(sel, 5, 3))  # selected: the published block
    np.testing.assert_array_equal(causal_block(sel, 7, 3), [4, 5, 7])  # gaps skipped, the frame itself last
    np.testing.assert_array_equal(causal_block(sel, 3, 4), [2, 2, 2, 3])  # padded with the block's first entry
    np.testing.assert_array_equal(causal_block(sel, 1, 3), [1, 1, 1])  # nothing selected before it
    np.testing.assert_array_equal(causal_block(sel, 9, 1), [9])
    with pytest.raises(ValueError, match="outside"):
        causal_block(sel, 10, 3)


def test_selected_blocks_skip_gaps_and_are_the_only_samples(toy):
    ds = ClipDataset(toy, "train", "cnu", SPEC)
    a = ds.track_range("a")
    np.testing.assert_array_equal(np.flatnonzero(ds.selected[a.start:a.stop]), SELECTED_A)
    np.testing.assert_array_equal(np.flatnonzero(ds.labelled()[a.start:a.stop]), SELECTED_A)  # the samples
    for frame, expected in ((2, [2, 2, 2, 2]), (8, [3, 4, 7, 8]), (12, [7, 8, 9, 12]), (29, [24, 27, 28, 29])):
        sample = ds[a.start + frame]
        assert sample[PIXELS].shape == (4, 3, 112, 112)
        assert frames_of(sample[PIXELS]) == expected, frame
        assert int(sample["expr"]) == frame % 7
    # a frame outside the selection (no VA label) still gets a causal block of selected frames
    assert frames_of(ds[a.start + 11][PIXELS]) == [7, 8, 9, 11]
    # without labels (prediction) every face frame is selected
    unlabelled = ClipDataset(toy, None, "cnu", SPEC, labels=False)
    a = unlabelled.track_range("a")
    np.testing.assert_array_equal(np.flatnonzero(unlabelled.selected[a.start:a.stop]),
                                  [i for i in range(30) if i not in (5, 6)])
    assert frames_of(unlabelled[a.start + 8][PIXELS]) == [3, 4, 7, 8]
    # an EXPR-only layout selects on EXPR alone
    expr_only = ClipDataset(toy, "train", "expr7", SPEC)
    a = expr_only.track_range("a")
    np.testing.assert_array_equal(np.flatnonzero(expr_only.selected[a.start:a.stop]),
                                  [i for i in range(30) if i % 5 != 0 and i != 6])


def test_block_augmentation_is_drawn_per_frame_and_seeded(toy, monkeypatch):
    ds = ClipDataset(toy, "train", "cnu", SPEC, Augment(flip=0.5, brightness=0.4, contrast=0.4))
    index = ds.track_range("a").start + 29
    one, again = ds[(index, 123)], ds[(index, 123)]
    assert one[JITTER].shape == (4, 4)
    assert np.array_equal(one[PIXELS].numpy(), again[PIXELS].numpy())
    assert np.array_equal(one[JITTER].numpy(), again[JITTER].numpy())
    assert len({tuple(j) for j in one[JITTER][:, :2].tolist()}) == 4  # each frame its own factors
    # the flip is drawn per frame too: count the frames flipped per sample (the toy frames are uniform, so look
    # at the calls rather than the pixels)
    calls = []
    monkeypatch.setattr(clips, "flip_frames", lambda f, m: calls.append(len(f)) or f[..., ::-1, :])
    counts = []
    for seed in range(20):
        calls.clear()
        ds[(index, seed)]
        assert set(calls) <= {1}
        counts.append(len(calls))
    assert min(counts) < max(counts) and any(0 < c < 4 for c in counts)


def test_class_cycle_sampler_takes_classes_in_turn():
    classes = np.array([0] * 7 + [1] * 2 + [-1] * 3 + [3] * 4)  # class 2 absent, three frames never drawn
    assert class_cycle_size(classes) == 7 * 3
    sampler = EpochSampler(np.ones(len(classes)), class_cycle_size(classes), seed=5, classes=classes)
    index, seeds = sampler.draws()
    drawn = classes[index]
    np.testing.assert_array_equal(drawn, np.tile([0, 1, 3], 7))  # draw k from class k mod C
    assert sorted(index[drawn == 0]) == list(range(7))  # the largest class: each frame once per epoch
    assert np.bincount(index[drawn == 1], minlength=9)[7:9].tolist() in ([4, 3], [3, 4])  # cycled shuffles
    sampler.set_epoch(1)
    assert not np.array_equal(sampler.draws()[0], index)  # a new epoch, new shuffles
    sampler.set_epoch(0)
    assert np.array_equal(sampler.draws()[0], index) and len(seeds) == 21
    # two ranks split one global draw
    ranks = [EpochSampler(np.ones(len(classes)), 21, seed=5, rank=r, world_size=2, classes=classes).draws()[0]
             for r in (0, 1)]
    full = EpochSampler(np.ones(len(classes)), 22, seed=5, classes=classes).draws()[0]
    np.testing.assert_array_equal(np.sort(np.concatenate(ranks)), np.sort(full))
    rng = np.random.default_rng(0)
    assert len(cycle_classes([np.array([4])], 5, rng)) == 5


def test_shift_scale_rotate_draws_and_warps_each_frame(toy, monkeypatch):
    rng = np.random.default_rng(0)
    for _ in range(50):  # the draws stay within the published ranges
        m = shift_scale_rotate(rng, 112, 0.0625, 0.1, 45)
        zoom = float(np.hypot(m[0, 0], m[0, 1]))
        angle = float(np.degrees(np.arctan2(m[0, 1], m[0, 0])))
        assert 0.9 <= zoom <= 1.1 and -45 <= angle <= 45
        centre = m @ np.array([55.5, 55.5, 1.0])  # the centre moves by the shift only
        assert np.all(np.abs(centre - 55.5) <= 0.0625 * 112 + 1e-9)
    # the warp: a pure shift of 3 px moves a gradient image by 3 px (bilinear, reflected border); the mask channel
    # keeps its grey levels (nearest)
    img = np.zeros((112, 112, 4), np.uint8)
    img[..., 0] = np.arange(112, dtype=np.uint8)[None, :] * 2
    img[:, 50:, 3] = 7
    moved = warp_frame(img, np.array([[1.0, 0, 3], [0, 1.0, 0]]))
    assert np.array_equal(moved[:, 3:, 0], img[:, :-3, 0]) and set(np.unique(moved[..., 3])) <= {0, 7}
    assert warp_frame(img[..., :3], np.array([[1.0, 0, 0], [0, 1.0, 0]])).shape == (112, 112, 3)
    # per frame of a block: one matrix each, drawn from the sample's seed
    seen = []
    monkeypatch.setattr(clips, "warp_frame", lambda f, m: seen.append(m.copy()) or f)
    ds = ClipDataset(toy, "train", "cnu", SPEC, Augment(shift_scale_rotate=(0.0625, 0.1, 45)))
    index = ds.track_range("a").start + 29
    ds[(index, 5)]
    first, seen[:] = list(seen), []
    ds[(index, 5)]
    assert len(first) == 4 and all(np.array_equal(a, b) for a, b in zip(first, seen, strict=True))
    assert not np.allclose(first[0], first[1])  # each frame its own affine
    seen.clear()
    ds[index]  # no seed (validation): no augmentation
    assert not seen


def test_block_at_agrees_with_a_direct_scan_of_the_track():
    rng = np.random.default_rng(3)
    for _ in range(20):
        sel = rng.random(40) < 0.4
        positions, length = np.flatnonzero(sel), int(rng.integers(1, 6))
        for frame in range(40):
            got = block_at(positions, frame, length)
            before = [i for i in range(frame) if sel[i]][-(length - 1):] if length > 1 else []
            want = before + [frame]
            want = [want[0]] * (length - len(want)) + want
            assert got.tolist() == want, (frame, length)
