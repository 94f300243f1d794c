"""data/video.py on tiny videos encoded here with PyAV: frame order and timestamps, audio placement, errors.

Each frame shows its index as 6 black/white vertical stripes (bit k = stripe k), which survives lossy
coding; the sound is silence with one short tone burst at a known time, found again as the burst's
centre of energy after decoding and resampling to 44.1 kHz.
"""

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from data.audio import logmel_db, window
from data.video import REORDER_WINDOW, VideoError, iter_frames, presentation_frames, probe, read_audio, read_frame_times

W, H = 64, 48
BITS = 6
SR = 44100
TOLERANCE_S = 0.001


def frame_image(index: int, noise: np.random.Generator | None = None) -> np.ndarray:
    img = np.zeros((H, W, 3), np.uint8)
    for k in range(BITS):
        if index >> k & 1:
            img[:, k * 8:(k + 1) * 8] = 255
    if noise is not None:  # incompressible rows make packets large (for the truncation tests)
        img[H // 2:] = noise.integers(0, 256, (H - H // 2, W, 3), dtype=np.uint8)
    return img


def index_of(rgb: np.ndarray) -> int:
    rows = rgb[: H // 2]
    return sum(1 << k for k in range(BITS) if rows[:, k * 8 + 2:k * 8 + 6].mean() > 128)


def burst(sr: int, seconds: float, at: float, ms: float = 4.0, freq: float = 2000.0) -> np.ndarray:
    x = np.zeros(int(round(sr * seconds)), np.float32)
    n = int(sr * ms / 1000)
    i0 = int(round(at * sr)) - n // 2
    x[i0:i0 + n] = 0.8 * np.hanning(n) * np.sin(2 * np.pi * freq * np.arange(n) / sr)
    return x


def burst_time(x: np.ndarray, sr: int = SR) -> float:
    energy = x.astype(np.float64) ** 2
    return float((energy * np.arange(len(x))).sum() / energy.sum() / sr)


def write_video(path: Path, *, codec: str = "libx264", n: int = 50, fps: int = 25,
                pts_ms: list[int] | None = None, audio: tuple[str, int, np.ndarray] | None = None,
                stereo: str = "same", audio_start: float = 0.0, muxer_options: dict | None = None,
                noisy: bool = False, b_frames: int | None = None) -> Path:
    """Encode n frames (and optionally a mono signal as the audio track) into path.

    pts_ms: presentation times of the frames in milliseconds (VFR / late video start); default i / fps.
    stereo: "same" duplicates the signal in both channels, "left" puts it in the left one only.
    b_frames: max consecutive B-frames (None: the encoder's default, 3 for libx264, 0 for mpeg4).
    """
    container = av.open(str(path), "w", options=muxer_options or {})
    video = container.add_stream(codec, rate=fps, options={} if b_frames is None else {"bf": str(b_frames)})
    video.width, video.height, video.pix_fmt = W, H, "yuv420p"
    if pts_ms is not None:
        video.codec_context.time_base = video.time_base = Fraction(1, 1000)
    sound = None
    if audio is not None:  # every stream must exist before the first packet is muxed
        sound = container.add_stream(audio[0], rate=audio[1])
        sound.layout = "stereo"
    rng = np.random.default_rng(0) if noisy else None
    for i in range(n):
        frame = av.VideoFrame.from_ndarray(frame_image(i, rng), format="rgb24")
        if pts_ms is not None:
            frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
        for packet in video.encode(frame):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    if sound is not None:
        write_audio(container, sound, audio[2], stereo=stereo, start=audio_start)
    container.close()
    return path


def write_audio(container, stream, signal: np.ndarray, stereo: str, start: float) -> None:
    sr = stream.codec_context.sample_rate
    fmt = "fltp" if stream.codec_context.name == "aac" else "s16p"
    size = stream.codec_context.frame_size or 1024
    first = int(round(start * sr))
    for k in range(0, len(signal), size):
        chunk = signal[k:k + size]
        channels = np.stack([chunk, chunk if stereo == "same" else np.zeros_like(chunk)])
        if fmt == "s16p":
            channels = np.round(channels * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(channels), format=fmt, layout="stereo")
        frame.sample_rate, frame.pts, frame.time_base = sr, first + k, Fraction(1, sr)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {
        "mp4": write_video(d / "h264_aac.mp4", audio=("aac", 48000, burst(48000, 2.0, 1.0))),
        "avi": write_video(d / "mpeg4_pcm.avi", codec="mpeg4",
                           audio=("pcm_s16le", 22050, burst(22050, 2.0, 0.75)), stereo="left"),
        "silent": write_video(d / "no_audio.mp4"),
    }


def test_probe(videos):
    info = probe(videos["mp4"])
    assert (info.width, info.height, info.fps, info.num_frames) == (W, H, 25.0, 50)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert info.has_audio and info.audio_sample_rate == 48000
    assert info.video_start == 0.0 and info.audio_start == pytest.approx(0.0, abs=0.03)
    info = probe(videos["silent"])
    assert not info.has_audio and info.audio_sample_rate is None and info.audio_start is None


@pytest.mark.parametrize("kind", ["mp4", "avi"])
def test_frames_in_order_with_timestamps(videos, kind):
    frames = list(iter_frames(videos[kind]))
    assert [f.index for f in frames] == list(range(50))
    assert [index_of(f.rgb) for f in frames] == list(range(50))
    assert all(f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8 for f in frames)
    times = np.array([f.time for f in frames])
    np.testing.assert_allclose(times, np.arange(50) / 25, atol=1e-9)
    assert np.array_equal(read_frame_times(videos[kind]), times)
    assert np.array_equal(read_frame_times(videos[kind], decode=True), times)


@pytest.fixture(scope="module")
def b_frame_videos(tmp_path_factory) -> dict[str, Path]:
    """Frames stored in decode order. H.264 in AVI: the demuxer numbers packets in decode order and the
    decoder hands those numbers to the frames unsorted; MPEG-4 part 2 in AVI: the parser restores them,
    but the first frame is shown one frame after the container's zero; H.264 in MP4: stored pts."""
    d = tmp_path_factory.mktemp("bframes")
    return {
        "h264_avi": write_video(d / "h264.avi", b_frames=3,
                                audio=("pcm_s16le", 22050, burst(22050, 2.0, 0.75))),
        "mpeg4_avi": write_video(d / "mpeg4.avi", codec="mpeg4", b_frames=2,
                                 audio=("pcm_s16le", 22050, burst(22050, 2.0, 0.75))),
        "h264_mp4": write_video(d / "h264.mp4", b_frames=3),
    }


def decoded_pts(path: Path) -> list[int | None]:
    """The pts of each decoded frame exactly as the decoder hands them out."""
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(c.streams.video[0])]


def test_h264_in_avi_gives_decoded_frames_decode_order_pts(b_frame_videos):
    raw = decoded_pts(b_frame_videos["h264_avi"])
    assert any(b < a for a, b in zip(raw, raw[1:]))  # the case handled below is really there
    assert sorted(raw) == list(range(raw[0], raw[0] + 50))  # right values, on the wrong frames
    for kind in ("mpeg4_avi", "h264_mp4"):
        raw = decoded_pts(b_frame_videos[kind])
        assert all(b > a for a, b in zip(raw, raw[1:])), kind


@pytest.mark.parametrize("kind", ["h264_avi", "mpeg4_avi", "h264_mp4"])
def test_b_frames_in_display_order_with_presentation_times(b_frame_videos, kind):
    path = b_frame_videos[kind]
    frames = list(iter_frames(path))
    assert [index_of(f.rgb) for f in frames] == list(range(50))
    times = np.array([f.time for f in frames])
    np.testing.assert_allclose(times, np.arange(50) / 25, atol=1e-9)
    assert np.array_equal(read_frame_times(path), times)
    assert np.array_equal(read_frame_times(path, decode=True), times)


@pytest.mark.parametrize("kind", ["h264_avi", "mpeg4_avi"])
def test_audio_of_a_b_frame_avi_is_placed_on_the_first_shown_frame(b_frame_videos, kind):
    # the AVI shows frame 0 one frame (40 ms) after its zero, where the audio starts: the burst at
    # 0.75 s of the file is heard 0.71 s after frame 0
    assert decoded_pts(b_frame_videos[kind])[0] == 1
    assert burst_time(read_audio(b_frame_videos[kind])) == pytest.approx(0.71, abs=TOLERANCE_S)


def test_reorder_window_restores_any_displacement_it_covers():
    class Fake:
        def __init__(self, pts):
            self.pts = pts

    class FakeContainer:  # decode() is all presentation_frames asks of a container
        def __init__(self, pts):
            self.frames = [Fake(p) for p in pts]

        def decode(self, stream):
            return iter(self.frames)

    far = REORDER_WINDOW  # the value 1 arrives REORDER_WINDOW frames late: still put first
    pts = [0, *range(2, far + 1), 1, None, *range(far + 1, far + 5)]
    got = [p for _, p in presentation_frames(FakeContainer(pts), None)]
    assert got == [0, 1, *range(2, far + 1), None, *range(far + 1, far + 5)]


def test_variable_frame_rate_keeps_real_timestamps(tmp_path):
    steps = [33, 50, 17, 40, 100]  # ms between frames, irregular
    pts = np.concatenate([[0], np.cumsum([steps[i % 5] for i in range(39)])]).tolist()
    path = write_video(tmp_path / "vfr.mp4", n=40, pts_ms=pts)
    frames = list(iter_frames(path))
    assert [index_of(f.rgb) for f in frames] == list(range(40))
    np.testing.assert_allclose([f.time for f in frames], np.array(pts) / 1000, atol=1e-9)
    np.testing.assert_allclose(read_frame_times(path), np.array(pts) / 1000, atol=1e-9)


def test_aac_48k_burst_lands_at_its_time(videos):
    x = read_audio(videos["mp4"])
    assert x.dtype == np.float32 and x.ndim == 1
    assert len(x) >= 2.0 * SR  # covers the video: last frame (1.96 s) + one frame
    assert burst_time(x) == pytest.approx(1.0, abs=TOLERANCE_S)
    assert np.abs(x).max() == pytest.approx(0.8, rel=0.1)  # same level in both channels -> same level


def test_pcm_22k_left_channel_is_averaged_and_placed(videos):
    x = read_audio(videos["avi"])
    assert len(x) == 2 * SR
    assert burst_time(x) == pytest.approx(0.75, abs=TOLERANCE_S)
    # mono = (L + R) / 2 as `ffmpeg -ac 1` writes it to a 16-bit WAV
    assert np.abs(x).max() == pytest.approx(0.4, rel=0.05)


def test_burst_is_in_the_middle_of_its_frames_log_mel_window(videos):
    x = read_audio(videos["avi"])
    w = window(logmel_db(x), 0.75)[0].astype(np.float64)
    assert (10.0 ** w).sum(0).argmax() == 500


def test_no_audio_stream_gives_none(videos):
    assert read_audio(videos["silent"]) is None


# Matroska stores the 0.5 s start exactly; the MP4 muxer writes it as a millisecond edit list and the burst
# comes back ~0.7 ms early (measured): a property of the file written, within the 1 ms tolerance.
@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_audio_starting_after_video_is_padded_at_the_front(tmp_path, suffix):
    path = write_video(tmp_path / f"late{suffix}", audio=("aac", 48000, burst(48000, 1.0, 0.5)),
                       audio_start=0.5)
    assert probe(path).audio_start == pytest.approx(0.5, abs=0.025)
    x = read_audio(path)
    assert np.abs(x[: int(0.45 * SR)]).max() == 0.0
    assert burst_time(x) == pytest.approx(1.0, abs=TOLERANCE_S)
    assert len(x) >= 2.0 * SR  # audio ends at 1.5 s: padded to the end of the video


def test_audio_starting_before_video_is_trimmed(tmp_path):
    pts = [300 + 40 * i for i in range(50)]  # video starts at 0.3 s, audio at 0
    path = write_video(tmp_path / "early_audio.mp4", pts_ms=pts, audio=("aac", 48000, burst(48000, 2.4, 1.0)))
    assert read_frame_times(path)[0] == 0.0 and probe(path).video_start == pytest.approx(0.3)
    x = read_audio(path)
    assert burst_time(x) == pytest.approx(0.7, abs=TOLERANCE_S)
    assert len(x) >= int(2.0 * SR)


def test_short_audio_is_padded_to_the_video_end(tmp_path):
    path = write_video(tmp_path / "short.avi", codec="mpeg4",
                       audio=("pcm_s16le", 44100, burst(44100, 1.0, 0.25)))
    x = read_audio(path)
    assert len(x) == 2 * SR  # last frame at 1.96 s + 0.04 s
    assert burst_time(x) == pytest.approx(0.25, abs=1e-4)


# ------------------------------------------------------------------------------------------ errors


def assert_video_error(call, path: Path) -> VideoError:
    with pytest.raises(VideoError) as err:
        call(path)
    assert str(err.value).startswith(str(path))
    return err.value


@pytest.mark.parametrize("call", [probe, iter_frames, read_frame_times, read_audio])
def test_missing_empty_garbage_files(tmp_path, call):
    assert "no such file" in str(assert_video_error(call, tmp_path / "missing.mp4"))
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty" in str(assert_video_error(call, tmp_path / "empty.mp4"))
    (tmp_path / "garbage.avi").write_bytes(np.random.default_rng(0).bytes(4000))
    assert_video_error(call, tmp_path / "garbage.avi")


def test_audio_only_file_has_no_video_stream(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=16000)
        stream.layout = "stereo"
        write_audio(container, stream, burst(16000, 0.5, 0.2), stereo="same", start=0.0)
    assert "no video stream" in str(assert_video_error(probe, path))


def truncate(src: Path, dst: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def test_truncated_mp4_without_index_cannot_be_opened(videos, tmp_path):
    path = truncate(videos["mp4"], tmp_path / "cut.mp4", 0.6)  # the index (moov) is at the end
    assert "truncated" in str(assert_video_error(iter_frames, path))


@pytest.mark.parametrize("suffix,codec,options", [(".mp4", "libx264", {"movflags": "+faststart"}),
                                                  (".avi", "mpeg4", None)])
def test_truncated_file_yields_what_decodes_then_raises(tmp_path, suffix, codec, options):
    full = write_video(tmp_path / f"full{suffix}", codec=codec, n=60, noisy=True, muxer_options=options,
                       audio=("aac" if suffix == ".mp4" else "pcm_s16le", 48000, burst(48000, 2.4, 1.0)))
    path = truncate(full, tmp_path / f"cut{suffix}", 0.5)
    got = []
    with pytest.raises(VideoError) as err:
        for frame in iter_frames(path):
            got.append(index_of(frame.rgb))
    assert str(err.value).startswith(str(path)) and "truncated" in str(err.value)
    assert 5 < len(got) < 54 and got == list(range(len(got)))
    assert_video_error(read_frame_times, path)
    assert_video_error(read_audio, path)
