"""Late fusion of raw outputs (test_val_aff2.py --fuse, app/fusion.py): by class and AU name, weighted,
onto the edition's vocabulary; written, checked and scored like a split run; unusable inputs refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_mtl import toy_val_annotations  # the validation MTL file of the toy database's b_left / b_right

import evaluate
import test_val_aff2
from app.inference import db_track_source
from app.split_run import MTL_FILE, save_npz
from tasks import AU_NAMES_8, AU_NAMES_12, EXPR_NAMES_7, EXPR_NAMES_8, get_layout

TRACKS = ("b_left", "b_right", "c", "d")  # the toy database's val tracks, c (EXPR val only) and d (test)


def preds_for(layout: str, n: int, seed: int) -> dict[str, np.ndarray]:
    """Random scores of a layout (what output_scores gives), as save_npz takes them."""
    lay, rng = get_layout(layout), np.random.default_rng(seed)
    expr = rng.random((n, lay.num_expr_classes)) + 0.01
    return {"va": rng.uniform(-1, 1, (n, 2)), "expr_prob": expr / expr.sum(1, keepdims=True),
            "au_prob": rng.random((n, lay.num_au)), "logits": rng.normal(size=(n, lay.num_outputs))}


def make_raw(folder: Path, db: Path, layout: str, seed: int, first: dict[str, list[float]]) -> Path:
    """A raw/ folder as test_val_aff2.py writes it; frame 1 of b_left gets the values of ``first``."""
    for i, track in enumerate(TRACKS):
        source = db_track_source(str(db), track)
        preds = preds_for(layout, len(source), seed + i)
        if track == "b_left":
            for key, row in first.items():
                preds[key][0] = row
        save_npz(folder / f"{track}.npz", preds, source.times, source.face, get_layout(layout))
    return folder


# Frame 1 of b_left, by hand. TSAV-like input A (abaw2020 layout: 7 classes, 8 AUs, no AU7), weight 3;
# EMMA input B (8 classes with Other, 12 AUs), weight 1.
A_FIRST = {"va": [0.4, -0.2], "expr_prob": [0.1, 0.5, 0.1, 0.1, 0.1, 0.05, 0.05],
           "au_prob": [0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]}  # AU1 0.8
B_FIRST = {"va": [0.0, 0.6], "expr_prob": [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.1, 0.6],
           "au_prob": [0.0, 0.1, 0.1, 0.1, 0.7, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]}  # AU1 0.0, AU7 0.7


def make_inputs(root: Path, db: Path) -> tuple[Path, Path]:
    return (make_raw(root / "A" / "raw", db, "abaw2020", 10, A_FIRST),
            make_raw(root / "B" / "raw", db, "emma", 20, B_FIRST))


def fuse(a: Path, b: Path, db: Path, out: Path, *more: str) -> int:
    return test_val_aff2.main(["--fuse", str(a), str(b), "--db", str(db), "--out", str(out), *more])


def first_row(out: Path) -> list[str]:
    rows = (out / "submission" / MTL_FILE).read_text().splitlines()
    return next(r for r in rows if r.startswith("b_left/00001.jpg")).split(",")[1:]


def test_fusion_by_name_and_weight_into_an_mtl_submission(toy, tmp_path, capsys):
    a, b = make_inputs(tmp_path, toy)
    ann, out = toy_val_annotations(tmp_path / "ann"), tmp_path / "fused"
    val = ["--split", "val", "--edition", "abaw4", "--annotations", str(ann)]
    assert fuse(a, b, toy, out, "--fuse-weights", "3,1", *val) == 0, capsys.readouterr()
    printed = capsys.readouterr().out
    assert "Late fusion into fused: VA, EXPR 8, AU 12" in printed and "3 (75%)" in printed and "1 (25%)" in printed
    assert "2 tracks, 48 frames from 2 inputs" in printed  # the MTL file lists b_left and b_right only

    with np.load(out / "raw" / "b_left.npz") as z:
        fused = {k: z[k] for k in z.files}
    assert str(fused["layout"]) == "fused"
    assert tuple(fused["expr_names"]) == EXPR_NAMES_8 and tuple(fused["au_names"]) == AU_NAMES_12
    # frame 1 by hand: shared classes and AUs (3a + b) / 4; Other and AU7 are B's alone (weight renormalised)
    assert fused["va"][0] == pytest.approx([0.3, 0.0])
    assert fused["expr_prob"][0] == pytest.approx([0.0875, 0.3875, 0.0875, 0.0875, 0.0875, 0.05, 0.0625, 0.6])
    assert fused["au_prob"][0][[0, 4]] == pytest.approx([0.6, 0.7])  # AU1, AU7
    # every frame, column by column by name
    with np.load(a / "b_left.npz") as za, np.load(b / "b_left.npz") as zb:
        pa, pb = za["expr_prob"], zb["expr_prob"]
        assert fused["expr_prob"][:, :7] == pytest.approx((3 * pa + pb[:, :7]) / 4)
        assert fused["expr_prob"][:, 7] == pytest.approx(pb[:, 7])
        for j, au in enumerate(AU_NAMES_12):
            want = (zb["au_prob"][:, j] if au not in AU_NAMES_8 else
                    (3 * za["au_prob"][:, AU_NAMES_8.index(au)] + zb["au_prob"][:, j]) / 4)
            assert fused["au_prob"][:, j] == pytest.approx(want), au
        assert fused["va"] == pytest.approx((3 * za["va"] + zb["va"]) / 4)
        assert np.array_equal(fused["times"], za["times"]) and np.array_equal(fused["face"], za["face"])
    # the MTL row of frame 1: V, A, EXPR = Other (B's 0.6 beats the shared 0.3875), AU1 (0.6) and AU7 (0.7) on
    row = first_row(out)
    assert row[:3] == ["0.300", "0.000", "7"] and row[3] == "1" and row[3 + 4] == "1"
    assert evaluate.main(["--check", str(out / "submission" / MTL_FILE), "--annotations", str(ann),
                          "--edition", "abaw4"]) == 0
    assert "0 problems" in capsys.readouterr().out
    scores = json.loads((out / "scores.json").read_text())
    assert scores["edition"] == "abaw4" and scores["total"] is not None

    # again into the same --out, equal weights (the default): the earlier set is replaced, as run_split does
    assert fuse(a, b, toy, out, *val) == 0, capsys.readouterr()
    with np.load(out / "raw" / "b_left.npz") as z:
        assert z["va"][0] == pytest.approx([0.2, 0.2]) and z["au_prob"][0][0] == pytest.approx(0.4)
    assert first_row(out)[3] == "0"  # AU1 (0.8 + 0.0) / 2 < 0.5
    # but never into an --out whose files it would replace while reading them
    assert fuse(out / "raw", b, toy, out, *val) == 2
    assert "inside" in capsys.readouterr().err and (out / "raw" / "b_left.npz").is_file()


def test_fusion_per_video_on_the_test_split_takes_the_editions_classes(toy, tmp_path, capsys):
    a, b = make_inputs(tmp_path, toy)
    out = tmp_path / "test"
    assert fuse(a, b, toy, out, "--split", "test", "--edition", "abaw2021") == 0, capsys.readouterr()
    assert sorted(p.name for p in (out / "submission").iterdir()) == ["AU_Set", "EXPR_Set", "VA_Set"]
    lines = (out / "submission" / "EXPR_Set" / "d.txt").read_text().splitlines()
    assert len(lines) == 1 + 12 and {int(x) for x in lines[1:]} <= set(range(7))  # B's Other is not abaw2021's
    with np.load(out / "raw" / "d.npz") as z:
        assert tuple(z["expr_names"]) == EXPR_NAMES_7 and z["expr_prob"].shape == (12, 7)
    assert not (out / "scores.json").exists()


def test_fusion_refuses_unusable_inputs(toy, tmp_path, capsys):
    ann = toy_val_annotations(tmp_path / "ann")
    val = ["--split", "val", "--edition", "abaw4", "--annotations", str(ann)]

    def refused(case: str, spoil, *more: str) -> str:
        a, b = make_inputs(tmp_path / case, toy)
        spoil(a, b)
        out = tmp_path / case / "out"
        assert fuse(a, b, toy, out, *val, *more) == 2
        assert not out.exists()  # nothing written, not even the folder
        return capsys.readouterr().err

    def shorter(a: Path, b: Path) -> None:
        with np.load(b / "b_left.npz") as z:
            data = {k: z[k][:23] if z[k].ndim and len(z[k]) == 24 else z[k] for k in z.files}
        np.savez_compressed(b / "b_left.npz", **data)

    def shifted(a: Path, b: Path) -> None:
        with np.load(b / "b_right.npz") as z:
            data = {k: z[k] for k in z.files}
        data["times"] = data["times"] + 0.01
        np.savez_compressed(b / "b_right.npz", **data)

    err = refused("short", shorter)
    assert f"{tmp_path / 'short' / 'B' / 'raw' / 'b_left.npz'}: 23 frames, but track b_left has 24" in err
    err = refused("times", shifted)
    assert "B/raw/b_right.npz: frame times differ from track b_right" in err
    err = refused("missing", lambda a, b: (a / "b_right.npz").unlink())
    assert "A/raw/b_right.npz: missing" in err
    err = refused("garbage", lambda a, b: (b / "b_left.npz").write_bytes(b"not a zip"))
    assert "B/raw/b_left.npz: cannot read as .npz" in err
    err = refused("empty", lambda a, b: [p.unlink() for p in b.glob("*.npz")], "--fuse-weights", "1,1")
    assert "no .npz raw outputs" in err

    a, b = make_inputs(tmp_path / "same", toy)
    twice_tsav = make_raw(tmp_path / "same" / "C" / "raw", toy, "abaw2020", 30, A_FIRST)
    assert fuse(a, twice_tsav, toy, tmp_path / "o", *val) == 2
    assert "no input has AU7,AU10,AU23,AU24,AU26 of abaw4" in capsys.readouterr().err
    assert fuse(a, tmp_path / "nowhere", toy, tmp_path / "o", *val) == 2
    assert "nowhere: no such folder" in capsys.readouterr().err

    with pytest.raises(SystemExit) as e:  # flags are refused when parsed
        fuse(a, b, toy, tmp_path / "o", "--fuse-weights", "1")
    assert e.value.code == 2 and "1 weight(s) for 2 --fuse folders" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fuse(a, b, toy, tmp_path / "o", "--fuse-weights", "1,-2")
    assert "expected a positive number, got '-2'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        test_val_aff2.main(["--db", str(toy)])
    assert "required: --checkpoint (or --fuse" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
