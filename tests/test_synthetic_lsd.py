"""The opt-in LSD set of the mini dataset (``python -m tools.synthetic ... --lsd``, tools/synthetic/lsd.py): the
folders data.lsd reads, the default output untouched, determinism, no re-rendering of an existing dataset,
refusal of someone else's DIR/lsd, and that a classifier fitted on the synthetic images works on the real ones."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import added_to_copy, digests, mtimes, run_synthetic

from data.lsd import LsdImages, class_folders
from tasks import EXPR_NAMES_6, TRAIN_SPLIT, VAL_SPLIT
from tools.synthetic import lsd

PER_CLASS = 20
ARGS = ["--seed", "0", "--quick", "--lsd", "--lsd-per-class", str(PER_CLASS)]


def run(out: Path, *extra: str) -> str:
    """Run the command line on ``out``; its stdout."""
    return run_synthetic(out, *ARGS, *extra)


@pytest.fixture(scope="module")
def fresh(mini_quick_extras) -> Path:
    """A quick dataset generated from nothing with --lsd (and, in the same command, the unlabelled pool)."""
    return mini_quick_extras


@pytest.fixture(scope="module")
def added(mini_quick, tmp_path_factory) -> tuple[Path, dict[str, int], str]:
    """A copy of the session's quick dataset that --lsd was then run on (``helpers.added_to_copy``)."""
    return added_to_copy(mini_quick, tmp_path_factory.mktemp("lsd_added") / "mini", *ARGS)


def test_folders_are_read_by_data_lsd(added):
    root = added[0] / "lsd"
    for split in ("train", "val"):
        folders = class_folders(root / split)
        assert sorted(folders) == list(range(6)) and folders[0].name == "ANGRE"  # misspelt, matched by prefix
        assert [f.name for _, f in sorted(folders.items())] == list(lsd.LSD_FOLDERS)
    train, val = LsdImages(root, "train", 112), LsdImages(root, "val", 112)
    assert np.bincount(train.labels["expr"], minlength=6).tolist() == [PER_CLASS] * 6
    meta = json.loads((root / "meta.json").read_text())
    counts = np.bincount(val.labels["expr"], minlength=6)
    assert counts.tolist() == [meta["counts"]["val"][f] for f in lsd.LSD_FOLDERS] and counts.min() > 0
    assert meta["seed"] == 0 and meta["quick"] and meta["style"]["jpeg_quality"] == lsd.JPEG_QUALITY
    assert tuple(train[0]["pixels"].shape) == (3, 112, 112)
    # a val image is the byte copy of the crop its name points to
    name = val.names()[-1]
    track, frame = Path(name).stem.rsplit("_", 1)
    assert (root / "val" / name).read_bytes() == (added[0] / "cropped_aligned" / track / f"{frame}.jpg").read_bytes()


def test_val_takes_validation_tracks_first_and_tops_up_a_short_class(added):
    root = added[0]
    meta = json.loads((root / "lsd" / "meta.json").read_text())
    val_tracks = {p.stem for p in (root / "annotations/abaw2021/EXPR_Set/Validation_Set").glob("*.txt")}
    have = lsd.labelled_crops(root, VAL_SPLIT)
    spare = lsd.labelled_crops(root, TRAIN_SPLIT)
    for k, folder in enumerate(lsd.LSD_FOLDERS):
        files = sorted((root / "lsd" / "val" / folder).glob("*.jpg"))
        from_val = [f for f in files if f.stem.rsplit("_", 1)[0] in val_tracks]
        assert len(from_val) == min(len(have[k]), lsd.VAL_MAX_PER_CLASS)
        topped = len(files) - len(from_val)
        assert topped == (min(lsd.VAL_MIN_PER_CLASS - len(from_val), len(spare[k]))
                          if len(from_val) < lsd.VAL_MIN_PER_CLASS else 0)
        assert meta["val_sources"][folder] == {VAL_SPLIT: len(from_val), TRAIN_SPLIT: topped}
    # seed 0's quick validation tracks lack some classes: the top-up is what gives every class images
    assert sum(meta["val_sources"][f][TRAIN_SPLIT] for f in lsd.LSD_FOLDERS) > 0
    picked = lsd.evenly(list(range(1000)), 100)
    assert len(picked) == 100 and picked[0] == 0 and picked[-1] == 999 and set(np.diff(picked)) <= {10, 11}


def test_without_the_flag_only_lsd_differs(fresh, mini_quick):
    assert not (mini_quick / "lsd").exists()  # the session's dataset was made without --lsd
    assert digests(fresh, skip=("lsd", "unlabelled_faces", "unlabelled_faces_truth.json")) == digests(mini_quick)
    assert (fresh / "lsd" / "meta.json").is_file()


def test_same_seed_same_bytes(fresh, added):
    assert digests(fresh / "lsd") == digests(added[0] / "lsd")
    # each image has its own stream: made alone and out of order, it is the file's bytes
    path = added[0] / "lsd" / "train" / "FEAR" / f"{PER_CLASS - 1:05d}.jpg"
    assert lsd.synthetic_jpeg(0, 2, PER_CLASS - 1) == path.read_bytes()
    assert lsd.synthetic_jpeg(1, 2, PER_CLASS - 1) != path.read_bytes()


def test_an_existing_dataset_is_not_rerendered_nor_an_existing_set_rewritten(added):
    root, before, printed = added
    assert "videos not re-rendered" in printed and "FEAR" in printed
    assert mtimes(root / "videos") == before
    sets = mtimes(root / "lsd")
    again = run(root)
    assert "already there; nothing written" in again and mtimes(root / "lsd") == sets
    assert mtimes(root / "videos") == before


def test_a_foreign_lsd_folder_is_refused_and_left_alone(added, tmp_path):
    root = added[0]
    sets = digests(root / "lsd")
    with pytest.raises(SystemExit, match=r"lsd exists and is not a complete LSD set.*per_class 20 \(asked: 7\)"):
        run(root, "--lsd-per-class", "7")  # the later flag wins
    assert digests(root / "lsd") == sets
    stray = tmp_path / "lsd" / "notes.txt"
    stray.parent.mkdir()
    stray.write_text("mine")
    with pytest.raises(SystemExit, match=str(tmp_path / "lsd")):
        run(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["lsd"] and stray.read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text(json.dumps({"generator": "tools.synthetic", "seed": 1, "quick": True}))
    with pytest.raises(SystemExit, match="holds another mini dataset"):
        run(other)
    assert [p.name for p in other.iterdir()] == ["meta.json"]


def chroma(path: Path) -> np.ndarray:
    """(Cb/Y, Cr/Y) of the centre of the face: the class hue, whatever the brightness."""
    ycrcb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2YCrCb).astype(np.float64)[40:80, 36:76]
    y = max(ycrcb[..., 0].mean(), 1.0)
    return np.array([ycrcb[..., 2].mean() - 128, ycrcb[..., 1].mean() - 128]) / y


def features(root: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    ds = LsdImages(root, split, 112)
    return np.stack([chroma(p) for p, _ in ds.items]), ds.labels["expr"]


def macro_f1(pred: np.ndarray, true: np.ndarray) -> float:
    scores = []
    for k in np.unique(true):
        hit, said, truly = (pred == k) & (true == k), pred == k, true == k
        scores.append(2 * hit.sum() / (said.sum() + truly.sum()))
    return float(np.mean(scores))


def test_synthetic_training_transfers_to_the_real_frames(added):
    x_train, y_train = features(added[0] / "lsd", "train")
    x_val, y_val = features(added[0] / "lsd", "val")
    means = np.stack([x_train[y_train == k].mean(0) for k in range(len(EXPR_NAMES_6))])
    pred = np.argmin(((x_val[:, None] - means[None]) ** 2).sum(-1), axis=1)
    f1 = macro_f1(pred, y_val)
    print(f"nearest class mean on face chroma, synthetic → real: macro-F1 {f1:.3f} over {len(y_val)} images")
    assert f1 >= 0.6


def test_the_synthetic_style_differs_from_the_real_frames(added):
    root = added[0] / "lsd"
    x_train, y_train = features(root, "train")
    x_val, y_val = features(root, "val")
    # the magenta cast moves both chroma components up (identity 1 on some real frames moves Cb too)
    seen = [k for k in range(6) if (y_val == k).any()]
    shift = np.stack([x_train[y_train == k].mean(0) - x_val[y_val == k].mean(0) for k in seen])
    assert np.median(shift[:, 0]) > 0.005 and np.median(shift[:, 1]) > 0.015

    def sharpness(split: str) -> float:
        files = [p for p, _ in LsdImages(root, split, 112).items]
        return float(np.mean([cv2.Laplacian(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), cv2.CV_64F)[32:80, 32:80].var()
                              for p in files]))

    assert sharpness("train") < 0.5 * sharpness("val")  # blurred (and JPEG 30) against the crops' JPEG 95
