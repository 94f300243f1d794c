"""evaluate.py --compare: agreement of two submissions or two raw/ folders written here by hand."""

import json

import numpy as np
import pytest

import evaluate
from app import submission as S
from app.split_run import save_npz
from app.submission.compare import CompareError, compare_sets, print_comparison
from tasks import get_layout

LENGTHS = {"v1": 10, "v2": 6}


def base_preds() -> dict:
    rng = np.random.default_rng(3)
    return {"VA": {t: np.round(rng.uniform(-0.5, 0.5, (n, 2)), 3) for t, n in LENGTHS.items()},
            "EXPR": {t: rng.integers(0, 7, n) for t, n in LENGTHS.items()},
            "AU": {t: rng.integers(0, 2, (n, 12)) for t, n in LENGTHS.items()}}


def changed(preds: dict) -> dict:
    """B: 2 EXPR frames, 2 AU frames (3 AU entries), valence +0.25 on one frame and arousal −0.1 on another."""
    b = {task: {t: v.copy() for t, v in tracks.items()} for task, tracks in preds.items()}
    b["EXPR"]["v1"][[2, 7]] = (b["EXPR"]["v1"][[2, 7]] + 1) % 7
    b["AU"]["v1"][4, [0, 5]] ^= 1
    b["AU"]["v2"][1, 11] ^= 1
    b["VA"]["v1"][3, 0] += 0.25
    b["VA"]["v2"][0, 1] -= 0.1
    return b


@pytest.fixture
def pair(tmp_path):
    preds = base_preds()
    a = S.write_per_video(tmp_path / "a", preds, "abaw2021")
    b = S.write_per_video(tmp_path / "b", changed(preds), "abaw2021")
    return a, b, preds


def test_known_differences(pair, tmp_path, capsys):
    a, b, _ = pair
    out = tmp_path / "agree.json"
    assert evaluate.main(["--compare", str(a), str(b), "--edition", "abaw2021", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["kind"] == "submission"
    t = r["tasks"]
    assert [t[k]["frames"] for k in ("VA", "EXPR", "AU")] == [16, 16, 16]
    assert t["EXPR"]["equal_fraction"] == 14 / 16
    assert t["AU"]["all_equal_fraction"] == 14 / 16
    assert t["AU"]["mean_au_equal_fraction"] == pytest.approx(1 - 3 / (16 * 12))
    assert t["AU"]["per_au_equal_fraction"]["AU1"] == 15 / 16 and t["AU"]["per_au_equal_fraction"]["AU2"] == 1
    assert t["VA"]["max_abs_diff"] == pytest.approx({"valence": 0.25, "arousal": 0.1}, abs=1e-6)
    assert t["VA"]["mean_abs_diff"] == pytest.approx({"valence": 0.25 / 16, "arousal": 0.1 / 16}, abs=1e-6)
    assert t["EXPR"]["worst_tracks"] == [{"track": "v1", "frames": 10, "disagreement": 0.2,
                                          "logits_max_abs_diff": None}]
    assert [w["track"] for w in t["AU"]["worst_tracks"]] == ["v2", "v1"]  # 1 of 6 frames before 1 of 10
    text = capsys.readouterr().out
    assert "0.8750" in text and "Tracks that disagree most" in text


def test_identical_sets_agree(pair, capsys):
    a, _, _ = pair
    r = compare_sets(a, a, "abaw2021")
    assert all(s["worst_tracks"] == [] for s in r["tasks"].values())
    assert r["tasks"]["VA"]["max_abs_diff"] == {"valence": 0.0, "arousal": 0.0}
    print_comparison(r)
    assert "Every shared frame agrees" in capsys.readouterr().out


def test_missing_track_and_frames_reported(pair):
    a, b, _ = pair
    (b / "EXPR_Set" / "v2.txt").unlink()
    lines = (b / "VA_Set" / "v1.txt").read_text().splitlines()
    (b / "VA_Set" / "v1.txt").write_text("\n".join(lines[:-2]) + "\n")  # B's v1 lacks frames 9 and 10
    t = compare_sets(a, b, "abaw2021")["tasks"]
    assert t["EXPR"]["tracks"] == 1 and t["EXPR"]["frames"] == 10
    assert t["EXPR"]["only_a"]["tracks"] == ["v2"] and t["EXPR"]["only_a"]["frames"] == 6
    assert t["EXPR"]["only_b"] == {"tracks": [], "frames": 0, "frames_of_shared_tracks": 0, "first_frames": []}
    assert t["VA"]["frames"] == 14
    assert t["VA"]["only_a"]["frames"] == 2 and t["VA"]["only_a"]["first_frames"] == ["v1/00009", "v1/00010"]


def test_single_file_against_folder(pair, tmp_path):
    a, _, preds = pair
    f = S.write_single_file(tmp_path / "expr.txt", "EXPR", preds["EXPR"], {"v1": [1, 2, 5], "v2": [6]})
    t = compare_sets(a, f, "abaw2021")["tasks"]
    assert list(t) == ["VA", "EXPR", "AU"]  # tasks only A has are reported, all their tracks only in A
    assert t["EXPR"]["frames"] == 4 and t["EXPR"]["equal_fraction"] == 1.0
    assert t["EXPR"]["only_a"]["frames_of_shared_tracks"] == 12
    assert t["AU"]["frames"] == 0 and t["AU"]["only_a"]["tracks"] == ["v1", "v2"]
    assert t["AU"]["all_equal_fraction"] is None


LAYOUT = get_layout("abaw2021")  # blocks au 0:12, expr 12:20 (7 classes + 1 unused), va 20:22


def write_raw(folder, logits_by_track):
    s = LAYOUT.slices
    for track, logits in logits_by_track.items():
        expr = logits[:, s["expr"]][:, :7]
        preds = {"logits": logits.astype(np.float32),
                 "va": np.tanh(logits[:, s["va"]]).astype(np.float32),
                 "expr_prob": (np.exp(expr) / np.exp(expr).sum(1, keepdims=True)).astype(np.float32),
                 "au_prob": (1 / (1 + np.exp(-logits[:, s["au"]]))).astype(np.float32)}
        n = len(logits)
        save_npz(folder / f"{track}.npz", preds, np.arange(n) / 30, np.ones(n, bool), LAYOUT)
    return folder


def test_raw_folders(tmp_path, capsys):
    rng = np.random.default_rng(5)
    a = {"t1": rng.normal(0, 1, (8, 22)), "t2": rng.normal(0, 1, (4, 22)), "t3": rng.normal(0, 1, (3, 22))}
    b = {t: v.copy() for t, v in a.items() if t != "t3"}
    b["t1"][2, 12 + np.argmin(a["t1"][2, 12:19])] += 10  # a new EXPR winner on frame 3
    b["t1"][4, 0] = -a["t1"][4, 0]  # AU1 logit of frame 5 changes sign
    b["t2"][1, 20] += 0.5  # raw valence
    write_raw(tmp_path / "A", a)
    write_raw(tmp_path / "B", b)
    r = compare_sets(tmp_path / "A", tmp_path / "B", "abaw2021")
    assert r["kind"] == "raw"
    t = r["tasks"]
    assert t["EXPR"]["frames"] == 12 and t["EXPR"]["equal_fraction"] == 11 / 12
    assert t["EXPR"]["logits_block"] == "expr" and t["EXPR"]["logits_max_abs_diff"] == pytest.approx(10, abs=1e-5)
    assert t["AU"]["all_equal_fraction"] == 11 / 12
    assert t["AU"]["logits_max_abs_diff"] == pytest.approx(2 * abs(a["t1"][4, 0]), abs=1e-5)
    v = a["t2"][1, 20]
    assert t["VA"]["max_abs_diff"]["valence"] == pytest.approx(abs(np.tanh(v + 0.5) - np.tanh(v)), abs=1e-6)
    assert t["VA"]["max_abs_diff"]["arousal"] == 0 and t["VA"]["logits_max_abs_diff"] == pytest.approx(0.5, abs=1e-5)
    for task in ("VA", "EXPR", "AU"):
        assert t[task]["only_a"]["tracks"] == ["t3"] and t[task]["only_a"]["frames"] == 3
    assert t["VA"]["worst_tracks"][0]["track"] == "t2"
    print_comparison(r)
    text = capsys.readouterr().out
    assert "logits max |Δ|" in text and "only in A: t3" in text


def test_mixed_pair_refused(pair, tmp_path, capsys):
    a, _, _ = pair
    raw = write_raw(tmp_path / "raw", {"t1": np.zeros((2, 22))})
    with pytest.raises(CompareError, match="cannot compare"):
        compare_sets(a, raw, "abaw2021")
    assert evaluate.main(["--compare", str(raw), str(a)]) == 2
    err = capsys.readouterr().err
    assert str(raw) in err and str(a) in err


def test_unreadable_inputs(pair, tmp_path, capsys):
    a, _, _ = pair
    assert evaluate.main(["--compare", str(a), str(tmp_path / "nope")]) == 2
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "t.npz").write_bytes(b"not a zip")
    assert evaluate.main(["--compare", str(tmp_path / "bad"), str(tmp_path / "bad")]) == 2
    out = tmp_path / "run"
    (out / "submission").mkdir(parents=True)
    (out / "raw").mkdir()
    with pytest.raises(CompareError, match="submission/ or raw/"):
        compare_sets(out, out, "abaw2021")
    with pytest.raises(SystemExit):  # a --check flag with --compare is wrong usage
        evaluate.main(["--compare", str(a), str(a), "--videos", "x"])
    assert "t.npz" in capsys.readouterr().err
