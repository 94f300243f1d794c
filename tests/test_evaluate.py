"""evaluate.py end to end (subprocess) on a small annotation tree written here."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from app import submission as S
from data.annotations import MTL_HEADER
from tasks import AU_NAMES_12, EXPR_NAMES_7
from tests.test_submission import make_video

ROOT = Path(__file__).resolve().parents[1]
VAL = {"a": 20, "b_left": 17}  # annotated validation tracks and their label line counts
PRED_LEN = {"a": 20, "b_left": 15}  # b_left's video has 2 frames fewer than its label lines


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "evaluate.py", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


def write(path: Path, header: str, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """abaw2021 uni-task folders (Validation_Set: a, b_left; Train_Set: c) + an MTL validation file."""
    root = tmp_path_factory.mktemp("ann")
    rng = np.random.default_rng(0)
    labels = {}
    for split, tracks in (("Validation_Set", VAL), ("Train_Set", {"c": 5})):
        for track, n in tracks.items():
            va = np.round(rng.uniform(-1, 1, (n, 2)), 3)
            va[rng.random(n) < 0.2] = -5
            expr = rng.integers(-1, 7, n)
            au = rng.integers(-1, 2, (n, 12))
            labels[track] = {"VA": va, "EXPR": expr, "AU": au}
            write(root / "VA_Set" / split / f"{track}.txt", "valence,arousal", [f"{v},{a}" for v, a in va])
            write(root / "EXPR_Set" / split / f"{track}.txt", ",".join(EXPR_NAMES_7), map(str, expr))
            write(root / "AU_Set" / split / f"{track}.txt", ",".join(AU_NAMES_12),
                  [",".join(map(str, r)) for r in au])
    aus = ",".join(["1", "0"] * 6)
    mtl_rows = [f"{t}/{f:05d}.jpg,0.1,-0.2,{f % 8},{aus}" for t in VAL for f in (2, 3, 5)]
    write(root / "validation_set_annotations.txt", MTL_HEADER, mtl_rows)
    preds = {
        "VA": {t: np.round(rng.uniform(-1, 1, (n, 2)), 3) for t, n in PRED_LEN.items()},
        "EXPR": {t: rng.integers(0, 7, n) for t, n in PRED_LEN.items()},
        "AU": {t: rng.integers(0, 2, (n, 12)) for t, n in PRED_LEN.items()},
    }
    return root, labels, preds


def concat(labels, preds, task):
    """(pred, true) over the validation tracks, labels truncated to the prediction length."""
    p = np.concatenate([preds[task][t] for t in VAL])
    y = np.concatenate([labels[t][task][: PRED_LEN[t]] for t in VAL])
    return p, y


def ccc(x, y):
    cov = np.cov(x, y, bias=True)
    return 2 * cov[0, 1] / (cov[0, 0] + cov[1, 1] + (x.mean() - y.mean()) ** 2)


def test_scores_per_video_submission(tree, tmp_path):
    root, labels, preds = tree
    sub = S.write_per_video(tmp_path / "sub", preds, "abaw2021")
    res = run("--pred", sub, "--annotations", root, "--edition", "abaw2021", "--json", tmp_path / "s.json")
    assert res.returncode == 0, res.stderr
    assert "total" in res.stdout
    assert "VA: label lines differ from prediction lines for 1 of 2 tracks" in res.stderr
    out = json.loads((tmp_path / "s.json").read_text())
    assert list(out) == ["edition", "va", "expr", "au", "total"] and out["edition"] == "abaw2021"
    assert list(out["va"]) == ["ccc_valence", "ccc_arousal", "score"]
    assert list(out["expr"]) == ["f1", "accuracy", "score"]
    assert list(out["au"]) == ["f1", "accuracy", "score", "per_au"]
    assert list(out["au"]["per_au"]) == list(AU_NAMES_12)

    p, y = concat(labels, preds, "VA")
    ok = y[:, 0] != -5
    cv, ca = ccc(p[ok, 0], y[ok, 0]), ccc(p[ok, 1], y[ok, 1])
    assert out["va"]["ccc_valence"] == pytest.approx(cv, abs=1e-6)
    assert out["va"]["score"] == pytest.approx((cv + ca) / 2, abs=1e-6)
    p, y = concat(labels, preds, "EXPR")
    f1, acc = f1_score(y[y >= 0], p[y >= 0], average="macro"), accuracy_score(y[y >= 0], p[y >= 0])
    assert out["expr"]["score"] == pytest.approx(0.67 * f1 + 0.33 * acc, abs=1e-9)
    p, y = concat(labels, preds, "AU")
    per = [f1_score(y[y[:, j] >= 0, j], p[y[:, j] >= 0, j]) for j in range(12)]
    acc = accuracy_score(y[y >= 0], p[y >= 0])
    assert out["au"]["score"] == pytest.approx(0.5 * np.mean(per) + 0.5 * acc, abs=1e-9)
    total = out["va"]["score"] + out["expr"]["score"] + out["au"]["score"]
    assert out["total"] == pytest.approx(total, abs=1e-9)


def test_absent_task_is_omitted_and_missing_track_is_an_error(tree, tmp_path):
    root, _, preds = tree
    sub = S.write_per_video(tmp_path / "sub", {"EXPR": preds["EXPR"]}, "abaw2021")
    res = run("--pred", sub, "--annotations", root, "--edition", "abaw2021", "--json", tmp_path / "s.json")
    assert res.returncode == 0, res.stderr
    assert list(json.loads((tmp_path / "s.json").read_text())) == ["edition", "expr", "total"]
    sub2 = S.write_per_video(tmp_path / "sub2", {"EXPR": {"a": preds["EXPR"]["a"]}}, "abaw2021")
    res = run("--pred", sub2, "--annotations", root, "--edition", "abaw2021")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "no EXPR prediction for 1 of the 2 annotated Validation_Set tracks: b_left" in res.stderr


def test_mtl_and_single_file_submissions(tree, tmp_path):
    root, labels, preds = tree
    mtl_preds = {"VA": preds["VA"], "EXPR": preds["EXPR"], "AU": preds["AU"]}
    images = {t: [2, 3, 5] for t in VAL}
    mtl = S.write_mtl(tmp_path / "mtl.txt", mtl_preds, images)
    res = run("--pred", mtl, "--annotations", root, "--edition", "abaw2021", "--json", tmp_path / "m.json")
    assert res.returncode == 0, res.stderr
    out = json.loads((tmp_path / "m.json").read_text())
    assert out["edition"] == "abaw3" and "scored with the abaw3 metrics" in res.stderr
    true = [f % 8 for t in VAL for f in (2, 3, 5)]
    pred = [preds["EXPR"][t][f - 1] for t in VAL for f in (2, 3, 5)]
    assert out["expr"]["score"] == pytest.approx(f1_score(true, pred, average="macro"), abs=1e-9)
    assert out["expr"]["score"] == out["expr"]["f1"]

    single = S.write_single_file(tmp_path / "expr.txt", "EXPR", preds["EXPR"], images)
    res = run("--pred", single, "--annotations", root, "--edition", "abaw2021")  # 3 rows of 17 and 15 frames
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "--allow-partial" in res.stderr
    res = run("--pred", single, "--annotations", root, "--edition", "abaw2021", "--json", tmp_path / "e.json",
              "--allow-partial")
    assert res.returncode == 0, res.stderr
    assert "labelled EXPR frames have no prediction row" in res.stderr
    out = json.loads((tmp_path / "e.json").read_text())
    y = np.array([labels[t]["EXPR"][f - 1] for t in VAL for f in (2, 3, 5)])
    p = np.array(pred)
    assert out["expr"]["f1"] == pytest.approx(f1_score(y[y >= 0], p[y >= 0], average="macro"), abs=1e-9)


def test_check_exit_codes(tree, tmp_path):
    root, _, preds = tree
    preds = {task: {t: v[:1] if t == "a" else v for t, v in per.items()} for task, per in preds.items()}
    sub = S.write_per_video(tmp_path / "sub", preds, "abaw2021")
    res = run("--check", sub, "--annotations", root, "--edition", "abaw2021")
    assert res.returncode == 1
    lines = res.stdout.splitlines()
    assert lines[-1] == f"6 problems in {sub}"
    assert f"{sub}/VA_Set/a.txt:3: 1 frame lines, expected 20 (one per frame): 19 missing at the end" in lines
    assert (f"{sub}/AU_Set/b_left.txt:17: 15 frame lines, expected 17 (one per frame): "
            "2 missing at the end") in lines

    lists = tmp_path / "lists"
    (lists / "VA_Estimation_Challenge_test_set_release.txt").parent.mkdir()
    (lists / "VA_Estimation_Challenge_test_set_release.txt").write_text("a\nb_left\n")
    make_video(tmp_path / "videos" / "a.mp4", 1)
    make_video(tmp_path / "videos" / "batch2" / "b.avi", 15)
    va_only = S.write_per_video(tmp_path / "va", {"VA": preds["VA"]}, "abaw2021")
    res = run("--check", va_only, "--edition", "abaw2021", "--test-list",
              lists / "VA_Estimation_Challenge_test_set_release.txt", "--videos", tmp_path / "videos")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip() == f"0 problems in {va_only}"


@pytest.mark.parametrize("args", [
    ["--pred", "x", "--videos", "v"],
    ["--check", "x", "--annotations", "does/not/exist"],
    ["--check", "x", "--test-list", "does/not/exist.txt"],
    ["--pred", "does/not/exist", "--annotations", "."],
])
def test_usage_errors_exit_2(args):
    res = run(*args)
    assert res.returncode == 2 and res.stderr.strip(), res


def test_too_few_lines_is_an_error_unless_allow_partial(tree, tmp_path):
    root, _, preds = tree
    one_line = S.write_per_video(tmp_path / "sub", {"VA": {t: v[:1] for t, v in preds["VA"].items()}}, "abaw2021")
    res = run("--pred", one_line, "--annotations", root, "--edition", "abaw2021", "--json", tmp_path / "s.json")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith(f"evaluate.py: error: {one_line}: VA predictions leave labelled frames without a "
                                 "prediction in 2 of 2 tracks (a ")
    assert "b_left" in res.stderr and "--allow-partial" in res.stderr and not (tmp_path / "s.json").exists()
    res = run("--pred", one_line, "--annotations", root, "--edition", "abaw2021", "--json", tmp_path / "s.json",
              "--allow-partial")
    assert res.returncode == 0 and "scored anyway (--allow-partial)" in res.stderr, res.stderr
    assert "more than the 10 tolerated" in res.stderr  # 20 label lines for a 1-line prediction: a WARNING
    assert json.loads((tmp_path / "s.json").read_text())["va"]


def test_check_of_a_missing_submission_exits_2(tree, tmp_path):
    res = run("--check", tmp_path / "nothing", "--annotations", tree[0], "--edition", "abaw2021")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == f"evaluate.py: error: {tmp_path / 'nothing'}: no such file or folder\n"
    res = run("--check", tmp_path / "nothing", "--annotations", tree[0], "--allow-partial")
    assert res.returncode == 2 and "--allow-partial only applies to --pred" in res.stderr


@pytest.mark.parametrize("line", ["../../secret/00001.jpg", "../secret"])
def test_check_never_opens_a_file_a_test_list_points_outside(tree, tmp_path, line):
    sub = S.write_per_video(tmp_path / "a" / "sub", {"VA": {"a": np.zeros((3, 2))}}, "abaw2021")
    (tmp_path / "a" / "secret.txt").write_text("TOP SECRET\n")  # = sub/VA_Set/../../secret.txt
    test_list = tmp_path / "VA_test_set.txt"
    test_list.write_text(f"a/00001.jpg\n{line}\n")
    res = run("--check", sub, "--edition", "abaw2021", "--test-list", test_list, "--videos", tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res
    assert res.stderr.startswith(f"evaluate.py: error: {test_list}:2: ")
    assert "SECRET" not in res.stdout + res.stderr
