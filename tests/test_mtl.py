"""The ABAW4 multi-task (MTL) edition: s-Aff-Wild2 annotation files as labels, the P score, and the MTL
submission file written by test_val_aff2.py, checked and scored by evaluate.py."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_db import labels_for

import evaluate
import test_val_aff2
from app.split_run import MTL_FILE, PredictError, check_mtl_serves
from app.submission import (
    check_submission,
    expected_for_check,
    labels_from_array,
    read_predictions,
    write_mtl,
)
from app.submission.score import mtl_edition
from data import build_plan
from data.annotations import MTL_FILES, MTL_HEADER, fit_length, read_mtl_file
from models.registry import build_model
from tasks import AU_NAMES_12, EDITIONS, EXPR_NAMES_7, EXPR_NAMES_8, VA_NAMES, VAL_SPLIT, OutputLayout, get_layout
from tools import baseline
from utils.inputs import InputSpec
from utils.metrics import score

# Hand-made predictions and labels: four scored frames and one invalid one (its wrong prediction must not count).
#   valence: equal → CCC 1; arousal: the labels shifted by +0.25 → CCC 0.125 / 0.1875 = 2/3; VA = 5/6
#   EXPR labels 0,1,1,7 predicted 0,1,7,7 → F1 of 0: 1, of 1: 2/3, of 7: 2/3 → macro 7/9
#   AU1 labels 1,1,0,0 predicted 1,0,0,0 → F1 2/3; the other 11 AUs exact → mean (2/3 + 11) / 12 = 35/36
# P = 5/6 + 7/9 + 35/36 = 93/36.
IMAGES = {"vidA": [1, 2], "vidB_left": [3, 7, 9]}  # frame 9 of vidB_left: every label invalid
V_TRUE = [0.1, 0.2, 0.3, 0.4, -5.0]
A_TRUE = [0.0, 0.5, 0.0, 0.5, -5.0]
A_PRED = [0.25, 0.75, 0.25, 0.75, 0.9]
E_TRUE, E_PRED = [0, 1, 1, 7, -1], [0, 1, 7, 7, 3]
AU1_TRUE, AU1_PRED, AU_REST = [1, 1, 0, 0, -1], [1, 0, 0, 0, 1], [1, 0, 1, 0, -1]
P_HAND = 93 / 36


def au_rows(first: list[int], rest: list[int]) -> np.ndarray:
    return np.array([[f] + [r] * 11 for f, r in zip(first, rest)])


def hand_rows() -> tuple[np.ndarray, np.ndarray]:
    """(labels, predictions) as (5, 15) rows V, A, EXPR, 12 AUs in the order of IMAGES."""
    truth = np.column_stack([V_TRUE, A_TRUE, E_TRUE, au_rows(AU1_TRUE, AU_REST)])
    pred_rest = [1 if r < 0 else r for r in AU_REST]
    pred = np.column_stack([np.clip(V_TRUE, -1, 1), A_PRED, E_PRED, au_rows(AU1_PRED, pred_rest)])
    return truth, pred


def per_track(rows: np.ndarray) -> dict[str, np.ndarray]:
    """{track: (last listed frame, 15) rows}, frames not listed filled with invalid markers."""
    out, i = {}, 0
    for track, frames in IMAGES.items():
        block = np.tile(np.array([-5.0, -5.0, -1] + [-1] * 12), (max(frames), 1))
        for f in frames:
            block[f - 1] = rows[i]
            i += 1
        out[track] = block
    return out


def mtl_text(rows: np.ndarray) -> str:
    lines, i = [MTL_HEADER], 0
    for track, frames in IMAGES.items():
        for f in frames:
            v, a, e, *aus = rows[i]
            lines.append(f"{track}/{f:05d}.jpg,{v:.3f},{a:.3f},{int(e)}," + ",".join(str(int(x)) for x in aus))
            i += 1
    return "\n".join(lines) + "\n"


def as_preds(rows: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
    """{task: {track: values}} for write_mtl / score(); unlisted frames get a harmless valid value."""
    tracks = per_track(rows)
    fill = {"VA": lambda b: np.clip(b[:, 0:2], -1, 1), "EXPR": lambda b: np.maximum(b[:, 2], 0).astype(int),
            "AU": lambda b: np.maximum(b[:, 3:], 0).astype(int)}
    return {task: {t: f(b) for t, b in tracks.items()} for task, f in fill.items()}


def test_abaw4_is_the_mtl_edition():
    ed = EDITIONS["abaw4"]
    assert (ed.expr_names, ed.au_names) == (EXPR_NAMES_8, AU_NAMES_12)
    assert ed.expr_weights == ed.au_weights == (1.0, 0.0)
    assert ed.submission == "mtl"
    others = {n: e.submission for n, e in EDITIONS.items() if n != "abaw4"}
    assert others == {"abaw2020": "per-video", "abaw2021": "per-video", "abaw3": "per-video", "abaw5": "single-file",
                      "lsd": "lsd"}


def test_p_score_on_hand_made_values():
    truth, pred = hand_rows()
    truths = {task: {t: labels_from_array(t, task, VAL_SPLIT, names, b[:, cols], "x")
                     for t, b in per_track(truth).items()}
              for task, names, cols in (("VA", VA_NAMES, slice(0, 2)), ("EXPR", EXPR_NAMES_8, 2),
                                        ("AU", AU_NAMES_12, slice(3, None)))}
    out = score(as_preds(pred), truths, "abaw4")
    assert out["edition"] == "abaw4"
    assert out["va"]["ccc_valence"] == pytest.approx(1.0) and out["va"]["ccc_arousal"] == pytest.approx(2 / 3)
    assert out["va"]["score"] == pytest.approx(5 / 6)
    assert out["expr"]["score"] == pytest.approx(7 / 9)
    assert out["au"]["per_au"]["AU1"] == pytest.approx(2 / 3) and out["au"]["score"] == pytest.approx(35 / 36)
    assert out["total"] == pytest.approx(P_HAND, abs=1e-12)
    assert score(as_preds(pred), truths, "abaw3")["total"] == pytest.approx(P_HAND, abs=1e-12)  # same P
    assert score(as_preds(pred), truths, "abaw2021")["total"] != pytest.approx(P_HAND)  # 7 classes, accuracy


def test_mtl_file_written_read_checked_and_scored(tmp_path, capsys):
    truth, pred = hand_rows()
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / MTL_FILES[VAL_SPLIT]).write_text(mtl_text(truth))
    sub = write_mtl(tmp_path / "sub.txt", as_preds(pred), IMAGES)
    assert sub.read_text() == mtl_text(pred)  # header and one row per listed image, in order

    back = read_predictions(sub, "abaw4")
    for task, want in as_preds(pred).items():
        for track, frames in IMAGES.items():
            k = np.array(frames) - 1
            np.testing.assert_allclose(back[task][track].values[k], want[track][k])
            assert back[task][track].valid[k].all()
    assert check_submission(sub, "abaw4", expected_for_check(sub, ann)) == []

    assert evaluate.main(["--check", str(sub), "--annotations", str(ann), "--edition", "abaw4"]) == 0
    assert "0 problems" in capsys.readouterr().out
    assert evaluate.main(["--pred", str(sub), "--annotations", str(ann), "--edition", "abaw4",
                          "--json", str(tmp_path / "s.json")]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["edition"] == "abaw4" and scores["total"] == pytest.approx(P_HAND, abs=1e-9)

    lines = sub.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",2"  # AU26 = 2
    del lines[3]  # vidB_left/00003.jpg
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(lines) + "\n")
    assert evaluate.main(["--check", str(bad), "--annotations", str(ann), "--edition", "abaw4"]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:3: AU26 2 is not 0 or 1" in out
    assert "track vidB_left: 1 expected rows missing (first vidB_left/00003.jpg)" in out


def test_an_mtl_file_is_scored_with_an_edition_that_can_score_it(caplog):
    assert mtl_edition("abaw4") is EDITIONS["abaw4"] and mtl_edition("abaw3") is EDITIONS["abaw3"]
    with caplog.at_level(logging.WARNING):
        assert mtl_edition("abaw2021").name == "abaw3"
    assert "scored with the abaw3 metrics, not abaw2021's" in caplog.text


def test_labels_of_a_multi_task_file_may_end_before_the_video(tmp_path, caplog):
    f = tmp_path / MTL_FILES[VAL_SPLIT]
    f.write_text(f"{MTL_HEADER}\nvid/00003.jpg,0.5,0.5,2," + ",".join(["1"] * 12) + "\n")
    expr = read_mtl_file(f, VAL_SPLIT)["EXPR"]["vid"]
    with caplog.at_level(logging.INFO):
        fitted = fit_length(expr, 200)
    assert len(fitted) == 200 and np.flatnonzero(fitted.valid).tolist() == [2]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    per_frame = labels_from_array("vid", "EXPR", VAL_SPLIT, EXPR_NAMES_7, np.zeros(3), str(tmp_path / "vid.txt"))
    with caplog.at_level(logging.INFO):
        fit_length(per_frame, 200)  # a per-frame file this short is suspicious
    assert "check that the file belongs to this video" in caplog.text


def test_the_database_takes_its_labels_from_the_mtl_files(mini_quick):
    mtl_dir = mini_quick / "annotations" / "mtl"
    jobs = build_plan.collect_jobs([str(mini_quick / "videos")], str(mtl_dir))
    val = read_mtl_file(mtl_dir / MTL_FILES[VAL_SPLIT], VAL_SPLIT)
    labels = {track: lab for job in jobs for track, lab in job.labels.items()}
    splits = {track: s for job in jobs for track, s in job.splits.items()}
    assert val["VA"]
    for track, lab in val["EXPR"].items():
        assert set(labels[track]) == {"VA", "EXPR", "AU"}
        assert set(splits[track].values()) == {VAL_SPLIT}
        assert np.array_equal(labels[track]["EXPR"].values, lab.values)


# --- test_val_aff2.py split mode ------------------------------------------------------------------
def frame_checkpoint(path: Path, layout: str = "abaw3") -> Path:
    """A train.py-like checkpoint of a small random per-frame model (seed 0) with all three tasks."""
    torch.manual_seed(0)
    m = build_model("resnet18", layout, input_spec=InputSpec.frame(size=32)).eval()
    torch.save({"state_dict": m.state_dict(), **m.settings()}, path)
    return path


def toy_val_annotations(folder: Path) -> Path:
    """A validation multi-task file for the toy database's val tracks: every third frame, toy labels."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = labels_for(24)
    lines = [MTL_HEADER]
    for track, first in (("b_left", 0), ("b_right", 1)):
        for k in range(first, 24, 3):
            va = ",".join(f"{x:.3f}" for x in labels["VA"][0][k])
            aus = ",".join(str(int(x)) for x in labels["AU"][0][k])
            lines.append(f"{track}/{k + 1:05d}.jpg,{va},{int(labels['EXPR'][0][k])},{aus}")
    (folder / MTL_FILES[VAL_SPLIT]).write_text("\n".join(lines) + "\n")
    return folder


def split_args(ckpt: Path, db: Path, out: Path, *more: str) -> list[str]:
    return ["--checkpoint", str(ckpt), "--db", str(db), "--out", str(out), "--workers", "0", "--device", "cpu",
            "--batch-size", "32", *more]


def test_split_mode_writes_the_mtl_file_that_evaluate_checks_and_scores(toy, tmp_path, capsys):
    ann = toy_val_annotations(tmp_path / "ann")
    out = tmp_path / "val"
    rc = test_val_aff2.main(split_args(frame_checkpoint(tmp_path / "f.pth"), toy, out, "--split", "val",
                                       "--edition", "abaw4", "--annotations", str(ann)))  # --format auto: mtl
    assert rc == 0, capsys.readouterr()
    sub = out / "submission" / MTL_FILE
    assert [p.name for p in (out / "submission").iterdir()] == [MTL_FILE]
    listed = [line.split(",")[0] for line in (ann / MTL_FILES[VAL_SPLIT]).read_text().splitlines()]
    assert [line.split(",")[0] for line in sub.read_text().splitlines()] == listed  # header, then the same images
    capsys.readouterr()
    assert evaluate.main(["--check", str(sub), "--annotations", str(ann), "--edition", "abaw4"]) == 0
    assert "0 problems" in capsys.readouterr().out
    assert evaluate.main(["--pred", str(sub), "--annotations", str(ann), "--edition", "abaw4",
                          "--json", str(tmp_path / "s.json")]) == 0
    again = json.loads((tmp_path / "s.json").read_text())
    scores = json.loads((out / "scores.json").read_text())
    assert scores["edition"] == "abaw4" and set(scores) == {"edition", "va", "expr", "au", "total"}
    assert again["total"] == pytest.approx(scores["total"], abs=1e-12)
    assert scores["total"] == pytest.approx(scores["va"]["score"] + scores["expr"]["f1"] + scores["au"]["f1"])


def test_split_mode_mtl_rows_of_a_test_list(toy, tmp_path, capsys):
    ckpt = frame_checkpoint(tmp_path / "f.pth")
    lst = tmp_path / "MTL_Challenge_test_set_release.txt"
    lst.write_text("image\nd/00002.jpg\nd/00005.jpg\nd/00012.jpg\nd/00013.jpg\n")  # d has 12 frames
    out = tmp_path / "test"
    rc = test_val_aff2.main(split_args(ckpt, toy, out, "--split", "test", "--format", "mtl",
                                       "--test-lists", str(lst)))
    assert rc == 0, capsys.readouterr()
    rows = (out / "submission" / MTL_FILE).read_text().splitlines()
    assert [r.split(",")[0] for r in rows] == ["image", "d/00002.jpg", "d/00005.jpg", "d/00012.jpg", "d/00013.jpg"]
    assert rows[4].split(",", 1)[1] == rows[3].split(",", 1)[1]  # past the last frame: its decisions held
    assert "note: d: 1 listed images past its 12 frames" in capsys.readouterr().out

    va_only = tmp_path / "VA_test_set.txt"
    va_only.write_text("d\n")
    assert test_val_aff2.main(split_args(ckpt, toy, tmp_path / "o", "--split", "test", "--format", "mtl",
                                         "--test-lists", str(va_only))) == 2
    assert "no multi-task list" in capsys.readouterr().err
    lst.write_text("d/00030.jpg\n")
    assert test_val_aff2.main(split_args(ckpt, toy, tmp_path / "o", "--split", "test", "--format", "mtl",
                                         "--test-lists", str(lst))) == 2
    assert "d: images listed up to frame 30, but it has 12 frames" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_an_mtl_file_needs_every_task_and_12_aus():
    expr_va = OutputLayout("expr_va", ("expr", "va"), 7, EXPR_NAMES_7)
    with pytest.raises(PredictError, match="has none for AU"):
        check_mtl_serves(expr_va, EDITIONS["abaw4"])
    with pytest.raises(PredictError, match="abaw2020 has 8"):
        check_mtl_serves(get_layout("abaw2020"), EDITIONS["abaw2020"])
    check_mtl_serves(get_layout("abaw2021"), EDITIONS["abaw4"])  # 7 classes served, codes valid in 8


def test_split_mode_single_files_are_checked_and_scored_file_by_file(toy, tmp_path, capsys):
    ann = tmp_path / "ann"
    labels = labels_for(24)
    headers = {"VA": "valence,arousal", "EXPR": ",".join(EXPR_NAMES_8), "AU": ",".join(AU_NAMES_12)}
    for task, folder in (("VA", "VA_Estimation_Challenge"), ("EXPR", "EXPR_Classification_Challenge"),
                         ("AU", "AU_Detection_Challenge")):
        d = ann / folder / "Validation_Set"
        d.mkdir(parents=True)
        values = labels[task][0].reshape(24, -1)
        for track in ("b_left", "b_right"):
            rows = [",".join(f"{x:g}" for x in row) for row in values]
            (d / f"{track}.txt").write_text("\n".join([headers[task], *rows]) + "\n")
    out = tmp_path / "val"
    rc = test_val_aff2.main(split_args(frame_checkpoint(tmp_path / "f.pth"), toy, out, "--split", "val",
                                       "--edition", "abaw3", "--format", "single-file", "--annotations", str(ann)))
    assert rc == 0, capsys.readouterr()
    names = sorted(p.name for p in (out / "submission").iterdir())
    assert names == ["AU_predictions.txt", "EXPR_predictions.txt", "VA_predictions.txt"]
    assert "0 problem(s)" in capsys.readouterr().out
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores) == {"edition", "va", "expr", "au", "total"}
    assert scores["total"] == pytest.approx(scores["va"]["score"] + scores["expr"]["score"] + scores["au"]["score"])


@pytest.mark.slow
def test_split_mode_on_the_mini_dataset_with_its_mtl_files(mini_quick, mini_db, tmp_path, capsys):
    ann = mini_quick / "annotations" / "mtl"
    out = tmp_path / "val"
    rc = test_val_aff2.main(split_args(frame_checkpoint(tmp_path / "f.pth"), mini_db, out, "--split", "val",
                                       "--edition", "abaw4", "--annotations", str(ann)))
    assert rc == 0, capsys.readouterr()
    sub = out / "submission" / MTL_FILE
    assert evaluate.main(["--check", str(sub), "--annotations", str(ann), "--edition", "abaw4"]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert all(scores[k]["score"] is not None for k in ("va", "expr", "au"))


def test_the_training_prior_baseline_writes_an_mtl_file_for_abaw4(mini_quick, tmp_path, capsys):
    ann = mini_quick / "annotations" / "mtl"
    baseline.main(["--annotations", str(ann), "--videos", str(mini_quick / "videos"), "--edition", "abaw4",
                   "--out", str(tmp_path / "prior")])
    sub = tmp_path / "prior" / "MTL_predictions.txt"
    rows = sub.read_text().splitlines()
    listed = (ann / "validation_set_annotations.txt").read_text().splitlines()
    assert rows[0] == listed[0]  # the header; then a row per listed image (tracks in name order)
    assert sorted(r.split(",")[0] for r in rows[1:]) == sorted(r.split(",")[0] for r in listed[1:])
    assert len({r.split(",", 1)[1] for r in rows[1:]}) == 1  # one constant prediction
    assert evaluate.main(["--check", str(sub), "--annotations", str(ann), "--edition", "abaw4",
                          "--videos", str(mini_quick / "videos")]) == 0
