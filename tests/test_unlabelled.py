"""data/strong_aug.py and data/unlabelled.py: seeded weak/strong views, the unlabelled pool, its step sampler."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data.clips import ClipDataset, DatasetError
from data.strong_aug import IDENTITY, OP_NAMES, OPS, apply_op, op_value, strong_view, weak_view
from data.unlabelled import UnlabelledFaces, UnlabelledSampler, concat_pools, unlabelled_frames
from tasks import EXPR_NAMES_8
from utils.inputs import InputSpec

S = 32


def noise(seed: int, shape=(3, S, S)) -> torch.Tensor:
    """A textured image whose levels leave room for AutoContrast/Equalize to change it."""
    return torch.from_numpy(np.random.default_rng(seed).integers(40, 200, size=shape, dtype=np.uint8))


def make_folder(root: Path, classes=("happy", "SAD"), per_class: int = 2, loose: int = 2) -> Path:
    """Loose images (no class) and class folders spelt freely; every image is seeded noise, 20×28 (not square)."""
    k = 0

    def write(path: Path) -> None:
        nonlocal k
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.random.default_rng(k).integers(0, 256, (20, 28, 3), dtype=np.uint8))
        k += 1

    for j in range(loose):
        write(root / f"loose_{j}.png")
    for name in classes:
        for j in range(per_class):
            write(root / name / f"{j:02d}.png")
    (root / "notes.txt").write_text("not an image")
    return root


def frames(db: Path, split: str = "train", spec: InputSpec | None = None) -> ClipDataset:
    return ClipDataset(db, split, "abaw3", spec or InputSpec.frame(size=S))


# --- views ---------------------------------------------------------------------------------------------------
def test_views_keep_shape_and_dtype_and_follow_their_seed():
    img = noise(0)
    for view in (weak_view, strong_view):
        a = view(img, np.random.default_rng(7))
        assert a.shape == img.shape and a.dtype == torch.uint8 and a.is_contiguous()
        assert torch.equal(a, view(img, np.random.default_rng(7)))  # same seed, same bytes
        others = [view(img, np.random.default_rng(s)) for s in range(8, 12)]
        assert any(not torch.equal(a, b) for b in others)  # other seeds, other views
    weak, strong = (v(img, np.random.default_rng(3)) for v in (weak_view, strong_view))
    assert not torch.equal(weak, strong)


def test_the_weak_view_is_a_reflected_translation_and_a_flip():
    img = noise(1, (3, 16, 16))
    seen_flip = seen_plain = False
    for seed in range(20):
        out = weak_view(img, np.random.default_rng(seed), crop=0.125)  # pad 2: crops of the 20×20 reflection
        padded = torch.nn.functional.pad(img[None].float(), (2, 2, 2, 2), mode="reflect")[0].to(torch.uint8)
        windows = [padded[:, y:y + 16, x:x + 16] for y in range(5) for x in range(5)]
        plain = any(torch.equal(out, w) for w in windows)
        flipped = any(torch.equal(out.flip(-1), w) for w in windows)
        assert plain or flipped
        seen_plain |= plain and not flipped
        seen_flip |= flipped and not plain
    assert seen_plain and seen_flip
    for seed in range(4):  # no translation: the image or its mirror
        out = weak_view(img, np.random.default_rng(seed), crop=0.0)
        assert torch.equal(out, img) or torch.equal(out, img.flip(-1))


@pytest.mark.parametrize("name", OP_NAMES)
def test_every_op_runs_at_both_ends_of_its_range(name):
    img = noise(2, (3, 24, 24))
    outs = []
    for u in (0.0, 1.0):
        out = apply_op(img, name, op_value(name, u))
        assert out.shape == img.shape and out.dtype == torch.uint8
        outs.append(out)
    changed = any(not torch.equal(o, img) for o in outs)
    assert changed == (name != "Identity")


def test_the_published_ranges_and_the_magnitude_scale():
    assert len(OPS) == 14 and {"AutoContrast", "Equalize", "Identity", "Solarize", "TranslateY"} <= set(OP_NAMES)
    for name, low, high in OPS:
        if low is None:
            continue
        assert op_value(name, 0.0) == low and op_value(name, 1.0) == high  # magnitude_max 10: the whole range
        assert op_value(name, 0.3, magnitude_max=0) == pytest.approx(IDENTITY[name])
        half = op_value(name, 0.0, magnitude_max=5)
        assert half == pytest.approx((low + IDENTITY[name]) / 2)
    with pytest.raises(ValueError, match="magnitude_max"):
        strong_view(noise(0), np.random.default_rng(0), magnitude_max=11)


# --- the pool ------------------------------------------------------------------------------------------------
def test_a_folder_pool_reads_flat_and_class_folders_with_hidden_truth(tmp_path):
    pool = UnlabelledFaces.from_folder(make_folder(tmp_path / "faces"), S)
    # loose images first (no class), then Happiness (4) and Sadness (5) in class order
    assert len(pool) == 6 and pool.truth.tolist() == [-1, -1, 4, 4, 5, 5]
    sample = pool[(3, 11)]
    assert set(sample) == {"weak", "strong", "uid", "truth"}
    assert sample["weak"].shape == (3, S, S) and sample["strong"].dtype == torch.uint8
    assert int(sample["uid"]) == 3 and int(sample["truth"]) == 4
    plain = pool[3]  # a plain uid: the eval image as both views
    assert torch.equal(plain["weak"], plain["strong"]) and not torch.equal(sample["weak"], sample["strong"])
    flat = UnlabelledFaces.from_folder(make_folder(tmp_path / "flat", classes=()), S,
                                       truth={"loose_1.png": EXPR_NAMES_8.index("Fear")})
    assert flat.truth.tolist() == [-1, 3]


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(DatasetError, match="bored"):
        UnlabelledFaces.from_folder(make_folder(tmp_path / "a", classes=("happy", "bored")), S)
    with pytest.raises(DatasetError, match="second folder"):
        UnlabelledFaces.from_folder(make_folder(tmp_path / "b", classes=("happy", "Happiness")), S)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        UnlabelledFaces.from_folder(tmp_path / "empty", S)
    with pytest.raises(DatasetError, match="not there"):
        UnlabelledFaces.from_folder(make_folder(tmp_path / "c", classes=()), S, truth={"x.png": 1})


def test_training_frames_without_expr_label_and_their_truth(toy):
    ds = frames(toy)
    index = unlabelled_frames(ds)
    # track a: no EXPR label on every 5th frame, frame 5 has no face; track c's EXPR labels are validation ones
    assert index.tolist() == [0, 10, 15, 20, 25]
    pool = UnlabelledFaces.from_clip_dataset(ds, index, truth=[0, 1, 2, 3, 4])
    s = pool[(2, 5)]
    assert int(s["uid"]) == 2 and int(s["truth"]) == 2 and s["weak"].shape == (3, S, S)
    assert torch.equal(pool[2]["weak"], ds[15]["pixels"])  # the eval view of the frame


def test_the_pool_refuses_frames_that_are_not_training_frames(toy):
    for split in ("val", None):
        with pytest.raises(DatasetError, match="Validation_Set" if split else "None"):
            UnlabelledFaces.from_clip_dataset(frames(toy, split), [0])
    with pytest.raises(DatasetError, match="kind"):
        UnlabelledFaces.from_clip_dataset(frames(toy, spec=InputSpec.frame(size=S, mask="tsav")), [0])
    ds = frames(toy)
    c = ds.track_range("c")
    with pytest.raises(DatasetError, match="track c frame 2"):  # EXPR in Validation_Set: never pseudo-labelled
        UnlabelledFaces.from_clip_dataset(ds, [0, c.start + 2])
    with pytest.raises(DatasetError, match="truth"):
        UnlabelledFaces.from_clip_dataset(ds, [0, 10], truth=[1])


def test_same_key_same_bytes_with_0_and_2_workers(toy, tmp_path):
    pool = concat_pools([UnlabelledFaces.from_clip_dataset(frames(toy), unlabelled_frames(frames(toy))),
                         UnlabelledFaces.from_folder(make_folder(tmp_path / "faces"), S)])
    assert len(pool) == 11 and pool.truth.tolist() == [-1] * 7 + [4, 4, 5, 5]
    sampler = UnlabelledSampler(len(pool), per_step=4, seed=1)
    direct = [pool[k] for step in islice(sampler.batches(0), 3) for k in step]
    for workers in (0, 2):
        got = list(islice(DataLoader(pool, batch_sampler=sampler, num_workers=workers), 3))
        for key in ("weak", "strong", "uid", "truth"):
            want = torch.stack([d[key] for d in direct])
            assert torch.equal(torch.cat([b[key] for b in got]), want), (workers, key)


# --- the sampler ---------------------------------------------------------------------------------------------
def test_the_sampler_resumes_with_the_draws_of_the_uninterrupted_run():
    s = UnlabelledSampler(50, per_step=8, seed=3)
    run = list(islice(s.batches(0), 6))
    assert all(len(b) == 8 and len({u for u, _ in b}) == 8 for b in run)  # no uid twice within a step
    assert run[4] != run[5] and all(0 <= u < 50 for b in run for u, _ in b)
    resumed = UnlabelledSampler(50, per_step=8, seed=0)
    resumed.load_state_dict({"seed": 3, "step": 4})
    assert list(islice(iter(resumed), 2)) == run[4:6]
    s.set_step(4)
    assert s.state_dict() == {"seed": 3, "step": 4} and next(iter(s)) == run[4]
    assert list(islice(UnlabelledSampler(50, 8, seed=4).batches(0), 1)) != run[:1]
    ranks = [UnlabelledSampler(50, 8, seed=3, rank=r, world_size=2).draws(2) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(run[2])
    small = UnlabelledSampler(3, per_step=8, seed=0).draws(0)  # a pool smaller than a step: with replacement
    assert len(small) == 8 and {u for u, _ in small} <= {0, 1, 2}


def test_photos_are_aligned_once_like_the_database_frames_and_faceless_ones_left_out(tmp_path):
    """Rendered frames of a mini-dataset video (a face somewhere in a 480×270 picture) → the pool's image is the
    face aligned to the 112 px template, close to the crop made from the true landmarks; a picture without a face
    is left out."""
    from tools.synthetic import align_crop, background, plan_video, render_frame, video_specs

    spec = video_specs(quick=True)[0]
    job = plan_video(spec, 0, tmp_path / "unused")
    bg = background(job)
    folder = tmp_path / "photos"
    folder.mkdir()
    truth_crops = []
    for k in (0, 20, 40):
        rgb, placed = render_frame(job, bg, k)
        cv2.imwrite(str(folder / f"frame{k:02d}.png"), rgb[:, :, ::-1])
        truth_crops.append(align_crop(rgb, placed[0][1]))
    cv2.imwrite(str(folder / "zz_empty.png"), np.full((270, 480, 3), 128, np.uint8))
    pool = UnlabelledFaces.from_folder(folder, 112, align=True)
    assert len(pool) == 3 and pool.sources[0].skipped == ["zz_empty.png"]
    assert "1 without a face left out" in pool.describe()
    for uid, want in enumerate(truth_crops):
        got = pool[uid]["weak"].permute(1, 2, 0).numpy().astype(np.float32)  # a plain uid: the eval image
        face = np.s_[20:100, 20:92]  # inside the face, where the background does not show
        assert np.abs(got[face] - want[face].astype(np.float32)).mean() < 12, uid  # aligned ≈ 4; 8 px off ≈ 25
