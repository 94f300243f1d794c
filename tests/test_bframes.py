"""Videos with B-frames (issue 10, item 7) on the quick mini Aff-Wild2's three B-frame videos: H.264 in
AVI (decoded frames get decode-order timestamps), MPEG-4 part 2 in AVI and H.264 in MP4. data/video.py
must give each frame its presentation time and the generator's picture, the audio must start with the
first shown frame, and the overlay video (app/video_report.write_overlay) must mux, as it must for
the variable-frame-rate video."""

import json
from pathlib import Path

import av
import numpy as np
import pytest

from app.video_report import overlay_pts, write_overlay
from data.video import iter_frames, read_audio, read_frame_times
from tools import synthetic as S
from tools.synthetic.video_codecs import first_video_time

B_FRAME_VIDEOS = ("video9", "video12", "3-30-640x360")  # H.264 in AVI, MPEG-4 in AVI, H.264 in MP4
VFR = "6-30-480x272"  # 33/40 ms frames: at the encoder's former 1/fps clock two frames shared a pts
EXPR = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise", "Other")
AUS = ("AU1", "AU2", "AU4")


@pytest.fixture(scope="module")
def videos(mini_quick) -> dict[str, dict]:
    return {v["name"]: v for v in json.loads((mini_quick / "meta.json").read_text())["videos"]}


def job_of(root: Path, name: str) -> S.VideoJob:
    spec = next(s for s in S.video_specs(quick=True) if s.name == name)
    return S.plan_video(spec, 0, root)


def nearest_rendered(rgb: np.ndarray, job: S.VideoJob, bg: S.Background, k: int) -> int:
    """Which of the generator's frames k-1, k, k+1 the picture is closest to (mean absolute error)."""
    errors = {j: np.abs(rgb.astype(np.int16) - S.render_frame(job, bg, j)[0]).mean() for j in (k - 1, k, k + 1)}
    return min(errors, key=errors.get)


def test_the_mini_dataset_meets_decode_order_timestamps(mini_quick, videos):
    assert {n for n, v in videos.items() if v["b_frames"]} == set(B_FRAME_VIDEOS)
    path = mini_quick / videos["video9"]["path"]
    with av.open(str(path)) as c:
        raw = [f.pts for f in c.decode(c.streams.video[0])]
    assert any(b < a for a, b in zip(raw, raw[1:]))  # what the muxer refused with "Invalid argument"


@pytest.mark.parametrize("name", B_FRAME_VIDEOS)
def test_frames_get_the_generators_times_and_pictures(mini_quick, videos, name):
    path = mini_quick / videos[name]["path"]
    job = job_of(mini_quick, name)
    frames = list(iter_frames(path))
    times = np.array([f.time for f in frames])
    assert len(frames) == videos[name]["n_frames"] == len(job.times)
    np.testing.assert_allclose(times, job.times, atol=1e-9)
    assert np.array_equal(read_frame_times(path), times)
    assert np.array_equal(read_frame_times(path, decode=True), times)
    bg = S.background(job)
    ks = range(1, len(frames) - 1, 4)
    assert [nearest_rendered(frames[k].rgb, job, bg, k) for k in ks] == list(ks)


@pytest.mark.parametrize("name", ["video9", "video12"])
def test_audio_of_b_frame_avis_starts_with_the_first_shown_frame(mini_quick, videos, name):
    """16-bit PCM read back at its own rate: sample for sample the synthesised audio from frame 0 on."""
    v = videos[name]
    assert v["video_first_pts_s"] > 0 and v["audio_codec"] == "pcm_s16le"
    spec = next(s for s in S.video_specs(quick=True) if s.name == name)
    ref = S.reference_audio(spec, seed=0)
    x = read_audio(mini_quick / v["path"], sr=v["audio_rate"])[: len(ref)]
    np.testing.assert_allclose(x, ref, atol=2 / 32767)
    frame = v["audio_rate"] // S.FPS  # one frame off would be far off
    assert np.abs(x[frame:] - ref[:-frame]).max() > 0.05


def test_overlay_pts_always_increase():
    frames = [("a", 30), ("b", None), ("c", 50), ("d", 50), ("e", 20), ("f", 90)]
    assert [p for _, p in overlay_pts(iter(frames), 10)] == [30, 40, 50, 60, 70, 90]
    assert [p for _, p in overlay_pts(iter([("a", None), ("b", None)]), 7)] == [0, 7]


@pytest.mark.parametrize("name", [*B_FRAME_VIDEOS, VFR])
def test_overlay_keeps_frames_times_and_audio(mini_quick, videos, name, tmp_path):
    v = videos[name]
    src = mini_quick / v["path"]
    n = v["n_frames"]
    rng = np.random.default_rng(0)
    preds = {"va": rng.uniform(-1, 1, (n, 2)), "expr_prob": rng.dirichlet(np.ones(len(EXPR)), n),
             "au_prob": rng.random((n, len(AUS)))}
    boxes = np.tile([20.0, 20.0, 120.0, 140.0], (n, 1))
    decisions = {"EXPR": preds["expr_prob"].argmax(1), "AU": (preds["au_prob"] >= 0.5).astype(int)}
    out = write_overlay(src, tmp_path / f"{name}_overlay.mp4", boxes, preds, decisions, EXPR, AUS)
    with av.open(str(out)) as c:
        assert c.streams.audio, "overlay keeps the audio"
        stream = c.streams.video[0]
        raw = [f.pts for f in c.decode(stream)]
    assert len(raw) == n and all(b > a for a, b in zip(raw, raw[1:]))
    # the same clock as the source: frame times, first frame, and the copied audio on it
    np.testing.assert_allclose(read_frame_times(out), read_frame_times(src), atol=1e-4)
    assert first_video_time(str(out)) == pytest.approx(first_video_time(str(src)), abs=1e-6)
    a, b = read_audio(src, sr=v["audio_rate"]), read_audio(out, sr=v["audio_rate"])
    m = min(len(a), len(b))
    assert m >= 0.95 * len(a)
    np.testing.assert_allclose(b[:m], a[:m], atol=1e-4)
    # frames in display order: each is its source frame (away from the drawn text and box)
    source = [f.rgb for f in iter_frames(src)]
    for k, frame in enumerate(iter_frames(out)):
        if 0 < k < n - 1 and k % 6 == 0:
            err = [np.abs(frame.rgb[150:].astype(np.int16) - source[j][150:]).mean() for j in (k - 1, k, k + 1)]
            assert int(np.argmin(err)) == 1, k
