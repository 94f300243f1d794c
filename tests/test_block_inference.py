"""Cached block inference (app.block_inference) for a tiny CNU: equal to the model on every face frame's own block
(data.blocks), faceless frames held from the last face frame, any chunk size, target subsets, the video path,
one face-network pass per face frame; and the --faceless hold rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app import block_inference, inference, video_stream
from data.blocks import block_indices
from data.reader import resize_frames
from models.cnu import CNU
from tasks import EXPR_NAMES_7, OutputLayout
from utils.inputs import PIXELS, InputSpec
from utils.outputs import output_scores

SPEC = InputSpec.frame_block(4, size=32, block="selected")
LAYOUT = OutputLayout("cnu_t", ("expr", "va"), 7, EXPR_NAMES_7, edition="abaw2020")
KEYS = ("va", "expr_prob", "logits")
# 30 frames: no face at the start (0-2), gaps of 3 (7-9), 1 (15) and 2 (22-23), none at the end (28-29)
FACE = np.ones(30, bool)
FACE[[0, 1, 2, 7, 8, 9, 15, 22, 23, 28, 29]] = False


@pytest.fixture(scope="module")
def model() -> CNU:
    torch.manual_seed(0)
    return CNU(LAYOUT, input_spec=SPEC, variant="small").eval()


def source(face: np.ndarray = FACE, seed: int = 0, name: str = "t") -> inference.TrackSource:
    """In-memory 112 px frames; faceless frames hold noise too (they must never be read)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (len(face), 112, 112, 3), dtype=np.uint8)
    return inference.TrackSource(name, np.arange(len(face)) / 30, face, None, frames=frames)


def direct_scores(model: CNU, src: inference.TrackSource, flip: bool = False) -> dict[str, np.ndarray]:
    """The reference: every face frame's block (data.blocks) gathered as pixels and run through the whole model;
    faceless frames the last face frame's (the first face frame's before any)."""
    small = resize_frames(src.frames, SPEC.size)
    faces = np.flatnonzero(src.face)
    blocks = torch.as_tensor(block_indices(src.face, SPEC.clip_len))
    pixels = torch.from_numpy(small)[blocks].permute(0, 1, 4, 2, 3)  # m×T×3×S×S
    views = [pixels, pixels.flip(-1)] if flip else [pixels]
    with torch.no_grad():
        runs = [output_scores(model(model.prepare({PIXELS: v}, torch.device("cpu"))), model.layout) for v in views]
    scores = {k: sum(r[k] for r in runs).numpy() / len(runs) for k in KEYS}
    held = np.clip(np.searchsorted(faces, np.arange(len(src)), side="right") - 1, 0, None)
    return {k: v[held] for k, v in scores.items()}


def assert_same(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], rows: np.ndarray | None = None) -> None:
    assert sorted(got) == sorted(KEYS)
    for k in KEYS:
        want = ref[k] if rows is None else ref[k][rows]
        np.testing.assert_allclose(got[k], want, rtol=0, atol=1e-5, err_msg=k)


def count_face_passes(model: CNU, monkeypatch) -> list[int]:
    """Frames per call of ``model.frame_outputs`` (the face network)."""
    calls: list[int] = []
    original = model.frame_outputs

    def counted(frames):
        calls.append(len(frames))
        return original(frames)

    monkeypatch.setattr(model, "frame_outputs", counted)
    return calls


@pytest.mark.parametrize("flip", [False, True])
def test_cached_blocks_equal_the_model_on_each_face_frames_block(model, monkeypatch, flip):
    src = source()
    ref = direct_scores(model, src, flip)
    assert not np.allclose(ref["va"][3], ref["va"][4])  # the frames differ: a mix-up would show
    calls = count_face_passes(model, monkeypatch)
    got = inference.predict_source(model, src, batch_size=4, chunk=8, flip_tta=flip)
    assert sum(calls) == FACE.sum() * (2 if flip else 1)  # once per face frame (and view), not T times
    assert max(calls) <= 4
    assert_same(got, ref)
    # faceless frames: the last face frame's scores, the first face frame's before any
    for k in KEYS:
        np.testing.assert_array_equal(got[k][[0, 1, 2]], got[k][[3, 3, 3]])
        np.testing.assert_array_equal(got[k][[7, 8, 9, 15, 28, 29]], got[k][[6, 6, 6, 14, 27, 27]])


@pytest.mark.parametrize("chunk", [3, 5, 1000])
def test_any_chunk_size_gives_the_same_numbers(model, chunk):
    """Chunks of 3 are shorter than a block (the carry spans several chunks; chunk 0-2 has no face at all)."""
    src = source(seed=1)
    assert_same(inference.predict_source(model, src, batch_size=3, chunk=chunk), direct_scores(model, src))


def test_a_targets_subset_equals_the_full_runs_rows(model, monkeypatch):
    """Chunks without targets still feed the carry; frames after the last target are not read, unless the
    targets all come before the first face frame (y: its scores are theirs)."""
    srcs = [source(seed=2, name="x"), source(np.zeros(6, bool), name="none"), source(seed=3, name="y")]
    full = inference.predict_sources(model, srcs, chunk=4)
    want = [np.array([1, 20, 8, 16, 9]), np.array([], np.int64), np.array([0, 2])]
    calls = count_face_passes(model, monkeypatch)
    got = inference.predict_sources(model, srcs, want, chunk=4)
    assert sum(calls) == FACE[:21].sum() + 1  # every face frame up to each last target (y: its first face), once
    for g, f, w in zip(got, full, want, strict=True):
        assert_same(g, f, np.unique(w))
    assert all(got[1][k].shape == (0, f.shape[1]) for k, f in full[1].items())


def test_a_track_without_a_face_gets_the_model_on_a_black_block(model):
    src = source(np.zeros(7, bool))
    got = inference.predict_source(model, src, chunk=3)
    black = torch.zeros((1, SPEC.clip_len, 3, SPEC.size, SPEC.size), dtype=torch.uint8)
    with torch.no_grad():
        ref = output_scores(model(model.prepare({PIXELS: black}, torch.device("cpu"))), model.layout)
    assert_same(got, {k: np.repeat(v.numpy(), 7, axis=0) for k, v in ref.items()})


@pytest.mark.parametrize("chunk,flip", [(4, False), (64, True)])
def test_the_video_path_equals_the_database_path(model, chunk, flip):
    """RollingClips fed frame by frame (None without a face) gives predict_sources' numbers."""
    src = source(seed=4)
    ref = inference.predict_source(model, src, chunk=7, flip_tta=flip)
    clips = video_stream.RollingClips(model, None, batch_size=5, chunk=chunk, flip_tta=flip)
    assert clips.blocks is not None and clips.buffer.shape[0] == chunk  # no pixel history kept
    for i in range(len(src)):
        clips.push(resize_frames(src.frames[i:i + 1], SPEC.size)[0] if src.face[i] else None, src.times[i])
    assert_same(clips.finish(), ref)
    faceless = video_stream.RollingClips(model, None, chunk=chunk)
    for t in range(5):
        faceless.push(None, t / 30)
    assert_same(faceless.finish(), inference.predict_source(model, source(np.zeros(5, bool))))


def test_block_stream_refuses_a_fixed_offset_model():
    torch.manual_seed(0)
    other = CNU(LAYOUT, input_spec=InputSpec.frame_block(4, size=32), variant="small").eval()
    assert not block_inference.is_block_model(other)
    with pytest.raises(ValueError, match="selected"):
        block_inference.BlockStream(other)


def test_faceless_hold_rule():
    face = np.array([False, True, True, False, False, False, True, False])
    va = np.arange(16, dtype=float).reshape(8, 2)
    expr = np.arange(8)[:, None] * 10.0
    out = inference.fill_faceless({"va": va, "expr_prob": expr, "au_prob": np.eye(8, 3)}, face, "hold")
    np.testing.assert_allclose(out["va"][:, 0], [2, 2, 4, 6, 8, 10, 12, 12])  # interpolated as 'fill' does
    np.testing.assert_array_equal(out["expr_prob"][:, 0], [10, 10, 20, 20, 20, 20, 60, 60])  # the last before
    np.testing.assert_array_equal(out["au_prob"], np.eye(8, 3)[[1, 1, 2, 2, 2, 2, 6, 6]])
    nearest = inference.fill_faceless({"expr_prob": expr}, face, "fill")["expr_prob"][:, 0]
    assert nearest[5] == 60  # 'fill' takes the nearest face frame (6), 'hold' the last before (2)
    assert inference.fill_faceless({"va": va}, np.zeros(8, bool), "hold")["va"] is va
    with pytest.raises(ValueError, match="faceless rule"):
        inference.fill_faceless({"va": va}, face, "nearest")
