"""--video: streamed prediction equals the in-memory path; outputs as one set; no audio / no face said plainly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from test_infer import FRAME32, TINY, in_memory_frames, tiny_checkpoint, tiny_model

import test_val_aff2
from app import inference, video_report, video_stream
from data import audio, build, build_plan
from data.reader import resize_frames
from data.video import read_frame_times

FAMILY_SUFFIXES = (".csv", "_timeline.png", ".npz", "_overlay.mp4")
OUTPUT_KEYS = ("va", "expr_prob", "au_prob", "logits")  # the app.inference scores of an abaw2021 model


@pytest.fixture(scope="module")
def model():
    """TSAV (abaw2021 layout) taking the TINY input (overrides conftest's published-size model)."""
    return tiny_model()


def in_memory_source(db: Path, track: str) -> inference.TrackSource:
    src = inference.db_track_source(str(db), track)
    return inference.TrackSource(track, src.times, src.face, src.mel_db,
                                 frames=in_memory_frames(db, track, src.face))


@pytest.mark.parametrize("track,chunk,batch,flip", [("a", 15, 10, False), ("b_left", 64, 24, True),
                                                    ("d", 3, 8, False)])
def test_rolling_clips_equal_the_whole_track_in_memory(toy, model, track, chunk, batch, flip):
    """a: faceless frames 5-6, audio, a batch split inside chunks; b_left: no audio, flip TTA, one chunk;
    d: chunks of 3 frames, shorter than the 4 frames of history. The reference: the whole track at once."""
    src = in_memory_source(toy, track)
    ref = inference.predict_source(model, src, batch_size=64, chunk=1000, flip_tta=flip)
    clips = video_stream.RollingClips(model, src.mel_db, batch_size=batch, chunk=chunk, flip_tta=flip)
    assert clips.spec == TINY
    for i in range(len(src)):
        clips.push(resize_frames(src.frames[i:i + 1], TINY.size)[0] if src.face[i] else None, src.times[i])
    assert clips.buffer.shape[0] == clips.history + chunk  # the rolling window never grows
    got = clips.finish()
    assert sorted(got) == sorted(ref) == sorted(OUTPUT_KEYS)
    for key in OUTPUT_KEYS:
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-5, err_msg=key)


def test_rolling_frames_of_a_frame_model_equal_the_whole_track(toy):
    """The frame kind (RGB only, no history, no audio) streams through the same rolling window."""
    frame_model = tiny_model("resnet18", spec=FRAME32)
    src = in_memory_source(toy, "a")
    ref = inference.predict_source(frame_model, src, chunk=1000)
    clips = video_stream.RollingClips(frame_model, src.mel_db, batch_size=5, chunk=8)
    assert clips.history == 0 and clips.mel is None
    for i in range(len(src)):
        rgb = resize_frames(src.frames[i:i + 1, ..., :3], FRAME32.size)[0] if src.face[i] else None
        clips.push(rgb, src.times[i])
    got = clips.finish()
    for key in OUTPUT_KEYS:
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-5, err_msg=key)
    crop = src.frames[9, ..., :3]  # the --video writer's frame: the crop alone (no mask), at the model's size
    np.testing.assert_array_equal(video_stream.model_frame(crop, None, FRAME32),
                                  resize_frames(crop[None], FRAME32.size)[0])


def test_frames_past_the_audio_read_silence(model):
    """A stream pads the log-mel for its audio only; later frames must see the same silence as a full pad."""
    mel = np.tile(np.arange(40, dtype=np.float32) / 10, (audio.N_MELS, 1)).astype(np.float16)
    times = np.arange(30) / 30.0  # 1 s of frames, 0.4 s of audio
    src = inference.TrackSource("x", times, np.zeros(30, bool), mel, frames=np.zeros((30, 112, 112, 4), np.uint8))
    ref = inference.predict_source(model, src, chunk=1000)
    clips = video_stream.RollingClips(model, mel, chunk=15)
    for t in times:
        clips.push(None, t)
    np.testing.assert_allclose(clips.finish()["logits"], ref["logits"], rtol=0, atol=1e-5)


# --- the whole --video path on real videos -------------------------------------------------------
class CollectingWriter:
    """The in-memory path as it was before streaming: every aligned frame kept, then predicted at once."""

    def __init__(self, mask: str):
        self.mask, self.frames, self.face, self.confidence, self.affines = mask, [], [], [], []

    def add(self, index, crop, lm_crop, conf=0.0, affine=None):
        frame = np.zeros((112, 112, 4), np.uint8)
        if crop is not None:
            frame[..., :3] = crop
            frame[..., 3] = video_stream.masks.render(self.mask, lm_crop)
        self.frames.append(frame)
        self.face.append(crop is not None)
        self.confidence.append(conf if crop is not None else 0.0)
        self.affines.append(np.full((2, 3), np.nan) if affine is None else np.asarray(affine, float))


def in_memory_prediction(path: Path, model) -> tuple[inference.TrackSource, CollectingWriter, dict]:
    mask = model.input_spec.mask
    writer, times = CollectingWriter(mask), []
    job = build_plan.VideoJob(str(path), "v", ["v"])
    build.run_detection(job, build_plan.BuildOptions(masks=(mask,)), {"v": writer}, build.Timer(), times)
    mel = video_stream.read_logmel(str(path), True)
    src = inference.TrackSource("v", np.asarray(times), np.asarray(writer.face), mel, frames=np.stack(writer.frames))
    return src, writer, inference.predict_source(model, src, batch_size=8, chunk=20)


@pytest.mark.slow
def test_streamed_video_equals_the_in_memory_path(mini_quick, model):
    meta = json.loads((mini_quick / "meta.json").read_text())
    v = next(v for v in meta["videos"] if any(t["faceless_frames"] for t in v["tracks"]) and v["has_audio"])
    path = mini_quick / v["path"]
    src, writer, ref = in_memory_prediction(path, model)
    got = video_stream.predict_video(str(path), model, batch_size=8, chunk=20, progress=False)
    assert got.has_audio and len(got) == len(src) == v["n_frames"]
    np.testing.assert_array_equal(got.times, src.times)
    np.testing.assert_array_equal(got.face, src.face)
    assert got.face.any() and not got.face.all()
    np.testing.assert_array_equal(got.confidence, writer.confidence)
    np.testing.assert_array_equal(got.affines, np.stack(writer.affines))
    assert sorted(got.preds) == sorted(OUTPUT_KEYS)
    for key in OUTPUT_KEYS:
        np.testing.assert_allclose(got.preds[key], ref[key], rtol=0, atol=1e-5, err_msg=key)


@pytest.mark.slow
def test_a_video_without_audio_is_flagged(mini_quick, tmp_path, capsys):
    meta = json.loads((mini_quick / "meta.json").read_text())
    src = mini_quick / next(v for v in meta["videos"] if not v["has_audio"])["path"]
    out = tmp_path / "o"
    rc = test_val_aff2.main(["--checkpoint", str(tiny_checkpoint(tmp_path / "t.pth")), "--video", str(src),
                             "--out", str(out)])
    assert rc == 0
    assert "no audio stream: the predictions come from the face alone" in capsys.readouterr().err
    rows = [r.split(",") for r in (out / f"{src.stem}.csv").read_text().splitlines()]
    assert rows[0][5] == "audio" and {r[5] for r in rows[1:]} == {"0"}
    assert all(r[6] for r in rows[1:])  # faces were found: predictions are there
    assert (out / f"{src.stem}_timeline.png").exists() and (out / f"{src.stem}.npz").exists()


# --- --video on a plain video without any face (fast: nothing for the tracker to follow) ---------
def plain_video(path: Path, frames: int = 12, sound: bool = True) -> Path:
    """An AVI of grey gradients (MPEG-4) with a 440 Hz tone (PCM) or without audio."""
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=30)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        aus = c.add_stream("pcm_s16le", rate=44100) if sound else None
        if aus is not None:
            aus.layout = "mono"
        for i in range(frames):
            img = np.full((48, 64, 3), 60 + 10 * i, np.uint8)
            img[:, :32] //= 2
            c.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            if aus is not None:
                t = np.arange(i * 1470, (i + 1) * 1470) / 44100
                tone = (0.2 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)[None]
                af = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
                af.sample_rate, af.pts, af.time_base = 44100, i * 1470, Fraction(1, 44100)
                c.mux(aus.encode(af))
        c.mux(vs.encode())
        if aus is not None:
            c.mux(aus.encode())
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "t.pth")


def run_video(ckpt: Path, video: Path, out: Path, *extra: str) -> int:
    return test_val_aff2.main(["--checkpoint", str(ckpt), "--video", str(video), "--out", str(out), *extra])


@pytest.mark.parametrize("sound", [True, False])
def test_no_face_at_all_writes_an_empty_prediction_csv(ckpt, tmp_path, capsys, sound):
    src = plain_video(tmp_path / "plain.avi", sound=sound)
    out = tmp_path / "o"
    assert run_video(ckpt, src, out, "--overlay") == 0
    err = capsys.readouterr().err
    assert "no face found in any of its 12 frames" in err
    assert ("no audio stream" in err) != sound
    rows = [r.split(",") for r in (out / "plain.csv").read_text().splitlines()]
    header = rows[0]
    assert len(rows) == 1 + len(read_frame_times(src)) == 13
    assert all(r[3] == "0" and r[5] == str(int(sound)) for r in rows[1:])
    assert all(len(r) == len(header) and r[6:] == [""] * (len(header) - 6) for r in rows[1:])
    assert sorted(p.name for p in out.iterdir()) == ["plain.csv"]  # no plot, raw outputs or overlay


def test_a_video_run_replaces_its_set_and_nothing_else(ckpt, tmp_path):
    src = plain_video(tmp_path / "plain.avi")
    out = tmp_path / "o"
    out.mkdir()
    for suffix in FAMILY_SUFFIXES:  # an earlier run's set (another checkpoint)
        (out / f"plain{suffix}").write_text("old")
    (out / "other.csv").write_text("another video's")
    pid = subprocess.Popen([sys.executable, "-c", "pass"])
    pid.wait()
    stale = out / f".plain.video.partial-{pid.pid}-abcd1234"  # a run killed before it published
    stale.mkdir()
    (stale / "plain.csv").write_text("half")
    (out / ".plain.csv.partial").write_text("half")  # the temp name of earlier versions
    assert run_video(ckpt, src, out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["other.csv", "plain.csv"]  # the old plot etc. went too
    assert (out / "plain.csv").read_text().startswith("frame,")


def test_a_failed_video_run_leaves_the_old_set(ckpt, tmp_path, monkeypatch, capsys):
    src = plain_video(tmp_path / "plain.avi")
    out = tmp_path / "o"
    out.mkdir()
    for suffix in FAMILY_SUFFIXES:
        (out / f"plain{suffix}").write_text("old")
    written = video_report.write_frame_csv

    def csv_then_fail(path, *a, **k):
        written(path, *a, **k)  # the new CSV is complete in the staging folder ...
        raise RuntimeError("disk full")  # ... and the run dies before the rest

    monkeypatch.setattr(video_report, "write_frame_csv", csv_then_fail)
    assert run_video(ckpt, src, out) == 2
    assert "disk full" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(f"plain{s}" for s in FAMILY_SUFFIXES)
    assert all((out / f"plain{s}").read_text() == "old" for s in FAMILY_SUFFIXES)
    missing = tmp_path / "fresh"
    assert run_video(ckpt, src, missing) == 2
    assert not missing.exists()  # a failed run does not leave an empty --out behind


def test_the_video_and_checkpoint_cannot_be_replaced(ckpt, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    src = plain_video(out / "plain.avi")
    inside = out / "plain.npz"
    shutil.copy(ckpt, inside)  # a checkpoint kept under a name this run would replace
    assert run_video(inside, src, out) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert inside.read_bytes() == ckpt.read_bytes() and src.exists()
    link = tmp_path / "o2" / "plain.npz"
    link.parent.mkdir()
    os.symlink(ckpt, link)  # only the link is replaced: the checkpoint it points to is safe
    assert run_video(link, src, link.parent) == 0
    assert not link.exists() and ckpt.exists()


def test_the_report_of_an_expression_only_model_leaves_the_va_and_au_cells_out(tmp_path):
    """A layout without VA or AU (e.g. expr8, lsd): empty VA cells, no AU columns, a timeline without them."""
    from app import video_report

    n, names = 5, ("Neutral", "Anger", "Happiness")
    prob = np.eye(3)[[0, 1, 2, 2, 0]].astype(np.float32)
    preds, decisions = {"expr_prob": prob}, {"EXPR": prob.argmax(1)}
    times, face = np.arange(n) / 30, np.ones(n, bool)
    path = video_report.write_frame_csv(tmp_path / "v.csv", times, face, np.ones(n), preds, decisions, names, ())
    rows = path.read_text().splitlines()
    assert rows[0].endswith("valence,arousal,expression,p_Neutral,p_Anger,p_Happiness")
    assert rows[2].split(",")[6:] == ["", "", "Anger", "0.0000", "1.0000", "0.0000"]
    png = video_report.plot_timeline(tmp_path / "t.png", times, face, preds, decisions, names, ())
    assert png.stat().st_size > 0
