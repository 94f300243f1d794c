"""data/lsd.py: class folders matched by name (misspellings, any case), images served as uint8 faces."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.lsd import LsdError, LsdImages, class_folders, match_class
from tasks import EXPR_NAMES_6
from utils.inputs import PIXELS

# Folder names as a release may spell them: the class order must not follow the spelling.
FOLDERS = ("ANGRY", "disgust", "Fear", "HAPPINESS", "sad", "Surprised")


def make_split(root: Path, split: str, folders=FOLDERS, per_class: int = 2, size: int = 40) -> Path:
    for k, name in enumerate(folders):
        d = root / split / name
        d.mkdir(parents=True)
        for j in range(per_class):
            img = np.full((size, size + 8, 3), 30 * k + j, np.uint8)  # class and image told apart by value
            cv2.imwrite(str(d / f"{j:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 100])
    (root / split / "notes.txt").write_text("not an image folder")
    return root


def test_folder_names_are_matched_by_their_first_letters_case_free():
    assert [match_class(n) for n in FOLDERS] == list(range(6))
    assert [match_class(n) for n in EXPR_NAMES_6] == list(range(6))
    assert match_class("Anger") == match_class("angry") == 0 and match_class("Happy") == 3
    assert match_class("Neutral") is None and match_class("an") is None and match_class("Other") is None


def test_images_are_served_resized_with_their_class(tmp_path):
    ds = LsdImages(make_split(tmp_path, "train"), "train", size=32)
    assert len(ds) == 12 and ds.labels["expr"].tolist() == [k for k in range(6) for _ in range(2)]
    s = ds[5]  # class 2 (Fear), its second image
    assert s[PIXELS].dtype == torch.uint8 and s[PIXELS].shape == (3, 32, 32)
    assert int(s["expr"]) == 2 and bool(s["expr_valid"]) and int(s["index"]) == 5
    assert abs(float(s[PIXELS].float().mean()) - 61) < 2  # the value written for class 2, image 1


def test_bad_folders_are_named(tmp_path):
    make_split(tmp_path / "a", "val", folders=FOLDERS[:5])
    with pytest.raises(LsdError, match="no folder for Surprise"):
        class_folders(tmp_path / "a" / "val")
    make_split(tmp_path / "b", "val", folders=(*FOLDERS, "Neutral"))
    with pytest.raises(LsdError, match="Neutral: a folder of no class"):
        class_folders(tmp_path / "b" / "val")
    make_split(tmp_path / "c", "val", folders=(*FOLDERS, "anger"))
    with pytest.raises(LsdError, match="a second folder for Anger"):
        class_folders(tmp_path / "c" / "val")
    with pytest.raises(LsdError, match="no such folder"):
        LsdImages(tmp_path / "a", "train", 32)
    root = make_split(tmp_path / "d", "val", per_class=1)
    (root / "val" / "Fear" / "000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(LsdError, match="000.jpg: not a readable image"):
        LsdImages(root, "val", 32)[2]


def test_training_views_are_drawn_from_the_sample_seed(tmp_path):
    root = make_split(tmp_path, "train", per_class=1, size=48)
    img = cv2.imread(str(root / "train" / "Fear" / "000.jpg"))
    img[:, :24] = 0  # a left half that a flip moves
    cv2.imwrite(str(root / "train" / "Fear" / "000.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 100])
    ds = LsdImages(root, "train", size=32, flip=0.5, resize_ratio=1.25)
    views = [ds[(2, seed)][PIXELS] for seed in range(12)]
    assert all(v.shape == (3, 32, 32) for v in views)
    assert torch.equal(ds[(2, 7)][PIXELS], views[7])  # same seed, same view (any worker, a resumed run)
    left_dark = [bool(v[:, :, :4].float().mean() < v[:, :, -4:].float().mean()) for v in views]
    assert 0 < sum(left_dark) < 12  # some flipped, some not
    assert len({tuple(v.flatten().tolist()) for v in views}) > 2  # the crops move
    plain = LsdImages(root, "train", size=32, flip=0.0, resize_ratio=1.0)
    assert torch.equal(plain[(2, 3)][PIXELS], plain[2][PIXELS])  # no crop room, no flip: the eval view


def test_a_split_of_bare_images_is_unlabelled_and_names_are_relative(tmp_path):
    root = make_split(tmp_path, "val")
    ds = LsdImages(root, "val", 16)
    assert ds.names()[:2] == ["ANGRY/000.jpg", "ANGRY/001.jpg"] and ds.labelled().all()
    test = tmp_path / "test"
    test.mkdir()
    for j in range(3):
        cv2.imwrite(str(test / f"{j}.png"), np.zeros((20, 20, 3), np.uint8))
    unl = LsdImages(tmp_path, "test", 16)
    assert unl.names() == ["0.png", "1.png", "2.png"] and not unl.labelled().any()
    assert int(unl[1]["expr"]) == -1 and not bool(unl[1]["expr_valid"])


def test_the_epoch_sampler_draws_lsd_images_class_balanced(tmp_path):
    from data.sampling import EpochSampler, sampling_weights

    root = make_split(tmp_path, "train", per_class=1)
    (root / "train" / "Fear" / "001.jpg").write_bytes((root / "train" / "Fear" / "000.jpg").read_bytes())
    (root / "train" / "Fear" / "002.jpg").write_bytes((root / "train" / "Fear" / "000.jpg").read_bytes())
    ds = LsdImages(root, "train", 16)
    plain, balanced = sampling_weights(ds), sampling_weights(ds, balance_expr=True)
    assert np.allclose(plain, 1.0)
    per_class = np.bincount(ds.labels["expr"], weights=balanced)
    assert np.allclose(per_class, per_class[0])  # every class the same share
    index, seeds = EpochSampler(plain, 8, seed=1).draws()
    assert len(set(index.tolist())) == 8 and len(seeds) == 8
