"""Annotation parsing for every Aff-Wild2 layout (SPEC §1), built on small files written here."""

import re
from pathlib import Path

import numpy as np
import pytest

import tasks as T
from data import annotations as A


def write(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header] + rows) + "\n")
    return path


def test_va_file_with_invalid_rows(tmp_path):
    f = write(tmp_path / "v1.txt", "valence,arousal", ["0.1,0.2", "-5,-5", "-1,1", "0.5,-5"])
    lab = A.read_label_file(f)
    assert lab.task == "VA" and lab.track == "v1" and len(lab) == 4
    np.testing.assert_allclose(lab.values[0], [0.1, 0.2], rtol=1e-6)
    assert lab.valid.tolist() == [True, False, True, False]


@pytest.mark.parametrize("names", [T.EXPR_NAMES_7, T.EXPR_NAMES_8])
def test_expr_file_both_headers(tmp_path, names):
    f = write(tmp_path / "e.txt", ",".join(names), ["0", "-1", str(len(names) - 1), "3"])
    lab = A.read_label_file(f, split="Train_Set")
    assert lab.task == "EXPR" and lab.names == names and lab.split == "Train_Set"
    assert lab.values.tolist() == [0, -1, len(names) - 1, 3]
    assert lab.valid.tolist() == [True, False, True, True]


@pytest.mark.parametrize("names", [T.AU_NAMES_8, T.AU_NAMES_12])
def test_au_file_per_entry_validity(tmp_path, names):
    k = len(names)
    rows = [",".join(["1"] * k), ",".join(["-1"] * k), ",".join(["0"] * (k - 1) + ["-1"])]
    lab = A.read_label_file(write(tmp_path / "a.txt", ",".join(names), rows))
    assert lab.values.shape == (3, k) and lab.valid.shape == (3, k)
    assert lab.valid[0].all() and not lab.valid[1].any() and lab.valid[2].sum() == k - 1


def test_errors_name_file_and_line(tmp_path):
    with pytest.raises(A.AnnotationError, match=r"bad\.txt:1: .*unrecognised header"):
        A.read_label_file(write(tmp_path / "bad.txt", "valence;arousal", ["0,0"]))
    with pytest.raises(A.AnnotationError, match=r"bad2\.txt:3: non-numeric"):
        A.read_label_file(write(tmp_path / "bad2.txt", "valence,arousal", ["0,0", "x,0.1"]))
    with pytest.raises(A.AnnotationError, match=r"bad3\.txt:2: expected 2 values"):
        A.read_label_file(write(tmp_path / "bad3.txt", "valence,arousal", ["0.1"]))
    with pytest.raises(A.AnnotationError, match=r"bad4\.txt:3: expression code must be an integer"):
        A.read_label_file(write(tmp_path / "bad4.txt", ",".join(T.EXPR_NAMES_7), ["1", "2.5"]))
    with pytest.raises(A.AnnotationError, match=r"empty\.txt:1: empty"):
        (tmp_path / "empty.txt").write_text("")
        A.read_label_file(tmp_path / "empty.txt")
    with pytest.raises(A.AnnotationError, match="expected AU"):
        A.read_label_file(write(tmp_path / "x.txt", "valence,arousal", ["0,0"]), task="AU")


@pytest.mark.parametrize("layout", ["2020", "2021", "2022"])
def test_folder_layouts(tmp_path, layout):
    dirs = {"2020": ("VA_Set", "EXPR_Set", "AU_Set", "Training_Set"),
            "2021": ("VA_Set", "EXPR_Set", "AU_Set", "Train_Set"),
            "2022": ("VA_Estimation_Challenge", "EXPR_Recognition_Challenge", "AU_Detection_Challenge",
                     "Train_Set")}[layout]
    root = tmp_path / "annotations"
    au = T.AU_NAMES_8 if layout == "2020" else T.AU_NAMES_12
    expr = T.EXPR_NAMES_8 if layout == "2022" else T.EXPR_NAMES_7
    write(root / dirs[0] / dirs[3] / "vid1.txt", "valence,arousal", ["0,0"] * 3)
    write(root / dirs[0] / "Validation_Set" / "vid2_left.txt", "valence,arousal", ["0,0"] * 2)
    write(root / dirs[1] / dirs[3] / "vid1.txt", ",".join(expr), ["1"] * 3)
    write(root / dirs[2] / "Validation_Set" / "vid2_right.txt", ",".join(au), [",".join(["0"] * len(au))])
    labels = A.read_annotations(tmp_path)  # the parent of annotations/ is accepted too
    assert set(labels["VA"]) == {"vid1", "vid2_left"}
    assert labels["VA"]["vid1"].split == "Train_Set" and labels["VA"]["vid2_left"].split == "Validation_Set"
    assert labels["EXPR"]["vid1"].names == expr
    assert labels["AU"]["vid2_right"].names == au
    val = A.read_annotations(root, splits=("Validation_Set",))
    assert set(val["VA"]) == {"vid2_left"} and val["EXPR"] == {}


def test_track_in_two_splits_is_an_error(tmp_path):
    write(tmp_path / "VA_Set" / "Train_Set" / "v.txt", "valence,arousal", ["0,0"])
    write(tmp_path / "VA_Set" / "Validation_Set" / "v.txt", "valence,arousal", ["0,0"])
    with pytest.raises(A.AnnotationError, match="also in"):
        A.read_annotations(tmp_path)


def test_no_annotations_is_an_error(tmp_path):
    with pytest.raises(A.AnnotationError, match="no annotation folders"):
        A.read_annotations(tmp_path)


def test_mtl_file(tmp_path):
    aus = ",".join(["0"] * 11 + ["1"])
    rows = [f"vidA/00001.jpg,0.5,-0.25,3,{aus}", f"vidA/00003.jpg,-5,-5,-1,{','.join(['-1'] * 12)}",
            f"vidB_left/00002.jpg,0.1,0.2,7,{aus}"]
    f = write(tmp_path / "validation_set_annotations.txt", A.MTL_HEADER, rows)
    out = A.read_mtl_file(f, split="Validation_Set")
    va, expr, au = out["VA"]["vidA"], out["EXPR"]["vidA"], out["AU"]["vidA"]
    assert len(va) == 3  # frames 1..3, frame 2 not listed → invalid
    assert va.valid.tolist() == [True, False, False] and expr.values.tolist() == [3, -1, -1]
    assert au.valid[0].all() and not au.valid[1:].any() and au.values[0, -1] == 1
    assert out["EXPR"]["vidB_left"].values.tolist() == [-1, 7]
    # read_annotations falls back to the MTL file when no uni-task folders exist
    assert set(A.read_annotations(tmp_path, splits=("val",))["EXPR"]) == {"vidA", "vidB_left"}


def test_mtl_errors(tmp_path):
    with pytest.raises(A.AnnotationError, match=r"m\.txt:1: expected header"):
        A.read_mtl_file(write(tmp_path / "m.txt", "image,v,a", []))
    with pytest.raises(A.AnnotationError, match=r"m2\.txt:2: bad image name"):
        A.read_mtl_file(write(tmp_path / "m2.txt", A.MTL_HEADER, ["vid,0,0,0," + ",".join(["0"] * 12)]))


def test_fit_length_pads_and_truncates(tmp_path, caplog):
    lab = A.read_label_file(write(tmp_path / "v.txt", "valence,arousal", ["0.1,0.1", "0.2,0.2", "0.3,0.3"]))
    with caplog.at_level("INFO"):
        longer = A.fit_length(lab, 5)
    assert "3 label lines for 5 frames" in caplog.text
    assert longer.values.shape == (5, 2) and longer.valid.tolist() == [True] * 3 + [False] * 2
    assert np.all(longer.values[3:] == A.VA_INVALID)
    shorter = A.fit_length(lab, 2)
    assert shorter.values.shape == (2, 2) and shorter.valid.all()
    assert A.fit_length(lab, 3) is lab
    au = A.read_label_file(write(tmp_path / "a.txt", ",".join(T.AU_NAMES_12), [",".join(["1"] * 12)]))
    padded = A.fit_length(au, 3)
    assert padded.values.shape == (3, 12) and padded.valid.sum() == 12 and np.all(padded.values[1:] == -1)


def test_split_names_and_video_lists(tmp_path):
    assert T.canonical_split("Training_Set") == T.canonical_split("train") == "Train_Set"
    assert T.canonical_split("val") == "Validation_Set"
    with pytest.raises(ValueError, match="unknown split"):
        T.canonical_split("Test_Set")
    (tmp_path / "list.txt").write_text("vid1.mp4\n\nvid2_left\n# comment\n")
    assert A.read_video_list(tmp_path / "list.txt") == ["vid1", "vid2_left"]


def test_out_of_range_values_warn_once_per_file_and_become_invalid(tmp_path, caplog):
    f = write(tmp_path / "v.txt", "valence,arousal", ["0.1,0.2", "7.5,0.1", "-5,-5", "nan,0.3", "0.2,inf"])
    with caplog.at_level("WARNING"):
        lab = A.read_label_file(f)
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert f"{f}:3: 3 lines with values out of range or not a number (first: '7.5,0.1')" in warnings[0].getMessage()
    assert lab.valid.tolist() == [True, False, False, False, False]
    assert np.isfinite(lab.values).all()  # NaN/inf became the invalid marker, not a value a loss could meet
    caplog.clear()
    rows = [",".join(["0"] * 11 + ["1"]), ",".join(["nan"] + ["0"] * 11), ",".join(["0.5"] + ["1"] * 11)]
    au = A.read_label_file(write(tmp_path / "a.txt", ",".join(T.AU_NAMES_12), rows))
    assert not au.valid[1, 0] and not au.valid[2, 0] and au.valid[1:, 1:].all()  # NaN/0.5 are not AU 0
    assert "a.txt:3: 2 lines" in caplog.text
    caplog.clear()
    expr = A.read_label_file(write(tmp_path / "e.txt", ",".join(T.EXPR_NAMES_7), ["0", "7", "-1", "12"]))
    assert expr.valid.tolist() == [True, False, False, False] and expr.values.tolist() == [0, -1, -1, -1]
    assert "e.txt:3: 2 lines" in caplog.text and "(first: '7')" in caplog.text
    caplog.clear()
    A.read_label_file(write(tmp_path / "ok.txt", "valence,arousal", ["0.1,0.2", "-5,-5", "1,-1"]))
    assert caplog.text == ""


def test_out_of_range_values_in_the_mtl_file(tmp_path, caplog):
    aus = ",".join(["0"] * 12)
    rows = [f"v/00001.jpg,0.1,0.2,3,{aus}", f"v/00002.jpg,0.1,0.2,9,{aus}", f"v/00003.jpg,nan,0.2,3,{aus}"]
    with caplog.at_level("WARNING"):
        out = A.read_mtl_file(write(tmp_path / "m.txt", A.MTL_HEADER, rows))
    assert caplog.text.count("out of range") == 1 and "m.txt:3: 2 lines" in caplog.text
    assert out["EXPR"]["v"].valid.tolist() == [True, False, True]
    assert out["VA"]["v"].valid.tolist() == [True, True, False]


def test_length_difference_beyond_the_tolerance_is_a_warning(tmp_path, caplog):
    assert A.length_tolerance(90) == 10 and A.length_tolerance(18000) == 180
    lab = A.read_label_file(write(tmp_path / "v.txt", "valence,arousal", ["0.1,0.1"] * 1100))
    with caplog.at_level("INFO"):
        A.fit_length(lab, 1090)
        A.fit_length(lab, 100)
    small, big = caplog.records
    assert small.levelname == "INFO" and "1100 label lines for 1090 frames, truncating" in small.getMessage()
    assert big.levelname == "WARNING"
    assert "1100 label lines for 100 frames (+1000, more than the 10 tolerated)" in big.getMessage()


@pytest.mark.parametrize("line", ["../../secret/00001.jpg", "../00001.jpg", "..", "a/../b", "-rf", ".hidden"])
def test_lists_refuse_names_that_are_not_plain(tmp_path, line):
    f = tmp_path / "VA_test_set.txt"
    f.write_text(f"good_video\n{line}\n")
    with pytest.raises(A.AnnotationError, match=rf"^{re.escape(str(f))}:2: ") as e:
        A.read_video_list(f)
    assert "\n" not in str(e.value)


def test_lists_of_images_with_a_header(tmp_path):
    f = tmp_path / "MTL_test_set.txt"
    f.write_text("image,valence,arousal,expression,aus\nv1/00001.jpg,\nv1_left/00002.jpg\n")
    assert A.read_video_list(f) == ["v1/00001.jpg", "v1_left/00002.jpg"]


def test_track_and_image_names_from_annotations_must_be_plain(tmp_path):
    write(tmp_path / "VA_Set" / "Validation_Set" / "-x.txt", "valence,arousal", ["0,0"])
    with pytest.raises(A.AnnotationError, match=r"-x\.txt: '-x' is not a plain file name"):
        A.read_annotations(tmp_path, splits=("val",))
    aus = ",".join(["0"] * 12)
    for image, why in (("../x/00001.jpg", "bad image name"), ("x/00000.jpg", "numbered from 1")):
        with pytest.raises(A.AnnotationError, match=rf"m\.txt:2: .*{why}"):
            A.read_mtl_file(write(tmp_path / "m.txt", A.MTL_HEADER, [f"{image},0,0,0,{aus}"]))
