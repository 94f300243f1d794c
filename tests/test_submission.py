"""Submission writers, reader and checker (SPEC §5), on small files written here."""

import os
import re
from pathlib import Path

import numpy as np
import pytest

from app import submission as S
from tasks import AU_NAMES_12, EDITIONS, EXPR_NAMES_7, EXPR_NAMES_8


def random_preds(edition: str, lengths: dict[str, int], seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    ed = EDITIONS[edition]
    return {
        "VA": {t: rng.uniform(-1.3, 1.3, (n, 2)) for t, n in lengths.items()},
        "EXPR": {t: rng.integers(0, len(ed.expr_names), n) for t, n in lengths.items()},
        "AU": {t: rng.integers(0, 2, (n, len(ed.au_names))) for t, n in lengths.items()},
    }


LENGTHS = {"v1": 7, "v2_left": 5, "v2_right": 5}
EXPECTED = {task: dict(LENGTHS) for task in ("VA", "EXPR", "AU")}


@pytest.mark.parametrize("edition", ["abaw2020", "abaw2021", "abaw3"])
def test_per_video_round_trip(tmp_path, edition):
    preds = random_preds(edition, LENGTHS)
    out = S.write_per_video(tmp_path / "sub", preds, edition)
    assert sorted(os.listdir(out)) == ["AU_Set", "EXPR_Set", "VA_Set"]  # nothing left from staging
    text = (out / "EXPR_Set" / "v1.txt").read_text()
    names = EDITIONS[edition].expr_names
    assert text.startswith(",".join(names) + "\n") and text.endswith("\n") and text.count("\n") == 8
    back = S.read_predictions(out, edition)
    for t in LENGTHS:
        va = np.round(np.clip(preds["VA"][t], -1, 1), 3)
        np.testing.assert_allclose(back["VA"][t].values, va, atol=1e-6)
        assert back["EXPR"][t].values.tolist() == preds["EXPR"][t].tolist()
        assert back["AU"][t].values.tolist() == preds["AU"][t].tolist()
        assert back["AU"][t].names == EDITIONS[edition].au_names
    assert S.check_submission(out, edition, EXPECTED) == []


def test_va_format_three_decimals(tmp_path):
    S.write_per_video(tmp_path / "s", {"VA": {"v": np.array([[-0.0001, 1.7], [0.12345, -2.0]])}}, "abaw2021")
    assert (tmp_path / "s/VA_Set/v.txt").read_text() == "valence,arousal\n0.000,1.000\n0.123,-1.000\n"


def test_existing_folder_gets_whole_task_folders(tmp_path):
    out = tmp_path / "sub"
    S.write_per_video(out, random_preds("abaw2021", LENGTHS), "abaw2021")
    S.write_per_video(out, {"VA": {"only": np.zeros((3, 2))}}, "abaw2021")
    assert sorted(os.listdir(out)) == ["AU_Set", "EXPR_Set", "VA_Set"]
    assert os.listdir(out / "VA_Set") == ["only.txt"] and len(os.listdir(out / "EXPR_Set")) == 3


def test_failed_write_leaves_nothing(tmp_path):
    bad = {"VA": {"v": np.zeros((3, 2))}, "EXPR": {"v": np.array([0, 9, 1])}}
    with pytest.raises(S.SubmissionError, match="frame 2: EXPR 9"):
        S.write_per_video(tmp_path / "new", bad, "abaw2021")
    assert os.listdir(tmp_path) == []
    S.write_per_video(tmp_path / "old", {"VA": {"v": np.zeros((3, 2))}}, "abaw2021")
    with pytest.raises(S.SubmissionError):
        S.write_per_video(tmp_path / "old", {"VA": {"w": np.zeros((3, 2))}, "AU": {"w": np.full((3, 12), 2)}},
                          "abaw2021")
    assert os.listdir(tmp_path / "old") == ["VA_Set"] and os.listdir(tmp_path / "old/VA_Set") == ["v.txt"]
    with pytest.raises(S.SubmissionError, match="finite"):
        S.write_single_file(tmp_path / "va.txt", "VA", {"v": np.array([[np.nan, 0.0]])})
    with pytest.raises(S.SubmissionError, match="12 columns"):
        S.write_single_file(tmp_path / "au.txt", "AU", {"v": np.zeros((2, 8))})
    assert sorted(os.listdir(tmp_path)) == ["old"]


@pytest.mark.parametrize("task", ["VA", "EXPR", "AU"])
def test_single_file_round_trip(tmp_path, task):
    preds = random_preds("abaw3", LENGTHS, seed=1)[task]
    images = {"v1": [1, 2, 5], "v2_left": [1, 2, 3, 4, 5], "v2_right": [2]}
    path = S.write_single_file(tmp_path / f"{task}.txt", task, preds, images)
    lines = path.read_text().splitlines()
    header = {"VA": "image_location,valence,arousal",
              "EXPR": "image_location,Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other",
              "AU": "image_location," + ",".join(AU_NAMES_12)}[task]
    assert lines[0] == header and lines[1].startswith("v1/00001.jpg,") and len(lines) == 10
    back = S.read_predictions(path, "abaw3")[task]
    assert len(back["v1"]) == 5 and len(back["v2_right"]) == 2  # up to the last listed frame
    valid = back["v1"].valid if task != "AU" else back["v1"].valid.all(axis=1)
    assert valid.tolist() == [True, True, False, False, True]
    if task == "EXPR":
        assert back["v2_left"].values.tolist() == preds["v2_left"].tolist()
    expected = {task: {t: frames for t, frames in images.items()}}
    assert S.check_submission(path, "abaw3", expected) == []


def test_mtl_round_trip(tmp_path):
    preds = random_preds("abaw3", LENGTHS, seed=2)
    path = S.write_mtl(tmp_path / "mtl.txt", preds)
    lines = path.read_text().splitlines()
    assert lines[0] == "image,valence,arousal,expression,aus" and len(lines[1].split(",")) == 16
    back = S.read_predictions(path, "abaw3")
    assert set(back) == {"VA", "EXPR", "AU"} and back["EXPR"]["v1"].names == EXPR_NAMES_8
    assert back["AU"]["v2_left"].values.tolist() == preds["AU"]["v2_left"].tolist()
    assert S.check_submission(path, "abaw3", EXPECTED) == []


def write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def problems_as_text(path, edition, expected, root) -> list[str]:
    return [str(p).replace(f"{root}/", "") for p in S.check_submission(path, edition, expected)]


EXPR7 = ",".join(EXPR_NAMES_7)
PER_VIDEO_CASES = [  # (file, lines, expected problem) for abaw2021 with v1 having 3 frames
    ("EXPR_Set/v1.txt", [",".join(EXPR_NAMES_8), "0", "1", "2"], r"EXPR_Set/v1.txt:1: header .*expected"),
    ("EXPR_Set/v1.txt", [EXPR7, "0", "1"], r"EXPR_Set/v1.txt:4: 2 frame lines, expected 3"),
    ("EXPR_Set/v1.txt", [EXPR7, "0", "1", "2", "3", "4"], r"EXPR_Set/v1.txt:5: 5 frame lines, expected 3"),
    ("EXPR_Set/v1.txt", [EXPR7, "0", "7", "2"], r"EXPR_Set/v1.txt:3: expression 7 is not a class code 0..6"),
    ("EXPR_Set/v1.txt", [EXPR7, "0", "1.5", "2"], r"EXPR_Set/v1.txt:3: expression 1.5 is not a class"),
    ("EXPR_Set/v1.txt", [EXPR7, "0", "", "1", "2"], r"EXPR_Set/v1.txt:3: blank line"),
    ("EXPR_Set/v1.txt", [EXPR7, "0", "1", "happy"], r"EXPR_Set/v1.txt:4: expression: non-numeric"),
    ("VA_Set/v1.txt", ["valence,arousal", "0.1,0.2", "1.2,0", "0,0"], r"VA_Set/v1.txt:3: valence 1.2 out"),
    ("VA_Set/v1.txt", ["valence,arousal", "0.1,0.2", "0.5", "0,0"], r"VA_Set/v1.txt:3: expected 2 values"),
    ("AU_Set/v1.txt", [",".join(AU_NAMES_12), "0," * 11 + "0", "0," * 11 + "2", "1," * 11 + "1"],
     r"AU_Set/v1.txt:3: AU26 2 is not 0 or 1"),
    ("EXPR_Set/v1.mp4.txt", [EXPR7, "0", "1", "2"], r"EXPR_Set/v1.mp4.txt: unexpected file; .*extension"),
    ("EXPR_Set/v9.txt", [EXPR7, "0", "1", "2"], r"EXPR_Set/v9.txt: unexpected file"),
    ("README.txt", ["hello"], r"README.txt: unexpected entry"),
]


@pytest.mark.parametrize("name,lines,pattern", PER_VIDEO_CASES)
def test_checker_per_video_problems(tmp_path, name, lines, pattern):
    good = {"VA": {"v1": np.zeros((3, 2))}, "EXPR": {"v1": np.arange(3)}, "AU": {"v1": np.zeros((3, 12))}}
    out = S.write_per_video(tmp_path / "sub", good, "abaw2021")
    write(out / name, lines)
    expected = {task: {"v1": 3} for task in good}
    found = problems_as_text(out, "abaw2021", expected, out)
    assert len(found) == 1 and re.match(pattern, found[0]), found


def test_checker_reports_every_problem(tmp_path):
    out = tmp_path / "sub"
    write(out / "VA_Set/a.txt", ["valence,arousal", "0,0", "9,9", "x,0"])
    (out / "AU_Set").mkdir()
    (out / "VA_Set/b.txt").write_bytes(b"valence,arousal\r\n0,0\r\n")
    (out / "VA_Set/d.txt").write_text("")
    expected = {"VA": {"a": 3, "b": 1, "c": 2, "d": 2}, "EXPR": {"a": 3}}
    found = problems_as_text(out, "abaw2021", expected, out)
    assert found == [
        "AU_Set: unexpected folder: no AU tracks are expected",
        "VA_Set/a.txt:3: valence 9 outside [-1, 1]; arousal 9 outside [-1, 1]",
        "VA_Set/a.txt:4: valence: non-numeric value 'x'",
        "VA_Set/b.txt:1: 2 lines end with \\r\\n; use \\n",
        "VA_Set/c.txt: missing (2 frames expected)",
        "VA_Set/d.txt:1: empty file (no header)",
        "EXPR_Set: missing folder (1 EXPR tracks expected)",
    ]
    with pytest.raises(S.SubmissionError, match=r"a\.txt:3: valence 9 .*and 1 more.*--check"):
        S.read_predictions(out, "abaw2021")


EXPR_HEADER = "image_location," + ",".join(EXPR_NAMES_8)
SINGLE_CASES = [  # (rows after the header, expected problems) with v1: frames 1..3 expected
    (["v1/00001.jpg,0", "v1/00002.jpg,1"], ["x.txt: track v1: 1 expected rows missing (first v1/00003.jpg)"]),
    (["v1/00001.jpg,0", "v1/00002.jpg,1", "v1/00003.jpg,2", "v1/00004.jpg,2"],
     ["x.txt:5: 1 rows of track v1 are not expected frames (first v1/00004.jpg; 3 rows expected)"]),
    (["v1/00001.jpg,0", "v1/00002.jpg,1", "v1/00002.jpg,1", "v1/00003.jpg,2"],
     ["x.txt:4: duplicate row for v1/00002.jpg (first at line 3)"]),
    (["v1/00001.jpg,0", "v1/00002.jpg,1", "v1/00003.jpg,2", "zz/00001.jpg,0"],
     ["x.txt:5: unexpected track zz (1 rows)"]),
    (["v1/00001.jpg,0", "v1/2.png.jpg,1", "v1/00003.jpg,8"],
     ["x.txt:3: bad image name 'v1/2.png.jpg' (expected video/00001.jpg)",
      "x.txt:4: expression 8 is not a class code 0..7",
      "x.txt: track v1: 1 expected rows missing (first v1/00002.jpg)"]),
    (["v1/00001.jpg,0,1", "v1/00002.jpg", "", "v1/00003.jpg,2"],
     ["x.txt:2: expected 1 values, got 2", "x.txt:3: expected 1 values, got 0", "x.txt:4: blank line"]),
    ([], ["x.txt: missing track v1 (3 rows expected)"]),
]


@pytest.mark.parametrize("rows,problems", SINGLE_CASES)
def test_checker_single_file_problems(tmp_path, rows, problems):
    path = write(tmp_path / "x.txt", [EXPR_HEADER] + rows)
    assert problems_as_text(path, "abaw3", {"EXPR": {"v1": 3}}, tmp_path) == problems


def test_checker_single_file_header_and_task(tmp_path):
    bad = write(tmp_path / "x.txt", ["image_location,Neutral", "v1/00001.jpg,0"])
    assert problems_as_text(bad, "abaw3", {"EXPR": {"v1": 1}}, tmp_path)[0].startswith(
        "x.txt:1: unrecognised header")
    va = write(tmp_path / "va.txt", ["image_location,valence,arousal", "v1/00001.jpg,0.5,2"])
    assert problems_as_text(va, "abaw3", {"EXPR": {"v1": 1}}, tmp_path) == [
        "va.txt:2: arousal 2 outside [-1, 1]", "va.txt:1: a VA submission, but no VA tracks are expected"]
    only_value = problems_as_text(va, "abaw3", {"VA": {"v1": 1}}, tmp_path)
    assert only_value == ["va.txt:2: arousal 2 outside [-1, 1]"]
    nope = problems_as_text(tmp_path / "nope.txt", "abaw3", {}, tmp_path)
    assert nope == ["nope.txt: no such file or folder"]
    with pytest.raises(S.SubmissionError, match=r"va\.txt:2: arousal 2"):
        S.read_predictions(va, "abaw3")


def test_test_lists(tmp_path):
    names = write(tmp_path / "Expression_Challenge_test_set_release.txt", ["vidA.mp4", "vidB_left", ""])
    images = write(tmp_path / "MTL_Challenge_test_set_release.txt",
                   ["image", "vidA/00001.jpg", "vidA/00003.jpg"])
    assert S.task_of_list(names) == "EXPR" and S.task_of_list(images) is None
    assert S.task_of_list("VA_Estimation_Challenge_test_set_release.txt") == "VA"
    assert S.task_of_list("Action_Unit_Detection_Challenge_test_set_release.txt") == "AU"
    assert S.read_test_list(names) == {"vidA": None, "vidB_left": None}
    assert S.read_test_list(images) == {"vidA": [1, 3]}


def make_video(path: Path, n_frames: int) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 10 % 256, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def test_video_frame_counts(tmp_path):
    make_video(tmp_path / "batch1" / "vidA.mp4", 9)
    make_video(tmp_path / "batch2" / "vidB.avi", 4)
    counts = S.video_frame_counts(["vidA", "vidB_left", "vidB_right"], [tmp_path])
    assert counts == {"vidA": 9, "vidB_left": 4, "vidB_right": 4}
    with pytest.raises(S.SubmissionError, match="vidC"):
        S.video_frame_counts(["vidC"], [tmp_path])


@pytest.mark.parametrize("track", ["../escaped", "a/b", "..", ".hidden", "x\ny", ""])
def test_writers_refuse_track_names_that_are_not_plain(tmp_path, track):
    out = tmp_path / "deep" / "sub"
    with pytest.raises(S.SubmissionError, match="prediction"):
        S.write_per_video(out, {"VA": {track: np.zeros((2, 2))}}, "abaw2021")
    with pytest.raises(S.SubmissionError, match="prediction"):
        S.write_single_file(tmp_path / "va.txt", "VA", {track: np.zeros((2, 2))})
    with pytest.raises(S.SubmissionError, match="prediction"):
        one_frame = {"VA": np.zeros((1, 2)), "EXPR": np.zeros(1), "AU": np.zeros((1, 12))}
        S.write_mtl(tmp_path / "mtl.txt", {task: {track: v} for task, v in one_frame.items()})
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")] == ["deep"]


def test_checker_and_reader_refuse_image_names_outside_the_submission(tmp_path):
    secret = write(tmp_path / "secret.txt", ["TOP SECRET"])
    out = S.write_per_video(tmp_path / "sub", {"VA": {"v1": np.zeros((1, 2))}}, "abaw2021")
    with pytest.raises(S.SubmissionError, match=r"expected track: '\.\./\.\./secret' is not a plain file name"):
        S.check_submission(out, "abaw2021", {"VA": {"v1": 1, "../../secret": 1}})
    single = write(tmp_path / "va.txt", ["image_location,valence,arousal", "../secret/00001.jpg,0,0",
                                         "v1/00001.jpg,0,0"])
    assert problems_as_text(single, "abaw3", {"VA": {"v1": 1}}, tmp_path) == [
        "va.txt:2: bad image name '../secret/00001.jpg' (expected video/00001.jpg)"]
    with pytest.raises(S.SubmissionError, match=r"va\.txt:2: bad image name"):
        S.read_predictions(single, "abaw3")
    images = write(tmp_path / "list.txt", ["image", "v1/00001.jpg", "../../secret/00001.jpg"])
    with pytest.raises(S.SubmissionError, match=rf"^{re.escape(str(images))}:3: bad image name"):
        S.listed_images(images)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(images))}:3: "):
        S.read_test_list(images)
    assert secret.read_text() == "TOP SECRET\n"


def labels(task: str, rows: list) -> "S.TrackLabels":
    names = {"VA": ("valence", "arousal"), "EXPR": EXPR_NAMES_7}[task]
    return S.labels_from_array("t", task, "", names, np.array(rows, float))


def test_coverage_counts_labelled_frames_without_a_prediction():
    from app.submission import coverage

    truth = labels("EXPR", [0] * 30 + [-1] * 20 + [1] * 5)  # 35 labelled frames of 55
    assert coverage.unpredicted(labels("EXPR", [0] * 40), truth, per_video=True) == 5
    assert coverage.unpredicted(labels("EXPR", [0] * 20), truth, per_video=True) == 15
    sparse = labels("EXPR", [0, -1, 0])  # a single file listing frames 1 and 3
    assert coverage.unpredicted(sparse, truth, per_video=False) == 33
    preds = {"short": labels("EXPR", [0] * 20), "ok": labels("EXPR", [0] * 40)}
    truths = dict.fromkeys(preds, truth)
    partial = coverage.partial_tracks(preds, truths, per_video=True)
    assert partial == {"short": (15, 35)}  # 15 > 10 lines tolerated, 5 are within
    text = coverage.describe_partial("sub", "EXPR", partial, 3)
    assert text.startswith("sub: EXPR predictions leave labelled frames without a prediction in 1 of 3 tracks "
                           "(short 15 of 35 labelled frames") and "\n" not in text
