"""data/clips.py (+ data/reader.py, data/sampling.py) and the TSAV prepare step: clip geometry, audio
windows, labels per split, augmentations, sampling, bad databases."""

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from toy_db import au_of, expr_of, make_toy_db, red, va_of

from data import audio, masks
from data.clips import Augment, ClipDataset, DatasetError
from data.reader import audio_window, audio_window_db, flip_frames
from data.sampling import EpochSampler, sampling_weights, validation_indices
from models.prepare import color_jitter, finish_audio
from models.tsav import MEAN, STD, prepare_clip_audio
from utils.inputs import PIXELS, TEACHER_JITTER, InputSpec


@pytest.fixture(scope="module")
def db(toy):
    return toy  # the session's toy database (read-only)


def index_of(ds: ClipDataset, track: str, frame: int) -> int:
    return ds.track_range(track)[frame]


def model_input(ds: ClipDataset, key) -> dict[str, torch.Tensor]:
    """One sample as the model gets it: collated and prepared (float, jitter, normalised) on the CPU; with a
    teacher view drawn, the teacher's clip too ('teacher_clip')."""
    raw = torch.utils.data.default_collate([ds[key]])
    batch = prepare_clip_audio(raw, torch.device("cpu"))
    if TEACHER_JITTER in raw:
        batch["teacher_clip"] = prepare_clip_audio(raw, torch.device("cpu"), view="teacher")["clip"]
    return {k: v[0] for k, v in batch.items()}


def black_value() -> torch.Tensor:
    return (-torch.tensor(MEAN) / torch.tensor(STD)).reshape(4, 1, 1)


def test_clip_is_causal_with_dilation_in_source_frames(db):
    ds = ClipDataset(db, "train", "abaw2021", InputSpec(clip_len=4, dilation=3))
    frames = ds.raw_frames(0, 10)  # track a: frames 1, 4, 7, 10
    assert frames.shape == (4, 112, 112, 4)
    for k, i in enumerate((1, 4, 7, 10)):
        assert abs(int(frames[k, 50, 50, 0]) - red(i)) <= 2
        assert frames[k, 50, 20, 3] == masks.TSAV_LEFT_BROW
    raw = ds[index_of(ds, "a", 10)][PIXELS]
    assert raw.shape == (4, 4, 112, 112) and raw.dtype == torch.uint8  # 4x fewer bytes between processes
    sample = model_input(ds, index_of(ds, "a", 10))
    expected = (torch.tensor([red(10) / 255, 100 / 255, 200 / 255, masks.TSAV_LEFT_BROW / 255]) - torch.tensor(MEAN))
    torch.testing.assert_close(sample["clip"][:, 3, 50, 20], expected / torch.tensor(STD), atol=0.05, rtol=0)


def test_frames_before_the_start_or_without_face_are_black(db):
    ds = ClipDataset(db, "train", "abaw2021", InputSpec(clip_len=3, dilation=2))
    frames = ds.raw_frames(0, 7)  # frames 3, 5 (no face), 7
    assert frames[1].max() == 0 and frames[0].max() > 0 and frames[2].max() > 0
    frames = ds.raw_frames(0, 2)  # frames -2, 0, 2
    assert frames[0].max() == 0 and frames[1].max() > 0
    clip = model_input(ds, index_of(ds, "a", 2))["clip"]
    torch.testing.assert_close(clip[:, 0], black_value().expand(4, 112, 112))


def test_resize_and_mask_choice(db):
    ds = ClipDataset(db, "train", "abaw2021", InputSpec(clip_len=2, size=48, mask="mtmt"))
    clip = model_input(ds, 0)["clip"]
    assert clip.shape == (4, 2, 48, 48)
    assert clip[3, 1].sub((masks.MTMT_EYES / 255 - MEAN[3]) / STD[3]).abs().max() < 1e-5


def test_audio_window_is_centred_and_padded_on_the_correct_side(db):
    ds = ClipDataset(db, "train", "abaw2021", InputSpec(audio_seconds=0.2))  # 21 columns
    assert ds[0]["audio_db"].dtype == torch.float16  # half the bytes of the float32 model input
    a = model_input(ds, index_of(ds, "a", 15))["audio_features"][0, 0].numpy()  # t = 0.5 s → column 50
    db_values = a * audio.NORM_STD + audio.NORM_MEAN
    np.testing.assert_allclose(db_values, np.arange(40, 61) / 10, atol=0.02)
    first = model_input(ds, index_of(ds, "a", 0))["audio_features"][0, 0].numpy() * audio.NORM_STD + audio.NORM_MEAN
    # t = 0: the 10 columns before the audio are silence (floored 80 dB under the window maximum)
    np.testing.assert_allclose(first[:10], first[10:].max() - audio.TOP_DB, atol=0.02)
    np.testing.assert_allclose(first[10:], np.arange(0, 11) / 10, atol=0.02)


def test_audio_window_equals_data_audio_window_for_10_s():
    rng = np.random.default_rng(0)
    mel = rng.uniform(-90, 20, size=(64, 1500)).astype(np.float16)
    for t in (0.0, 2.3, 7.5, 14.99, 20.0):
        np.testing.assert_array_equal(audio_window(mel, t, 1001), audio.window(mel, t))
        on_device = finish_audio(torch.from_numpy(audio_window_db(mel, t, 1001))[None])[0].numpy()
        np.testing.assert_array_equal(on_device, audio.window(mel, t))
    np.testing.assert_array_equal(audio_window(None, 3.0, 1001), audio.silent_window())
    assert InputSpec().audio_columns == 1001 and InputSpec(audio_seconds=2).audio_columns == 201


def test_video_without_audio_gets_the_silent_window(db):
    ds = ClipDataset(db, "val", "abaw2021", InputSpec(audio_seconds=1))
    a = model_input(ds, 0)["audio_features"]
    assert a.shape == (1, 64, 101)
    torch.testing.assert_close(a, torch.full_like(a, (audio.SILENCE_DB - audio.NORM_MEAN) / audio.NORM_STD))


def test_labels_layout_order_and_per_split_validity(db):
    train = ClipDataset(db, "train", "abaw2021", InputSpec(clip_len=1))
    assert [t.name for t in train.tracks] == ["a", "c"]
    s = train[index_of(train, "a", 12)]
    assert s["expr"] == expr_of(12) and s["expr_valid"]
    torch.testing.assert_close(s["va"], torch.tensor(va_of(12)))
    np.testing.assert_array_equal(s["au"].numpy(), au_of(12))
    assert not train[index_of(train, "a", 10)]["expr_valid"]  # invalid in the file
    assert not train[index_of(train, "a", 10)]["au_valid"][3] and train[index_of(train, "a", 10)]["au_valid"][2]
    # c: VA is Train_Set, EXPR is Validation_Set, no AU → only VA counts in training
    c = train.track_range("c")
    assert train.labels["va_valid"][c].any()
    assert not train.labels["expr_valid"][c].any() and not train.labels["au_valid"][c].any()
    val = ClipDataset(db, "val", "abaw2021", InputSpec(clip_len=1))
    assert [t.name for t in val.tracks] == ["b_left", "b_right", "c"]
    c = val.track_range("c")
    assert not val.labels["va_valid"][c].any() and val.labels["expr_valid"][c].sum() > 0
    # 'Other' (7) is no class of a 7-class layout, but is one under abaw3
    assert not val.labels["expr_valid"][c][3]
    assert ClipDataset(db, "val", "abaw3", InputSpec(clip_len=1)).labels["expr_valid"][c][3]


def test_bad_databases_fail_with_one_clear_error(tmp_path, db):
    only_tsav = make_toy_db(tmp_path / "tsav_only", mask_kinds=("tsav",))
    with pytest.raises(DatasetError, match="masks.*mtmt"):
        ClipDataset(only_tsav, "train", "abaw2021", InputSpec(mask="mtmt"))
    no_val = make_toy_db(tmp_path / "no_val", with_val=False)
    with pytest.raises(DatasetError, match="no track annotated in Validation_Set"):
        ClipDataset(no_val, "val", "abaw2021")
    with pytest.raises(DatasetError, match="lack AU20"):
        ClipDataset(db, "train", "abaw2020")
    with pytest.raises(FileNotFoundError):
        ClipDataset(tmp_path / "nothing", "train", "abaw2021")


def test_flip_mirrors_and_swaps_tsav_sides():
    frames = np.zeros((2, 4, 4, 4), np.uint8)
    frames[:, :, :2, 0] = 9
    frames[:, :, :2, 3], frames[:, :, 2:, 3] = masks.TSAV_LEFT_EYE, masks.TSAV_NOSE
    out = flip_frames(frames, "tsav")
    assert (out[:, :, 2:, 0] == 9).all() and (out[:, :, :2, 0] == 0).all()
    assert (out[:, :, 2:, 3] == masks.TSAV_RIGHT_EYE).all() and (out[:, :, :2, 3] == masks.TSAV_NOSE).all()
    assert (flip_frames(frames, "mtmt")[:, :, 2:, 3] == masks.TSAV_LEFT_EYE).all()


def test_augmentation_is_a_function_of_the_seed_and_never_touches_the_mask(db):
    aug = Augment(flip=0.5, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, teacher=True)
    ds = ClipDataset(db, "train", "abaw2021", InputSpec(clip_len=2, size=32), aug)
    plain = model_input(ClipDataset(db, "train", "abaw2021", InputSpec(clip_len=2, size=32)), 12)
    a, b, c = model_input(ds, (12, 7)), model_input(ds, (12, 7)), model_input(ds, (12, 8))
    torch.testing.assert_close(a["clip"], b["clip"])
    torch.testing.assert_close(a["teacher_clip"], b["teacher_clip"])
    assert not torch.equal(a["clip"], c["clip"])
    flipped = {s: ds[(12, s)][PIXELS][3, 1, 5, 2] / 255 for s in range(12)}  # left column: brow level or 0 when flipped
    levels = {round(float(v), 3) for v in flipped.values()}
    assert len(levels) == 2  # both flipped and unflipped clips occur
    for s in range(12):
        x = model_input(ds, (12, s))
        assert torch.equal(x["clip"][3], x["teacher_clip"][3])  # same flip, mask untouched
        ratio = (x["teacher_clip"][:3] * torch.tensor(STD[:3]).reshape(3, 1, 1, 1)
                 + torch.tensor(MEAN[:3]).reshape(3, 1, 1, 1)).mean()
        base = (plain["clip"][:3] * torch.tensor(STD[:3]).reshape(3, 1, 1, 1)
                + torch.tensor(MEAN[:3]).reshape(3, 1, 1, 1)).mean()
        assert 0.75 < float(ratio / base) < 1.25


def test_device_preparation_jitters_each_clip_with_its_own_factors():
    g = torch.Generator().manual_seed(0)
    clips = torch.randint(0, 256, (3, 4, 2, 8, 8), generator=g, dtype=torch.uint8)
    jitter = torch.tensor([[1.2, 0.9, 1.1, 0.05], [1.0, 1.0, 1.0, 0.0], [0.8, 1.0, 1.0, 0.0]])
    teacher = torch.tensor([[1.0, 1.0], [1.1, 0.9], [1.0, 1.0]])
    raw = {PIXELS: clips, "audio_db": torch.zeros(3, 1, 4, 5), "jitter": jitter, "teacher_jitter": teacher}
    out = prepare_clip_audio(raw, torch.device("cpu"))
    out["teacher_clip"] = prepare_clip_audio(raw, torch.device("cpu"), view="teacher")["clip"]
    base = clips.float() / 255
    mean, std = torch.tensor(MEAN).reshape(4, 1, 1, 1), torch.tensor(STD).reshape(4, 1, 1, 1)
    for b in range(3):
        for key, factors in (("clip", jitter[b].tolist()), ("teacher_clip", teacher[b].tolist() + [1.0, 0.0])):
            want = base[b].clone()
            want[:3] = color_jitter(base[b, :3].transpose(0, 1), factors).transpose(0, 1)
            torch.testing.assert_close(out[key][b], (want - mean) / std)
    torch.testing.assert_close(out["clip"][1], (base[1] - mean) / std)  # identity factors: untouched
    assert torch.equal(out["clip"][:, 3], out["teacher_clip"][:, 3])  # the mask is never jittered
    assert not torch.equal(out["clip"][0, :3], ((base[0] - mean) / std)[:3])


def test_dataset_pickles_without_the_environment_and_workers_agree(db):
    ds = ClipDataset(db, "train", "abaw2021", InputSpec(clip_len=2, size=16, audio_seconds=0.5),
                     Augment(flip=0.5, brightness=0.2))
    ds[0]
    state = pickle.dumps(ds)
    assert len(state) < 200_000
    sampler = EpochSampler(sampling_weights(ds), 12, seed=3)
    direct = [ds[k][PIXELS] for k in sampler]
    loaded = torch.cat([b[PIXELS] for b in DataLoader(ds, batch_size=4, sampler=sampler, num_workers=2)])
    torch.testing.assert_close(loaded, torch.stack(direct))


def test_sampler_is_reproducible_per_epoch_and_splits_over_ranks(db):
    ds = ClipDataset(db, "train", "abaw2021", InputSpec(clip_len=1))
    w = sampling_weights(ds)
    s = EpochSampler(w, 20, seed=5)
    first = list(s)
    assert first == list(EpochSampler(w, 20, seed=5))
    assert len({i for i, _ in first}) == 20  # uniform: without replacement
    assert all(ds.labelled()[i] for i, _ in first)
    s.set_epoch(1)
    assert list(s) != first
    ranks = [EpochSampler(w, 20, seed=5, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 10
    assert sorted(list(ranks[0]) + list(ranks[1])) == sorted(first)
    restored = EpochSampler(w, 20, seed=0)
    s.set_epoch(4)
    restored.load_state_dict(s.state_dict())
    assert list(restored) == list(s)


def test_balanced_sampling(db):
    ds = ClipDataset(db, "train", "abaw2021", InputSpec(clip_len=1))
    lab = ds.labels
    valid = lab["expr_valid"]
    w = sampling_weights(ds, balance_expr=True)
    per_class = [w[valid & (lab["expr"] == c)].sum() for c in range(7)]
    np.testing.assert_allclose(per_class, valid.sum() / 7)
    assert (w[~valid & ds.labelled()] == 1).all() and (w[~ds.labelled()] == 0).all()
    # every task gets the same total weight, each EXPR class the same part of EXPR's
    w = sampling_weights(ds, balance_tasks=True, balance_expr=True)
    assert w.sum() == pytest.approx(3)
    idx, _ = EpochSampler(w, 30000, seed=0).draws()
    assert idx.size == 30000
    only_expr = w - np.where(lab["va_valid"], 1 / lab["va_valid"].sum(), 0) \
        - np.where(lab["au_valid"].any(axis=1), 1 / lab["au_valid"].any(axis=1).sum(), 0)
    np.testing.assert_allclose([only_expr[valid & (lab["expr"] == c)].sum() for c in range(7)], 1 / 7)
    everything = sampling_weights(ds, labelled_only=False)
    assert (everything > 0).sum() == len(ds) > (sampling_weights(ds) > 0).sum()


def test_validation_subset_is_fixed(db):
    val = ClipDataset(db, "val", "abaw2021", InputSpec(clip_len=1))
    full = validation_indices(val)
    assert len(full) == val.labelled().sum()
    sub = validation_indices(val, 10, seed=1)
    np.testing.assert_array_equal(sub, validation_indices(val, 10, seed=1))
    assert len(sub) == 10 and set(sub) <= set(full) and (np.diff(sub) > 0).all()
