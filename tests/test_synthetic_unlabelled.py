"""The opt-in pool of unlabelled faces of the mini dataset (``python -m tools.synthetic ... --unlabelled-faces N``,
tools/synthetic/unlabelled.py): the files and their hidden truth, the default output untouched, determinism, no
re-rendering of an existing dataset, refusal of what another run left at those paths, and that the truth can be
read back from the pictures by a classifier fitted on the videos' labelled crops."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import added_to_copy, digests, mtimes, run_synthetic

from data.annotations import read_label_file
from tasks import EXPR_NAMES_8, TRAIN_SPLIT
from tools.synthetic import lsd, read_unlabelled_truth, unlabelled
from tools.synthetic.cli import build_parser
from tools.synthetic.mapping import AU_NAMES_ALL, EXPR_AU_AFFINITY, EXPR_PRIOR

N = 60
ARGS = ["--seed", "0", "--quick", "--unlabelled-faces", str(N)]
POOL = (unlabelled.FOLDER, unlabelled.TRUTH)


def run(out: Path, *extra: str) -> str:
    """Run the command line on ``out``; its stdout."""
    return run_synthetic(out, *ARGS, *extra)


@pytest.fixture(scope="module")
def fresh(mini_quick_extras) -> Path:
    """A quick dataset generated from nothing with the pool and, in the same command, a small LSD set."""
    return mini_quick_extras


@pytest.fixture(scope="module")
def added(mini_quick, tmp_path_factory) -> tuple[Path, dict[str, int], str]:
    """A copy of the session's quick dataset that the pool was then added to (``helpers.added_to_copy``)."""
    return added_to_copy(mini_quick, tmp_path_factory.mktemp("unlabelled_added") / "mini", *ARGS)


def test_the_pool_and_its_truth(added):
    root = added[0]
    files = sorted((root / unlabelled.FOLDER).iterdir())
    assert [p.name for p in files] == [f"{i:05d}.jpg" for i in range(N)]  # nothing but the faces in the folder
    for p in files[:5]:
        assert cv2.imread(str(p)).shape == (112, 112, 3)
    meta = json.loads((root / unlabelled.TRUTH).read_text())  # beside the folder, not in it
    assert (meta["generator"], meta["seed"], meta["quick"], meta["n"]) == (unlabelled.GENERATOR, 0, True, N)
    assert meta["expr_names"] == list(EXPR_NAMES_8) and meta["au_names"] == list(AU_NAMES_ALL)
    faces = meta["faces"]
    assert list(faces) == [p.name for p in files]
    expr = np.array([f["expr"] for f in faces.values()])
    assert set(expr) <= set(range(8)) and len(set(expr)) == 8  # 8-class codes, Other = 7, all seen in 60
    assert {f["identity"] for f in faces.values()} == {0, 1}
    assert all(len(f["aus"]) == len(AU_NAMES_ALL) and set(f["aus"]) <= {0, 1} for f in faces.values())
    assert all(abs(f["valence"]) <= unlabelled.VALENCE_MAX and round(f["valence"], 3) == f["valence"]
               for f in faces.values())
    assert meta["expr_counts"] == dict(zip(EXPR_NAMES_8, np.bincount(expr, minlength=8).tolist()))
    assert meta["style"]["jpeg_quality"] == 95
    truth = read_unlabelled_truth(root)
    assert [t.expr for t in truth.values()] == expr.tolist() and truth["00007.jpg"].record() == faces["00007.jpg"]
    assert not list(root.glob(".*tmp*"))  # the build folder was renamed away


def test_classes_follow_the_prior_and_aus_the_class(added):
    draws = [unlabelled.draw_truth(0, i)[0] for i in range(3000)]  # labels only: no rendering
    freq = np.bincount([t.expr for t in draws], minlength=8) / len(draws)
    tv = 0.5 * np.abs(freq - np.array(EXPR_PRIOR)).sum()
    pool = np.bincount([t.expr for t in read_unlabelled_truth(added[0]).values()], minlength=8) / N
    tv_pool = 0.5 * np.abs(pool - np.array(EXPR_PRIOR)).sum()
    print(f"class distribution vs EXPR_PRIOR: total variation {tv:.3f} over 3000 draws, {tv_pool:.3f} over the pool")
    assert tv < 0.04 and tv_pool < 0.25
    aus = np.array([t.aus for t in draws])
    cls = np.array([t.expr for t in draws])
    member = np.array([[au in EXPR_AU_AFFINITY[c] for au in AU_NAMES_ALL] for c in cls])
    assert abs(aus[member].mean() - 0.75) < 0.03 and abs(aus[~member].mean() - 0.25) < 0.03  # as labels draws them
    assert [t.record() for t in draws[:N]] == list(json.loads((added[0] / unlabelled.TRUTH).read_text())["faces"]
                                                   .values())


def test_without_the_flag_only_the_options_paths_differ(fresh, mini_quick):
    assert build_parser().parse_args(["--out", "x"]).unlabelled_faces == 0
    assert not any((mini_quick / p).exists() for p in POOL)  # the session's dataset was made without the flag
    assert digests(fresh, skip=(*POOL, "lsd")) == digests(mini_quick)
    assert (fresh / "lsd" / "meta.json").is_file()  # --lsd in the same command
    assert json.loads((fresh / "lsd" / "meta.json").read_text())["per_class"] == 20


def test_same_seed_same_bytes(fresh, added):
    assert digests(fresh / unlabelled.FOLDER) == digests(added[0] / unlabelled.FOLDER)
    assert (fresh / unlabelled.TRUTH).read_bytes() == (added[0] / unlabelled.TRUTH).read_bytes()
    # each face has its own stream: made alone and out of order, it is the file's bytes
    path = added[0] / unlabelled.FOLDER / f"{N - 1:05d}.jpg"
    assert unlabelled.unlabelled_jpeg(0, N - 1)[0] == path.read_bytes()
    assert unlabelled.unlabelled_jpeg(1, N - 1)[0] != path.read_bytes()


def test_an_existing_dataset_is_not_rerendered_nor_an_existing_pool_rewritten(added):
    root, before, printed = added
    assert "videos not re-rendered" in printed and f"{N} unlabelled faces written" in printed
    assert mtimes(root / "videos") == before
    pool = mtimes(root)
    again = run(root)
    assert "already there; nothing written" in again and mtimes(root) == pool


def test_what_another_run_left_is_refused_and_left_alone(added, tmp_path):
    root = added[0]
    pool = digests(root)
    with pytest.raises(SystemExit, match=r"unlabelled_faces.*not a complete pool.*n 60 \(asked: 7\)"):
        run(root, "--unlabelled-faces", "7", "--lsd")  # refused before the LSD set is made either
    assert digests(root) == pool and not (root / "lsd").exists()
    for stray in (tmp_path / "a" / unlabelled.FOLDER / "notes.txt", tmp_path / "b" / unlabelled.TRUTH):
        stray.parent.mkdir(parents=True)
        stray.write_text("mine")
        top = stray.parent if stray.name == "notes.txt" else stray
        with pytest.raises(SystemExit, match=str(top.parent / unlabelled.FOLDER)):
            run(top.parent)
        assert [p.name for p in top.parent.iterdir()] == [top.name] and stray.read_text() == "mine"
    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text(json.dumps({"generator": "tools.synthetic", "seed": 1, "quick": True}))
    with pytest.raises(SystemExit, match="holds another mini dataset"):
        run(other)
    assert [p.name for p in other.iterdir()] == ["meta.json"]
    with pytest.raises(SystemExit, match="at least 0"):
        run(other, "--unlabelled-faces", "-1")


def test_an_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    real = unlabelled.unlabelled_jpeg

    def failing(seed: int, index: int):
        if index == 3:
            raise KeyboardInterrupt
        return real(seed, index)

    monkeypatch.setattr(unlabelled, "unlabelled_jpeg", failing)
    with pytest.raises(KeyboardInterrupt):
        unlabelled.generate_unlabelled(tmp_path, 0, True, 10)
    assert list(tmp_path.iterdir()) == []


def chroma(img: np.ndarray) -> np.ndarray:
    """(Cb/Y, Cr/Y) of the centre of the face (BGR crop): the class hue, whatever the brightness."""
    ycrcb = cv2.cvtColor(img, cv2.COLOR_BGR2YCrCb).astype(np.float64)[40:80, 36:76]
    y = max(ycrcb[..., 0].mean(), 1.0)
    return np.array([ycrcb[..., 2].mean() - 128, ycrcb[..., 1].mean() - 128]) / y


def training_crops(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Chroma and 8-class EXPR code of the training tracks' crops (faces fully inside their frame)."""
    sizes = {t["name"]: (v["width"], v["height"]) for v in json.loads((root / "meta.json").read_text())["videos"]
             for t in v["tracks"]}
    x, y = [], []
    for path in sorted((root / "annotations/abaw3/EXPR_Classification_Challenge/Train_Set").glob("*.txt")):
        labels = read_label_file(path, TRAIN_SPLIT, "EXPR")
        lm = np.load(root / "truth" / f"{path.stem}.npy")
        inside = np.all((lm >= 0) & (lm <= np.array(sizes[path.stem]) - 1), axis=(1, 2))
        for i in np.flatnonzero(labels.valid[:len(inside)] & inside[:len(labels.valid)]):
            x.append(chroma(cv2.imread(str(root / "cropped_aligned" / path.stem / f"{i + 1:05d}.jpg"))))
            y.append(int(labels.values[i]))
    return np.stack(x), np.array(y)


def test_the_truth_is_recoverable_from_the_pictures(added):
    root = added[0]
    x_train, y_train = training_crops(root)
    seen = np.unique(y_train)
    means = np.stack([x_train[y_train == k].mean(0) for k in seen])
    truth = read_unlabelled_truth(root)
    x = np.stack([chroma(cv2.imread(str(root / unlabelled.FOLDER / name))) for name in truth])
    pred = seen[np.argmin(((x[:, None] - means[None]) ** 2).sum(-1), axis=1)]
    acc = float((pred == np.array([t.expr for t in truth.values()])).mean())
    print(f"nearest class mean on face chroma, video crops ({len(y_train)}, classes {seen.tolist()}) → pool: "
          f"accuracy {acc:.3f} over {len(truth)} faces")
    assert acc >= 0.8
    # valence → brightness: the face's luminance follows the hidden valence
    luma = [cv2.imread(str(root / unlabelled.FOLDER / name), cv2.IMREAD_GRAYSCALE)[40:80, 36:76].mean()
            for name in truth]
    r = float(np.corrcoef(luma, [t.valence for t in truth.values()])[0, 1])
    print(f"face luminance vs valence: r = {r:.3f}")
    assert r > 0.8
    assert lsd.dataset_matches(root, 0, True)  # the pool sits beside the dataset it was added to
