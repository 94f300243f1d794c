"""LSD predictions: the prediction file (write, read, check, score), image prediction by class name, validation
of an LSD run, and test_val_aff2.py --lsd / evaluate.py --edition lsd end to end."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from test_lsd import make_split

import evaluate
import test_val_aff2
from app import lsd_run
from app.lsd_run import class_columns, evaluate_images, predict_images
from app.submission import SubmissionError, check_lsd, read_lsd, score_lsd, write_lsd
from app.submission.lsd import lsd_scores
from data.lsd import LsdImages
from models.base import prepare_inputs
from models.registry import build_model
from tasks import EXPR_NAMES_6, EXPR_NAMES_7, OutputLayout, get_layout
from utils.dist import DistInfo
from utils.inputs import PIXELS, InputSpec
from utils.metrics import nan_to_none


def frame_model(layout: str = "lsd", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("resnet18", layout, input_spec=InputSpec.frame(size=32)).eval()


def labelled_split(root: Path, counts: tuple[int, ...]) -> Path:
    """ROOT/val with counts[k] images of class k (folders named as EXPR_NAMES_6); returns the split folder."""
    for k, n in enumerate(counts):
        d = root / "val" / EXPR_NAMES_6[k]
        d.mkdir(parents=True)
        for j in range(n):
            cv2.imwrite(str(d / f"{j}.png"), np.full((8, 8, 3), 40 * k + j, np.uint8))
    return root / "val"


# --- the file -----------------------------------------------------------------------------------------------


def test_the_file_round_trips_in_the_order_written(tmp_path):
    names = ["Fear/b.jpg", "ANGRY/a.jpg", "x.png"]
    path = write_lsd(tmp_path / "p.txt", names, np.array([2, 0, 5]))
    assert path.read_text(encoding="utf-8") == "image,expression\nFear/b.jpg,2\nANGRY/a.jpg,0\nx.png,5\n"
    assert read_lsd(path) == {"Fear/b.jpg": 2, "ANGRY/a.jpg": 0, "x.png": 5}
    assert not list(tmp_path.glob(".*"))  # no temporary file left
    with pytest.raises(SubmissionError, match="class 6 is not a code 0..5"):
        write_lsd(tmp_path / "q.txt", ["a.jpg"], [6])
    with pytest.raises(SubmissionError, match="cannot be written"):
        write_lsd(tmp_path / "q.txt", ["a,b.jpg"], [1])
    assert not (tmp_path / "q.txt").exists()


def test_read_and_check_errors_name_the_file_and_line(tmp_path):
    split = labelled_split(tmp_path, (1, 1, 1, 1, 1, 1))
    bad = tmp_path / "bad.txt"
    bad.write_text("image,expr\n"  # 1: header
                   "Anger/0.png,0\n"
                   "Disgust/0.png\n"  # 3: no class
                   "Fear/0.png,7\n"  # 4: outside 0-5
                   "Happiness/0.png,x\n"  # 5: not a number
                   "Anger/0.png,1\n"  # 6: twice
                   "Elsewhere/9.png,3\n")  # 7: not an image of the split
    with pytest.raises(SubmissionError, match=rf"^{bad}:1: header 'image,expr'"):
        read_lsd(bad)
    problems = [str(p) for p in check_lsd(bad, split)]
    assert problems[0].startswith(f"{bad}:1: header")
    assert problems[1] == f"{bad}:3: expected 'image,class', got 'Disgust/0.png'"
    assert problems[2].startswith(f"{bad}:4: Fear/0.png: class '7' is not a code 0..5")
    assert problems[3].startswith(f"{bad}:5: Happiness/0.png: class 'x'")
    assert problems[4] == f"{bad}:6: Anger/0.png listed twice (first at line 2)"
    assert problems[5].startswith(f"{bad}: no row for 5 image(s) of {split}: Disgust/0.png, Fear/0.png")
    assert problems[6] == f"{bad}:7: Elsewhere/9.png: not an image of {split}"
    assert len(problems) == 7
    bad.write_text("image,expression\nAnger/0.png,-1\n")
    with pytest.raises(SubmissionError, match=rf"^{bad}:2: Anger/0.png: class '-1'"):
        read_lsd(bad)
    with pytest.raises(SubmissionError, match="no such file"):
        read_lsd(tmp_path / "none.txt")


def test_the_score_is_the_macro_f1_of_the_six_classes_and_the_accuracy(tmp_path):
    split = labelled_split(tmp_path, (2, 2, 1, 1, 1, 1))
    true = [0, 0, 1, 1, 2, 3, 4, 5]
    pred = [0, 1, 1, 1, 2, 3, 5, 5]
    names = [p.relative_to(split).as_posix() for p, _ in LsdImages(tmp_path, "val", 8).items]
    assert LsdImages(tmp_path, "val", 8).labels["expr"].tolist() == true
    path = write_lsd(tmp_path / "p.txt", names[::-1], pred[::-1])  # any row order
    s = score_lsd(path, split)
    # by hand: F1 = 2tp / (2tp + fp + fn) per class
    per_class = [2 / 3, 4 / 5, 1.0, 1.0, 0.0, 2 / 3]
    assert s["edition"] == "lsd" and s["images"] == 8
    assert s["expr"]["per_class"] == pytest.approx(dict(zip(EXPR_NAMES_6, per_class)))
    assert s["expr"]["f1"] == pytest.approx(sum(per_class) / 6) == s["expr"]["score"] == s["total"]
    assert s["expr"]["accuracy"] == pytest.approx(6 / 8)
    # a class neither true nor predicted is left out of the macro average (scikit-learn's), and shown as n/a
    only = lsd_scores(np.array([0, 1, 1]), np.array([0, 1, 0]))
    assert math.isnan(only["expr"]["per_class"]["Fear"])
    assert only["expr"]["f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)
    # a file that misses an image is not scored
    write_lsd(path, names[1:], pred[1:])
    with pytest.raises(SubmissionError, match="no row for 1 image"):
        score_lsd(path, split)


# --- prediction ---------------------------------------------------------------------------------------------


def plain_logits(model: torch.nn.Module, ds: LsdImages, indices) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(prepare_inputs(model, {PIXELS: ds[int(i)][PIXELS][None]}, torch.device("cpu")))
                          for i in indices])


def test_predict_images_is_the_argmax_of_a_plain_loop(tmp_path):
    ds = LsdImages(make_split(tmp_path, "val"), "val", 32)
    model = frame_model()
    order = [7, 0, 11, 3, 3, 5]
    got = predict_images(model, ds, order, batch_size=4)
    z = plain_logits(model, ds, order)
    assert got["EXPR"].tolist() == z.argmax(1).tolist()
    assert np.allclose(got["prob"], z.softmax(1).numpy(), atol=1e-5)
    assert got["prob"].shape == (6, 6) and not model.training
    assert predict_images(model, ds, [])["prob"].shape == (0, 6)


def test_an_8_class_model_decides_the_best_of_the_six_by_name(tmp_path):
    ds = LsdImages(make_split(tmp_path, "val", per_class=1), "val", 32)
    model = frame_model("abaw3")  # Neutral, Anger, ..., Surprise, Other (+ AU and VA blocks)
    layout = get_layout("abaw3")
    assert class_columns(layout) == [1, 2, 3, 4, 5, 6]
    z = plain_logits(model, ds, range(len(ds)))[:, layout.slices["expr"]]
    got = predict_images(model, ds, batch_size=4)
    assert got["EXPR"].tolist() == z[:, 1:7].argmax(1).tolist()
    assert np.allclose(got["prob"], z[:, 1:7].softmax(1).numpy(), atol=1e-5)
    # Neutral and Other far ahead, Surprise next: Surprise (code 5) wins, never Neutral's column 0
    with torch.no_grad():
        model.head[1].weight.zero_()
        model.head[1].bias.zero_()
        bias = model.head[1].bias[layout.slices["expr"]]
        bias[0], bias[7], bias[6] = 10.0, 9.0, 5.0
    assert predict_images(model, ds)["EXPR"].tolist() == [5] * len(ds)
    lacking = OutputLayout("no_surprise", ("expr",), 6, EXPR_NAMES_7[:6])
    with pytest.raises(ValueError, match="no class Surprise"):
        class_columns(lacking)


def test_evaluate_images_scores_as_the_written_file_and_merges_ranks(tmp_path, monkeypatch):
    split = make_split(tmp_path, "val", per_class=3) / "val"
    ds = LsdImages(tmp_path, "val", 32)
    model = frame_model(seed=1)
    args = argparse.Namespace(eval_batch_size=5, workers=0, amp="none", channels_last=False, progress=False)
    one = DistInfo(0, 1, 0, torch.device("cpu"))
    indices = np.arange(len(ds))
    scores = evaluate_images(model, ds, indices, "lsd", args, one)
    path = write_lsd(tmp_path / "p.txt", ds.names(), predict_images(model, ds)["EXPR"])
    from_file = score_lsd(path, split)
    assert set(scores) == {"edition", "expr", "total"} and scores["edition"] == "lsd"
    assert scores["expr"] == pytest.approx({k: from_file["expr"][k] for k in ("f1", "accuracy", "score")})
    assert scores["total"] == pytest.approx(from_file["total"])
    # rank 0 of 2: its share predicted here, rank 1's arrives through the gather; the same numbers
    other = (indices[1::2], predict_images(model, ds, indices[1::2])["EXPR"])
    monkeypatch.setattr(lsd_run.dist, "all_gather_objects", lambda mine: [mine, other])
    assert evaluate_images(model, ds, indices, "lsd", args, DistInfo(0, 2, 0, torch.device("cpu"))) == scores
    with pytest.raises(ValueError, match="not abaw3"):
        evaluate_images(model, ds, indices, "abaw3", args, one)


# --- end to end ---------------------------------------------------------------------------------------------


def save_checkpoint(path: Path) -> Path:
    """A train.py-like best.pth of a small random frame model with layout lsd."""
    model = frame_model(seed=2)
    torch.save({"model": model.state_dict(), **model.settings()}, path)
    return path


def test_val_aff2_lsd_end_to_end_with_evaluate(tmp_path, capsys):
    root = make_split(tmp_path / "lsd", "val")
    ckpt = save_checkpoint(tmp_path / "best.pth")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    run = ["--checkpoint", str(ckpt), "--lsd", str(root), "--out", str(out), "--batch-size", "5",
           "--device", "cpu", "--workers", "0"]
    assert test_val_aff2.main(run + ["--split", "val"]) == 0
    printed = capsys.readouterr().out
    assert "macro-F1 (score)" in printed and "Surprise" in printed and "checker: 0 problem(s)" in printed
    pred, split = out / "predictions.txt", root / "val"
    assert pred.read_text().splitlines()[0] == "image,expression"
    assert list(read_lsd(pred)) == LsdImages(root, "val", 32).names()
    assert json.loads((out / "scores.json").read_text()) == nan_to_none(score_lsd(pred, split))
    assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "notes.txt").read_text() == "mine"

    ev = ["--annotations", str(split), "--edition", "lsd"]
    assert evaluate.main(["--pred", str(pred), *ev, "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text()) == json.loads((out / "scores.json").read_text())
    assert evaluate.main(["--check", str(pred), *ev]) == 0
    broken = tmp_path / "broken.txt"
    broken.write_text("\n".join(pred.read_text().splitlines()[:-1]) + "\n")  # the last image missing
    capsys.readouterr()
    assert evaluate.main(["--check", str(broken), *ev]) == 1
    assert f"{broken}: no row for 1 image(s)" in capsys.readouterr().out
    assert evaluate.main(["--pred", str(broken), *ev]) == 2
    assert evaluate.main(["--check", str(tmp_path / "none.txt"), *ev]) == 2
    with pytest.raises(SystemExit):
        evaluate.main(["--compare", str(pred), str(pred), "--edition", "lsd"])

    # an unlabelled split: predictions only; the earlier run's scores and plot go, the user's file stays
    test = root / "test"
    test.mkdir()
    for j in range(3):
        cv2.imwrite(str(test / f"{j}.png"), np.full((20, 20, 3), 60 * j, np.uint8))
    assert test_val_aff2.main(run + ["--split", "test"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "predictions.txt"]
    assert list(read_lsd(pred)) == ["0.png", "1.png", "2.png"]
    assert evaluate.main(["--check", str(pred), "--annotations", str(test), "--edition", "lsd"]) == 0
    assert evaluate.main(["--pred", str(pred), "--annotations", str(test), "--edition", "lsd"]) == 2


def test_val_aff2_lsd_refuses_what_it_cannot_do(tmp_path, capsys):
    root = make_split(tmp_path / "lsd", "val", per_class=1)
    ckpt = save_checkpoint(tmp_path / "best.pth")
    base = ["--lsd", str(root), "--device", "cpu", "--workers", "0"]
    for flags in (["--split", "val"], ["--checkpoint", str(ckpt), "--split", "../x"],
                  ["--checkpoint", str(ckpt), "--video", "v.mp4"]):
        with pytest.raises(SystemExit) as e:
            test_val_aff2.main(base + flags)
        assert e.value.code == 2
    with pytest.raises(SystemExit):  # a database split other than val/test
        test_val_aff2.main(["--checkpoint", str(ckpt), "--split", "train"])
    inside = root / "val" / "out"
    assert test_val_aff2.main(base + ["--checkpoint", str(ckpt), "--out", str(inside)]) == 2
    assert "inside the split folder" in capsys.readouterr().err and not inside.exists()
    assert test_val_aff2.main(base + ["--checkpoint", str(ckpt), "--split", "nowhere", "--out",
                                      str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    not_a_ckpt = tmp_path / "x.pth"
    torch.save({"weights": 1}, not_a_ckpt)
    assert test_val_aff2.main(base + ["--checkpoint", str(not_a_ckpt), "--out", str(tmp_path / "o")]) == 2
    assert str(not_a_ckpt) in capsys.readouterr().err
