"""TSAV's reference audio window (``--audio-window reference``): ``data.audio.reference_window_db`` against an
independent numpy implementation of the published formula, and end to end from a database built with
--store-pcm through the training dataset, the inference path and the streaming (--video) path."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import subset

import create_database
from app import inference, video_stream
from data import audio, pcm, store, video
from data.clips import ClipDataset, DatasetError
from models.prepare import finish_audio
from models.registry import build_model
from utils.inputs import AUDIO_DB, InputSpec

SR = 44100
FIRST = "1-30-480x270"  # one face, AAC audio
SILENT = "4-30-400x300"  # no audio stream


# --- an independent implementation (numpy only, float64) ----------------------------------------------
def ref_segment(t: float, seconds: float) -> np.ndarray:
    """The published cut: sample offset and count, with the formula's own float operations."""
    offset = max(int(t * SR - (seconds / 2) * SR), 0)
    num = min(int(seconds * SR), max(int(t * SR), int(0.02 * SR)))
    return np.arange(offset, offset + num)


def htk_filters() -> np.ndarray:
    """(513, 64): triangles between 66 points equally spaced on 2595·log10(1 + f/700), no normalisation."""
    top = 2595.0 * math.log10(1.0 + (SR // 2) / 700.0)
    edges = [700.0 * (10.0 ** (top * k / 65 / 2595.0) - 1.0) for k in range(66)]
    freqs = np.linspace(0.0, SR // 2, 513)
    fb = np.zeros((513, 64))
    for m in range(64):
        a, b, c = edges[m], edges[m + 1], edges[m + 2]
        for i, f in enumerate(freqs):
            if a < f <= b:
                fb[i, m] = (f - a) / (b - a)
            elif b < f < c:
                fb[i, m] = (c - f) / (c - b)
    return fb


FILTERS = htk_filters()
HANN = np.zeros(1024)
HANN[71:71 + 882] = [0.5 - 0.5 * math.cos(2 * math.pi * n / 882) for n in range(882)]  # periodic, centred


def ref_window(x: np.ndarray, t: float, columns: int = 1001, seconds: float = 10.0) -> np.ndarray:
    """(64, columns) normalised network input the published pipeline computes for a frame at t."""
    idx = ref_segment(t, seconds)
    seg = x[idx[idx < len(x)]].astype(np.float64) / 32768.0  # TSAV read the 16-bit wav as int16 / 32768
    power = np.zeros((64, 0))
    if len(seg):
        padded = np.concatenate([seg[1:513][::-1], seg, seg[-513:-1][::-1]])  # reflect, edges not repeated
        n = 1 + len(seg) // 441
        frames = np.stack([padded[j * 441:j * 441 + 1024] * HANN for j in range(n)])
        power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2 @ FILTERS).T
    power = power[:, -columns:]
    power = np.concatenate([np.zeros((64, columns - power.shape[1])), power], axis=1)  # zeros on the LEFT
    db = 10.0 * np.log10(np.maximum(power, 1e-10))
    db = np.maximum(db, db.max() - 80.0)
    return (db + 14.8) / 19.895


def normalised(db: np.ndarray) -> np.ndarray:
    return finish_audio(torch.from_numpy(db)[None])[0, 0].numpy()


def signal(seconds: float, seed: int = 0) -> np.ndarray:
    """int16 PCM: gliding tones with a changing loudness over faint noise, a silent second in the middle."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.sin(2 * np.pi * (220 + 40 * t) * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.3 * t))
    x += 0.1 * np.sin(2 * np.pi * 1750 * t) * (t % 3 < 1.5) + 0.002 * rng.standard_normal(len(t))
    x[(t > 7.0) & (t < 8.0)] = 0.0
    return audio.to_pcm16(x)


LONG = signal(20.0)
TIMES = [0.0, 0.01, 0.5, 4.9, 9.99, 10.0, 12.34, 12.3433, 16.7, 17.366666, 19.99, 20.5]


@pytest.mark.parametrize("t", TIMES)
def test_reference_window_equals_an_independent_implementation(t):
    want = ref_window(LONG, t)
    got = audio.reference_window_db(LONG, t, 1001, 10.0)
    assert got.shape == (1, 64, 1001) and got.dtype == np.float32
    assert np.abs(normalised(got) - want).max(axis=0).max() <= 1e-4
    as_float = audio.reference_window_db(LONG.astype(np.float32) / 32768, t, 1001, 10.0)
    np.testing.assert_array_equal(as_float, got)  # int16 as stored = the float samples TSAV read


@pytest.mark.parametrize("t", [0.0, 0.02, 1.0, 3.0, 3.69, 4.5])
def test_reference_window_of_a_signal_shorter_than_the_window(t):
    short = signal(3.7, seed=1)
    got = normalised(audio.reference_window_db(short, t, 1001, 10.0))
    assert np.abs(got - ref_window(short, t)).max() <= 1e-4


@pytest.mark.parametrize(("seconds", "t"), [(1.0, 0.3), (1.0, 6.123), (2.5, 13.0), (0.25, 5.05)])
def test_reference_window_for_other_lengths(seconds, t):
    columns = InputSpec(audio_seconds=seconds).audio_columns  # 0.25 s: 26 columns for W = 25, the last kept
    got = normalised(audio.reference_window_db(LONG, t, columns, seconds))
    assert got.shape == (64, columns) and np.abs(got - ref_window(LONG, t, columns, seconds)).max() <= 1e-4


def test_reference_window_differs_from_the_centred_one_where_the_issue_says():
    """Early frames are not centred (left padding); interior frames on the 10 ms grid agree."""
    mel = audio.logmel_db(LONG.astype(np.float32) / 32768)
    early = np.abs(normalised(audio.reference_window_db(LONG, 2.0, 1001, 10.0)) - audio.window(mel, 2.0)[0])
    interior = np.abs(normalised(audio.reference_window_db(LONG, 12.34, 1001, 10.0)) - audio.window(mel, 12.34)[0])
    assert early.mean() > 0.1
    assert np.median(interior[:, 2:-2]) < 2e-3  # float16 storage of the centred log-mel


def test_pcm16_quantisation():
    x = np.array([0.0, 1.0, -1.0, 2.0, 0.5 / 32768, 1.5 / 32768, -1.2 / 32768], np.float32)
    np.testing.assert_array_equal(audio.to_pcm16(x), [0, 32767, -32768, 32767, 0, 2, -1])


def test_reference_windows_on_a_device_equal_the_function():
    w = pcm.ReferenceWindows(LONG, 1001, 10.0)
    got = w(np.array([0.0, 4.9, 12.3433]))
    for k, t in enumerate([0.0, 4.9, 12.3433]):
        np.testing.assert_allclose(got[k].numpy(), audio.reference_window_db(LONG, t, 1001, 10.0), atol=1e-4)
    silent = pcm.ReferenceWindows(None, 1001, 10.0)(np.array([1.0]))
    np.testing.assert_array_equal(normalised(silent[0].numpy()), audio.silent_window()[0])


# --- end to end: database → dataset, inference, --video ------------------------------------------------
def build_db(mini_quick: Path, videos: Path, out: Path, *extra: str) -> None:
    rc = create_database.main([str(a) for a in ("--videos", videos, "--annotations", mini_quick / "annotations" /
                                                "abaw2021", "--out", out, "--workers", "1", *extra)])
    assert rc == 0


@pytest.fixture(scope="module")
def dbs(mini_quick, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(videos folder, database without PCM, the same database resumed with --store-pcm)."""
    tmp = tmp_path_factory.mktemp("ref_audio")
    videos = subset(mini_quick, [FIRST, SILENT], tmp / "videos")
    plain, with_pcm = tmp / "plain", tmp / "pcm"
    build_db(mini_quick, videos, plain)
    shutil.copytree(plain, with_pcm)
    build_db(mini_quick, videos, with_pcm, "--store-pcm")  # a resumed build: rebuilds both with their PCM
    return videos, plain, with_pcm


def reference_spec() -> InputSpec:
    return InputSpec(clip_len=2, dilation=2, audio_window="reference")


def test_the_database_stores_the_pcm_of_the_log_mel_samples(dbs, capsys):
    videos, _, db_path = dbs
    sound = video.read_audio(str(next(videos.glob(f"{FIRST}.*"))), SR)
    with store.Store(db_path) as db:
        stored = pcm.read_pcm(db, FIRST)
        assert db.video_meta(FIRST)["pcm"] is True and "pcm" not in db.video_meta(SILENT)
        assert pcm.read_pcm(db, SILENT) is None
        mel = db.get_array(store.video_key(FIRST) + b"/logmel")
    np.testing.assert_array_equal(stored, audio.to_pcm16(sound))
    np.testing.assert_array_equal(mel, audio.logmel_db(sound))
    out = db_path.parent / "report.json"
    assert create_database.main(["--report", str(db_path), "--json", str(out)]) == 0
    rep = json.loads(out.read_text())["videos"]
    assert rep[FIRST]["pcm"] is True and rep[SILENT]["pcm"] is False
    assert " pcm " in capsys.readouterr().out


def test_dataset_serves_the_reference_window(dbs):
    _, _, db_path = dbs
    ds = ClipDataset(db_path, None, "abaw2021", spec=reference_spec(), labels=False)
    with store.Store(db_path) as db:
        stored = pcm.read_pcm(db, FIRST)
    for name in (FIRST, SILENT):
        r = ds.track_range(name)
        track = ds.tracks[ds.locate(r[0])[0]]
        for frame in (0, 1, 47, len(r) - 1):
            got = ds[r[frame]][AUDIO_DB].numpy()
            t = float(track.times[frame])
            want = (audio.reference_window_db(stored, t, 1001, 10.0) if name == FIRST
                    else np.full((1, 64, 1001), audio.SILENCE_DB, np.float32))
            np.testing.assert_array_equal(got, want)


def test_a_database_without_pcm_is_refused_with_the_fix(dbs):
    _, plain, _ = dbs
    with pytest.raises(DatasetError, match=f"{FIRST}.*--store-pcm.*--audio-window centred"):
        ClipDataset(plain, None, "abaw2021", spec=reference_spec(), labels=False)
    ClipDataset(plain, None, "abaw2021", spec=replace(reference_spec(), audio_window="centred"), labels=False)
    model = tiny_reference_model()
    with pytest.raises(pcm.MissingPcmError, match=f"{FIRST}.*--store-pcm"):
        inference.predict_sources(model, [inference.db_track_source(str(plain), FIRST)], targets=[np.arange(3)])


def tiny_reference_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("tsav", "abaw2021", input_spec=replace(reference_spec(), size=32)).eval()


class Spy:
    """Stands in for the model run of the inference path (a TSAV forward takes seconds on a CPU) and records the
    raw audio windows it is handed."""

    def __init__(self, monkeypatch):
        self.seen: list[np.ndarray] = []

        def run_model(model, raw, *a, **kw):
            self.seen.append(raw[AUDIO_DB].detach().cpu().numpy().copy())
            return {"logits": torch.zeros(len(raw[AUDIO_DB]), 1)}

        monkeypatch.setattr(inference, "run_model", run_model)


def test_inference_serves_the_reference_window(dbs, monkeypatch):
    _, _, db_path = dbs
    model = tiny_reference_model()
    spy = Spy(monkeypatch)
    src = inference.db_track_source(str(db_path), FIRST)
    targets = np.array([0, 1, 2, 30, 31, len(src) - 1])
    inference.predict_sources(model, [src], targets=[targets], batch_size=4, chunk=32)
    got = np.concatenate(spy.seen)
    with store.Store(db_path) as db:
        stored = pcm.read_pcm(db, FIRST)
    for k, frame in enumerate(targets):
        want = audio.reference_window_db(stored, float(src.times[frame]), 1001, 10.0)
        np.testing.assert_allclose(got[k], want, atol=1e-4, rtol=0)
    spy.seen.clear()
    silent = inference.db_track_source(str(db_path), SILENT)
    inference.predict_sources(model, [silent], targets=[np.array([0, 5])], batch_size=4)
    np.testing.assert_array_equal(np.concatenate(spy.seen), np.full((2, 1, 64, 1001), audio.SILENCE_DB, np.float32))


def test_video_stream_serves_the_reference_window(dbs, monkeypatch):
    """--video mode: RollingClips computes the window from the PCM it decoded, at each pushed frame's time."""
    videos, _, _ = dbs
    path = str(next(videos.glob(f"{FIRST}.*")))
    model = tiny_reference_model()
    spy = Spy(monkeypatch)
    samples = video_stream.read_pcm16(path, True)
    with pytest.raises(ValueError, match="PCM"):
        video_stream.RollingClips(model, audio.logmel_db(samples.astype(np.float32) / 32768), chunk=4)
    clips = video_stream.RollingClips(model, None, batch_size=3, chunk=4, pcm=samples)
    times = [0.0, 1 / 30, 2 / 30, 0.7, 3.3333, 5.01]
    for t in times:
        clips.push(None, t)
    clips.finish()
    got = np.concatenate(spy.seen)
    for k, t in enumerate(times):
        np.testing.assert_allclose(got[k], audio.reference_window_db(samples, t, 1001, 10.0), atol=1e-4, rtol=0)
