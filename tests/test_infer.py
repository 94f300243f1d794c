"""Inference: app.inference equals per-sample dataset evaluation; test_val_aff2.py on splits and on any video."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from toy_db import make_toy_db

import test_val_aff2
from app import inference
from app.split_run import PredictError, check_serves
from data.clips import ClipDataset
from data.reader import decode_frame, open_store
from data.video import read_frame_times
from models.registry import build_model, load_model
from tasks import get_edition, get_layout
from utils.inputs import InputSpec
from utils.outputs import decide, output_scores

TINY = InputSpec(clip_len=3, dilation=2, size=16, mask="tsav", audio_seconds=0.3)
FRAME32 = InputSpec.frame(size=32)
SCORE_KEYS = ("va", "expr_prob", "au_prob", "logits")


def tiny_model(model: str = "tsav", layout: str = "abaw2021", spec: InputSpec = TINY) -> torch.nn.Module:
    """A randomly initialised model (seed 0) taking ``spec``, in eval mode."""
    torch.manual_seed(0)
    return build_model(model, layout, input_spec=spec).eval()


def tiny_checkpoint(path: Path, model: str = "tsav", layout: str = "abaw2021", spec: InputSpec = TINY) -> Path:
    """A train.py-like checkpoint (weights with arch, layout and input settings) of ``tiny_model``."""
    m = tiny_model(model, layout, spec)
    torch.save({"state_dict": m.state_dict(), **m.settings()}, path)
    return path


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    """TSAV (abaw2021 layout) taking the TINY input (overrides conftest's published-size model)."""
    return tiny_model()


@pytest.fixture(scope="module")
def frame_model() -> torch.nn.Module:
    return tiny_model("resnet18", spec=FRAME32)


def per_sample_scores(model, db: Path, track: str) -> dict[str, np.ndarray]:
    """The reference: the dataset's own samples of every frame of the track, one batch, the model's prepare."""
    ds = ClipDataset(db, None, "abaw2021", spec=model.input_spec, tracks=[track], labels=False)
    raw = torch.utils.data.default_collate([ds[i] for i in ds.track_range(track)])
    with torch.no_grad():
        out = model(model.prepare(raw, torch.device("cpu")))
    return {k: v.numpy() for k, v in output_scores(out, model.layout).items()}


def in_memory_frames(db: Path, track: str, face: np.ndarray) -> np.ndarray:
    """(n, 112, 112, 4) uint8 RGB + TSAV mask of every frame of a track, zeros without a face."""
    with open_store(str(db)).env.begin() as txn:
        return np.stack([decode_frame(txn, track, i, "tsav") if face[i] else np.zeros((112, 112, 4), np.uint8)
                         for i in range(len(face))])


def assert_same_scores(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], atol: float = 1e-5) -> None:
    assert sorted(got) == sorted(ref)
    for key in ref:
        assert got[key].shape == ref[key].shape, key
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=atol, err_msg=key)


@pytest.mark.parametrize("track", ["a", "b_left"])  # a: faceless frames 5-6; b: no audio
def test_inference_equals_per_sample_evaluation(toy, model, track):
    fast = inference.predict_source(model, inference.db_track_source(str(toy), track), batch_size=7, chunk=11)
    ref = per_sample_scores(model, toy, track)
    assert_same_scores(fast, ref)
    n = len(ref["logits"])
    assert fast["logits"].shape == (n, 22) and fast["va"].shape == (n, 2) and np.all(np.abs(fast["va"]) <= 1)
    np.testing.assert_allclose(fast["expr_prob"].sum(1), 1, atol=1e-5)
    assert fast["au_prob"].shape == (n, 12) and np.all((fast["au_prob"] >= 0) & (fast["au_prob"] <= 1))


def test_chunk_batch_and_workers_do_not_change_outputs(toy, model):
    src = inference.db_track_source(str(toy), "a")
    a = inference.predict_source(model, src, batch_size=64, chunk=1000)
    b = inference.predict_source(model, src, batch_size=3, chunk=4, workers=2)
    assert_same_scores(b, a)


def test_in_memory_source_equals_database_source(toy, model):
    src = inference.db_track_source(str(toy), "a")
    mem = inference.TrackSource("a", src.times, src.face, src.mel_db, frames=in_memory_frames(toy, "a", src.face))
    assert_same_scores(inference.predict_source(model, mem), inference.predict_source(model, src))


def test_targets_give_the_rows_of_predicting_every_frame(toy, model):
    """Only some frames (e.g. validation frames): the same rows, in sorted order, as predicting all and picking."""
    sources = [inference.db_track_source(str(toy), t) for t in ("a", "b_left", "c")]
    every = inference.predict_sources(model, sources, batch_size=5, chunk=7)
    targets = [np.array([29, 0, 6, 13, 5, 13]), None, np.array([], np.int64)]  # unsorted, a repeat; all; none
    got = inference.predict_sources(model, sources, targets=targets, batch_size=5, chunk=7)
    assert_same_scores(got[0], {k: v[[0, 5, 6, 13, 29]] for k, v in every[0].items()})
    assert_same_scores(got[1], every[1])
    assert {k: v.shape for k, v in got[2].items()} == {k: (0, v.shape[1]) for k, v in every[2].items()}
    with pytest.raises(IndexError, match="track a: frames to predict outside 0..29"):
        inference.predict_sources(model, sources[:1], targets=[np.array([3, 30])])
    assert not model.training  # put back in eval mode as it came


def test_a_frame_model_predicts_a_database_track(toy, frame_model):
    """The frame kind (one RGB frame, no mask, no audio) through the same path as the clip+audio kind."""
    src = inference.db_track_source(str(toy), "a")
    got = inference.predict_source(frame_model, src, batch_size=8, chunk=9)
    n = len(src)
    layout = get_layout("abaw2021")
    assert {k: v.shape for k, v in got.items()} == {"va": (n, 2), "expr_prob": (n, 7), "au_prob": (n, 12),
                                                    "logits": (n, layout.num_outputs)}
    assert_same_scores(got, per_sample_scores(frame_model, toy, "a"))
    flipped = inference.predict_source(frame_model, src, flip_tta=True)
    assert not np.allclose(flipped["logits"], got["logits"])
    dec = decide(got, layout, get_edition("abaw2021"))
    assert dec["VA"].shape == (n, 2) and np.all(np.abs(dec["VA"]) <= 1)
    np.testing.assert_array_equal(dec["EXPR"], got["expr_prob"].argmax(1))
    assert dec["AU"].shape == (n, 12) and set(np.unique(dec["AU"])) <= {0, 1}
    np.testing.assert_array_equal(dec["AU"], (got["au_prob"] >= 0.5).astype(int))


def test_flip_tta_and_smoothing(toy, model):
    src = inference.db_track_source(str(toy), "a")
    plain = inference.predict_source(model, src)
    tta = inference.predict_source(model, src, flip_tta=True)
    assert tta["logits"].shape == plain["logits"].shape and not np.allclose(tta["logits"], plain["logits"])
    assert inference.smooth(plain, 1) is plain
    sm = inference.smooth(plain, 5)
    assert sm["va"].shape == plain["va"].shape
    np.testing.assert_allclose(sm["va"][10], plain["va"][8:13].mean(0), atol=1e-6)
    np.testing.assert_allclose(sm["expr_prob"][10], plain["expr_prob"][8:13].mean(0), atol=1e-6)
    np.testing.assert_array_equal(sm["logits"], plain["logits"])  # raw logits are not smoothed


def test_faceless_frames_are_filled_from_their_neighbours():
    face = np.array([False, True, True, False, False, False, True, False])
    va = np.arange(16, dtype=float).reshape(8, 2)
    expr = np.arange(8)[:, None] * 10.0
    out = inference.fill_faceless({"va": va, "expr_prob": expr, "au_prob": np.eye(8, 3)}, face)
    np.testing.assert_allclose(out["va"][:, 0], [2, 2, 4, 6, 8, 10, 12, 12])  # linear inside, held at the ends
    np.testing.assert_array_equal(out["expr_prob"][:, 0], [10, 10, 20, 20, 20, 60, 60, 60])  # nearest, earlier on ties
    np.testing.assert_array_equal(out["au_prob"], np.eye(8, 3)[[1, 1, 2, 2, 2, 6, 6, 6]])
    assert inference.fill_faceless({"va": va}, np.zeros(8, bool))["va"] is va  # no face at all: the model's output
    assert inference.fill_faceless({"va": va}, np.ones(8, bool))["va"] is va


def test_layouts_map_to_editions():
    preds = {"va": np.array([[1.5, -0.2]]), "expr_prob": np.eye(8)[[7]] * 0.6 + np.eye(8)[[2]] * 0.4,
             "au_prob": np.linspace(0, 1, 12)[None]}
    lay = get_layout("abaw3")
    out21 = decide(preds, lay, get_edition("abaw2021"), "default", 0.5)
    assert out21["EXPR"][0] == 2  # 'Other' is not a class of 2021: argmax over the 7 classes
    assert out21["VA"].tolist() == [[1.0, -0.2]] and out21["AU"].shape == (1, 12)
    assert decide(preds, lay, get_edition("abaw3"), "default", 0.5)["EXPR"][0] == 7
    tsav = get_layout("abaw2020")
    check_serves(tsav, get_edition("abaw2020"))  # its own edition: served
    au8 = {"va": preds["va"], "expr_prob": np.eye(7)[[3]], "au_prob": np.linspace(0, 1, 8)[None]}
    out20 = decide(au8, tsav, get_edition("abaw2020"))
    assert out20["EXPR"][0] == 3 and out20["AU"].tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    with pytest.raises(PredictError, match="cannot serve abaw2021: it has no output for AU7"):
        check_serves(tsav, get_edition("abaw2021"))


# --- test_val_aff2.py end to end ------------------------------------------------------------------
def lines_of(path: Path) -> int:
    return len(path.read_text().splitlines())


@pytest.mark.slow
def test_val_split_writes_checks_and_scores(mini_quick, mini_db, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "tiny.pth")
    out = tmp_path / "val"
    out.mkdir()
    (out / "notes.txt").write_text("x")  # not ours: kept
    ann = mini_quick / "annotations" / "abaw2021"
    rc = test_val_aff2.main(["--checkpoint", str(ckpt), "--db", str(mini_db), "--split", "val", "--out", str(out),
                             "--annotations", str(ann), "--workers", "0", "--edition", "abaw2021"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "raw", "scores.json", "submission"]
    meta = json.loads((mini_quick / "meta.json").read_text())
    frames = {t["name"]: v["n_frames"] for v in meta["videos"] for t in v["tracks"]}
    files = sorted((out / "submission").rglob("*.txt"))
    assert files and {f.parent.name for f in files} == {"VA_Set", "EXPR_Set", "AU_Set"}
    for f in files:
        assert lines_of(f) == frames[f.stem] + 1, f  # header + one line per decoded frame
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores) == {"edition", "va", "expr", "au", "total"}
    raw = np.load(out / "raw" / f"{files[0].stem}.npz")
    assert raw["logits"].shape == (frames[files[0].stem], 22)
    assert not list(tmp_path.glob(".val.*"))  # no staging folder left behind


@pytest.mark.slow
def test_test_split_covers_two_person_tracks_and_faceless_frames(mini_quick, mini_db, tmp_path):
    meta = json.loads((mini_quick / "meta.json").read_text())
    two = next(v for v in meta["videos"] if len(v["tracks"]) == 2)
    faceless = next(v for v in meta["videos"] if any(t["faceless_frames"] for t in v["tracks"]))
    names = {t["name"]: v["path"] for v in (two, faceless) for t in v["tracks"]}
    lst = tmp_path / "VA_test_set.txt"
    lst.write_text("\n".join(names) + "\n")
    out = tmp_path / "test"
    rc = test_val_aff2.main(["--checkpoint", str(tiny_checkpoint(tmp_path / "t.pth")), "--db", str(mini_db),
                             "--split", "test", "--test-lists", str(lst), "--out", str(out), "--workers", "0"])
    assert rc == 0
    for track, path in names.items():
        n = len(read_frame_times(mini_quick / path))
        assert lines_of(out / "submission" / "VA_Set" / f"{track}.txt") == n + 1
    assert not (out / "submission" / "EXPR_Set").exists()  # the list names the VA task only


@pytest.mark.slow
def test_any_video_writes_csv_plot_and_overlay(mini_quick, tmp_path):
    meta = json.loads((mini_quick / "meta.json").read_text())
    v = next(v for v in meta["videos"] if any(t["faceless_frames"] for t in v["tracks"]) and v["has_audio"])
    src = mini_quick / v["path"]
    out = tmp_path / "one"
    rc = test_val_aff2.main(["--checkpoint", str(tiny_checkpoint(tmp_path / "t.pth")), "--video", str(src),
                             "--out", str(out), "--overlay"])
    assert rc == 0
    name = src.stem
    rows = (out / f"{name}.csv").read_text().splitlines()
    n = len(read_frame_times(src))
    assert len(rows) == n + 1
    header = rows[0].split(",")
    assert header[:9] == ["frame", "timestamp", "face_id", "success", "confidence", "audio", "valence", "arousal",
                          "expression"]
    assert {r.split(",")[5] for r in rows[1:]} == {"1"}  # the video has sound
    assert "p_Neutral" in header and "p_AU12" in header and header[-1] == "AU26"
    success = [int(r.split(",")[3]) for r in rows[1:]]
    assert 0 in success and 1 in success  # the faceless stretch is there, and so are faces
    assert all(r.split(",")[6] for r in rows[1:])  # faceless frames too: the model's own prediction by default
    assert (out / f"{name}_timeline.png").read_bytes()[:4] == b"\x89PNG"
    with av.open(str(out / f"{name}_overlay.mp4")) as c:
        assert c.streams.audio, "overlay keeps the audio"
    assert len(read_frame_times(out / f"{name}_overlay.mp4")) == n


def test_bad_inputs_give_one_line_errors(toy, tmp_path, capsys):
    ckpt = tiny_checkpoint(tmp_path / "t.pth")
    assert test_val_aff2.main(["--checkpoint", str(ckpt), "--video", str(tmp_path / "nope.mp4"),
                               "--out", str(tmp_path / "o")]) == 2
    assert "nope.mp4: no such video file" in capsys.readouterr().err
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert test_val_aff2.main(["--checkpoint", str(bad), "--db", str(toy), "--out", str(tmp_path / "o")]) == 2
    assert "bad.pth: not a readable PyTorch checkpoint" in capsys.readouterr().err
    old = tiny_checkpoint(tmp_path / "tsav2020.pth", layout="abaw2020")
    assert test_val_aff2.main(["--checkpoint", str(old), "--db", str(toy), "--edition", "abaw2021",
                               "--out", str(tmp_path / "o")]) == 2
    assert "cannot serve abaw2021" in capsys.readouterr().err
    no_test = make_toy_db(tmp_path / "notest", with_val=False)
    assert test_val_aff2.main(["--checkpoint", str(ckpt), "--db", str(no_test), "--split", "val",
                               "--out", str(tmp_path / "o")]) == 2
    assert "no track in the val split" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_failed_run_leaves_the_previous_output_alone(toy, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    calls = []

    def boom(*a, **k):
        calls.append(1)
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(inference, "predict_source", boom)
    rc = test_val_aff2.main(["--checkpoint", str(tiny_checkpoint(tmp_path / "t.pth")), "--db", str(toy),
                             "--split", "test", "--out", str(out)])
    assert rc == 2 and calls
    assert (out / "keep.txt").read_text() == "old" and not (out / "submission").exists()


def test_split_mode_keeps_the_models_faceless_predictions_unless_asked_to_fill(toy, tmp_path):
    """Track a (frames 5-6 without a face) as a test track: raw scores = app.inference's by default, and
    ``--faceless fill`` replaces exactly its faceless frames from the face frames (fill_faceless)."""
    ckpt = tiny_checkpoint(tmp_path / "t.pth")
    lst = tmp_path / "VA_test_set.txt"
    lst.write_text("a\n")
    base = ["--checkpoint", str(ckpt), "--db", str(toy), "--split", "test", "--test-lists", str(lst),
            "--workers", "0", "--device", "cpu"]
    assert test_val_aff2.main(base + ["--out", str(tmp_path / "model")]) == 0
    assert test_val_aff2.main(base + ["--out", str(tmp_path / "fill"), "--faceless", "fill"]) == 0
    src = inference.db_track_source(str(toy), "a")
    ref = inference.predict_source(load_model(ckpt), src)
    own, filled = (np.load(tmp_path / run / "raw" / "a.npz") for run in ("model", "fill"))
    np.testing.assert_array_equal(own["face"], src.face)
    for key in SCORE_KEYS:
        np.testing.assert_allclose(own[key], ref[key], rtol=0, atol=1e-5, err_msg=key)
    refill = inference.fill_faceless(ref, src.face)
    for key in SCORE_KEYS:
        np.testing.assert_allclose(filled[key], refill[key], rtol=0, atol=1e-5, err_msg=key)
        np.testing.assert_array_equal(filled[key][src.face], own[key][src.face])  # face frames untouched
    assert not np.allclose(filled["va"][5:7], own["va"][5:7])
    va = [line.split(",") for line in (tmp_path / "fill" / "submission" / "VA_Set" / "a.txt").read_text().split()[1:]]
    np.testing.assert_allclose(np.array(va, float), refill["va"], atol=1e-3)


# --- split mode: only the run's own files are replaced, only once complete -----------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_split_mode_replaces_only_its_own_outputs(toy, tmp_path, capsys):
    w = tmp_path / "W"
    w.mkdir()
    db = Path(shutil.copytree(toy, w / "db"))  # the case: the database inside --out
    (w / "notes.txt").write_text("x")
    stale = w / f".split.partial-{dead_pid()}-abcd1234"  # a killed run's staging folder
    (stale / "submission").mkdir(parents=True)
    base = ["--checkpoint", str(tiny_checkpoint(tmp_path / "t.pth")), "--db", str(db), "--out", str(w),
            "--workers", "0"]
    assert test_val_aff2.main(base + ["--split", "test"]) == 0
    assert (w / "raw" / "d.npz").is_file() and lines_of(w / "submission" / "VA_Set" / "d.txt") == 13
    assert not stale.exists()
    before = tree(w)
    # val scored against annotations that are not there: exit 2 after predicting, nothing changed
    assert test_val_aff2.main(base + ["--split", "val", "--tracks", "c", "--annotations", str(tmp_path / "none")]) == 2
    assert "none: no annotation folders" in capsys.readouterr().err
    assert tree(w) == before and sorted(p.name for p in w.iterdir()) == ["db", "notes.txt", "raw", "submission"]
    # one set: a run without raw outputs takes the earlier raw/ away
    assert test_val_aff2.main(base + ["--split", "test", "--no-raw"]) == 0
    assert sorted(p.name for p in w.iterdir()) == ["db", "notes.txt", "submission"]
    assert tree(w / "db") == {k.removeprefix("db/"): v for k, v in before.items() if k.startswith("db/")}


def test_split_mode_refuses_to_replace_a_user_path(toy, tmp_path, capsys):
    w = tmp_path / "W"
    db = Path(shutil.copytree(toy, w / "raw"))
    rc = test_val_aff2.main(["--checkpoint", str(tiny_checkpoint(tmp_path / "t.pth")), "--db", str(db),
                             "--split", "test", "--out", str(w)])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--db {db} is inside {w / 'raw'}, which this run replaces" in err
    assert (db / "data.mdb").is_file() and sorted(p.name for p in w.iterdir()) == ["raw"]


def test_an_unsafe_track_name_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    from toy_db import add_video

    from data import store

    db = tmp_path / "db"
    with store.Store(db, readonly=False) as s:
        s.write_schema(["tsav", "mtmt"])
        add_video(s, "evil", {"../../x": {}}, 12)
    monkeypatch.setattr(inference, "predict_source", lambda *a, **k: pytest.fail("predicted an unsafe track"))
    out = tmp_path / "deep" / "er" / "out"
    rc = test_val_aff2.main(["--checkpoint", str(tiny_checkpoint(tmp_path / "t.pth")), "--db", str(db),
                             "--split", "test", "--out", str(out)])
    assert rc == 2
    assert "track name: '../../x' is not a plain file name" in capsys.readouterr().err
    assert not (tmp_path / "deep").exists() and not (tmp_path / "x").exists()


@pytest.mark.parametrize("flag,value", [("--batch-size", "0"), ("--chunk", "0"), ("--workers", "-1"),
                                        ("--smooth", "0"), ("--detect-every", "0"), ("--au-threshold", "1.5"),
                                        ("--batch-size", "-3")])
def test_nonsensical_numbers_are_refused_when_parsing(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        test_val_aff2.main(["--checkpoint", "x.pth", "--video", "v.mp4", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"argument {flag}: expected" in err and repr(value) in err


def test_timeline_has_an_au_raster_only_for_layouts_with_aus(tmp_path, monkeypatch):
    from app import video_report
    from tasks import AU_NAMES_12, EXPR_NAMES_7

    figures = []
    monkeypatch.setattr(video_report, "save_figure", lambda fig, path, dpi=100: figures.append(fig) or Path(path))
    t, face = np.arange(50) / 30, np.ones(50, bool)
    preds, decisions = {"va": np.zeros((50, 2))}, {"EXPR": np.zeros(50, int)}
    video_report.plot_timeline(tmp_path / "a.png", t, face, preds, decisions, EXPR_NAMES_7, ())
    video_report.plot_timeline(tmp_path / "b.png", t, face, preds, {**decisions, "AU": np.zeros((50, 12), int)},
                               EXPR_NAMES_7, AU_NAMES_12)
    assert [len(f.axes) for f in figures] == [2, 3]
    assert [f.axes[-1].get_xlabel() for f in figures] == ["time (s)"] * 2
