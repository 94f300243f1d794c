"""Frames and sound of one video file, read with PyAV (no OpenCV, no ffmpeg binary).

Time convention used everywhere in the codebase: t = 0 is the presentation time of the first decoded
video frame. ``iter_frames`` and ``read_frame_times`` give each frame's own timestamp on that clock
(variable-frame-rate videos have irregular steps: never assume index / fps), and ``read_audio``
returns mono samples on the same clock, so sample ``round(t * sr)`` is heard while frame t is shown.
Frames with B-frames whose timestamps reach the decoder in decode order (H.264 in AVI) get their
presentation times back (``presentation_frames``): times always follow the frames' display order.

Broken files raise ``VideoError`` whose message starts with the path. A file that stops decoding
half-way (corrupt packets, or truncated: the demuxer then stops quietly, and we notice because far
fewer frames came out than the container announced) is handled like this: ``iter_frames`` yields every
frame that decoded and then raises ``VideoError``, so the caller holds the partial result and decides
(the database builder marks the video failed). ``read_frame_times`` and ``read_audio`` raise too.

Not handled: display-rotation metadata (frames come out as stored); only the first video and the
first audio stream are read.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)

# Audio frames whose timestamp is within this of where the previous frame ended are appended
# contiguously: container timestamps are rounded (e.g. to 1 ms in Matroska) and following them
# literally would leave 1-sample holes. Larger jumps are real gaps or overlaps and are honoured.
AUDIO_SNAP_SECONDS = 0.005

# A video yielding fewer frames than this fraction of the container's announced count is truncated.
SHORT_DECODE_FRACTION = 0.9

# Decoded frames held back to restore presentation timestamps that come in decode order (see
# ``presentation_frames``): H.264 reorders at most 16 pictures (its DPB), MPEG-4 part 2 fewer.
REORDER_WINDOW = 16


class VideoError(RuntimeError):
    """A video that cannot be read: missing, empty, corrupt, truncated, or without a video stream."""


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int
    height: int
    fps: float  # nominal (average) frame rate; 0.0 when the container does not say
    num_frames: int  # estimate: the container's count, else duration * fps; decode to be exact
    duration: float  # seconds
    has_audio: bool
    audio_sample_rate: int | None
    video_start: float  # stream start times in seconds, as the container states them
    audio_start: float | None


@dataclass
class Frame:
    index: int  # 0-based, in presentation order
    time: float  # seconds since the first decoded frame's presentation time
    rgb: np.ndarray  # (H, W, 3) uint8


def _open(path: str | Path) -> av.container.InputContainer:
    """Open a media file or raise VideoError naming it; the file must have a video stream."""
    p = Path(path)
    if not p.is_file():
        raise VideoError(f"{path}: no such file")
    if p.stat().st_size == 0:
        raise VideoError(f"{path}: empty file")
    try:
        container = av.open(str(p), metadata_errors="ignore")
    except (av.FFmpegError, UnicodeDecodeError) as e:
        raise VideoError(f"{path}: cannot open ({e})") from e
    if not container.streams.video:
        any_stream = bool(container.streams)
        container.close()
        if not any_stream:  # e.g. an MP4 cut before its index (moov) was written
            raise VideoError(f"{path}: no streams found (truncated, or not a media file)")
        raise VideoError(f"{path}: no video stream")
    return container


def _check_complete(path: str | Path, count: int, announced: int) -> None:
    """Raise when clearly fewer frames came out than the container announced (a truncated file).

    Small shortfalls are normal (edit lists, dropped frames in AVI) and pass silently.
    """
    if count == 0:
        raise VideoError(f"{path}: no decodable video frame")
    if announced and count < SHORT_DECODE_FRACTION * announced:
        raise VideoError(f"{path}: only {count} of the {announced} announced frames could be read "
                         "(truncated file?)")


def _seconds(ts: int | None, time_base: Fraction | None) -> float | None:
    if ts is None or time_base is None:
        return None
    return float(ts * time_base)


def _nominal_fps(stream: av.video.stream.VideoStream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 0.0


def _stream_duration(stream: av.stream.Stream, container: av.container.InputContainer) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def probe(path: str | Path) -> VideoInfo:
    """Container metadata without decoding: size, nominal fps, estimated frame count, audio presence."""
    with _open(path) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        fps = _nominal_fps(video)
        duration = _stream_duration(video, container)
        num_frames = video.frames or int(round(duration * fps))
        return VideoInfo(
            path=str(path),
            width=video.codec_context.width,
            height=video.codec_context.height,
            fps=fps,
            num_frames=num_frames,
            duration=duration,
            has_audio=audio is not None,
            audio_sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            video_start=_seconds(video.start_time, video.time_base) or 0.0,
            audio_start=_seconds(audio.start_time, audio.time_base) if audio is not None else None,
        )


class _FrameClock:
    """Turns decoded frames' pts into seconds since the first frame (pts-less frames: +1/fps)."""

    def __init__(self, time_base: Fraction | None, fps: float):
        self.seconds_per_tick = float(time_base) if time_base is not None else None
        self.step = 1.0 / fps if fps > 0 else 0.0
        self.first_pts: int | None = None
        self.first_offset = 0.0  # time of the first frame with a pts, when earlier frames had none
        self.last: float | None = None

    def time_of(self, pts: int | None) -> float:
        if pts is None or self.seconds_per_tick is None:
            t = 0.0 if self.last is None else self.last + self.step
        else:
            if self.first_pts is None:
                self.first_pts = pts
                self.first_offset = 0.0 if self.last is None else self.last + self.step
            # same arithmetic as read_frame_times, so both give bit-identical times
            t = self.first_offset + float(pts - self.first_pts) * self.seconds_per_tick
        self.last = t
        return t


def iter_frames(path: str | Path) -> Iterator[Frame]:
    """Every decoded frame in presentation order with its timestamp (seconds, first frame = 0).

    The file is opened immediately (so a missing or unreadable file raises here, not at the first
    ``next``); decoding errors raise VideoError after the frames decoded so far were yielded.
    """
    container = _open(path)
    return _decode_frames(container, path)


def _decode_frames(container: av.container.InputContainer, path: str | Path) -> Iterator[Frame]:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame + slice threads: several times faster on long H.264 videos
    clock = _FrameClock(stream.time_base, _nominal_fps(stream))
    index = 0
    try:
        try:
            for frame, pts in presentation_frames(container, stream):
                yield Frame(index, clock.time_of(pts), frame.to_ndarray(format="rgb24"))
                index += 1
        except av.FFmpegError as e:
            raise VideoError(f"{path}: decoding failed after {index} frames ({e})") from e
        _check_complete(path, index, stream.frames)
    finally:
        container.close()


def presentation_frames(container: av.container.InputContainer, stream: av.video.stream.VideoStream
                        ) -> Iterator[tuple[av.VideoFrame, int | None]]:
    """Every decoded frame of ``stream`` with its presentation pts (``stream.time_base``; None: unknown).

    Decoders output pictures in presentation order, but their pts is the pts of the packet the picture
    came in. An AVI stores no timestamps: the demuxer numbers packets in decode order, and for H.264
    (unlike MPEG-4 part 2, whose parser restores them) those numbers reach the frames unsorted when
    B-frames are reordered. The values are right, only attached to the wrong frames; so each frame
    gets the smallest pts not yet given out among the next ``REORDER_WINDOW`` frames. Where the pts
    already increase (every other kind of file) each frame keeps its own. A decoding error is raised
    after the frames decoded before it were yielded.
    """
    pending: deque[av.VideoFrame] = deque()
    pts_heap: list[int] = []
    try:
        for frame in container.decode(stream):
            pending.append(frame)
            if frame.pts is not None:
                heapq.heappush(pts_heap, frame.pts)
            if len(pending) > REORDER_WINDOW:
                yield _next_in_order(pending, pts_heap)
    except av.FFmpegError:
        while pending:
            yield _next_in_order(pending, pts_heap)
        raise
    while pending:
        yield _next_in_order(pending, pts_heap)


def _next_in_order(pending: deque[av.VideoFrame], pts_heap: list[int]) -> tuple[av.VideoFrame, int | None]:
    frame = pending.popleft()
    if frame.pts is None:  # no timestamp to sort: the clock steps one frame
        return frame, None
    return frame, heapq.heappop(pts_heap)


def read_frame_times(path: str | Path, decode: bool = False) -> np.ndarray:
    """Presentation times (float64 seconds, first frame = 0) of all video frames, in order.

    Taken from the packets' pts without decoding (sorted, since packets come in decode order);
    falls back to decoding when a packet has no pts or ``decode`` is True. Both agree on ordinary
    files; a stream that starts with undecodable frames (a cut open GOP) would differ, which is why
    the database builder keeps the times that ``iter_frames`` returned for the frames it stored.
    """
    with _open(path) as container:
        stream = container.streams.video[0]
        time_base, fps, announced = stream.time_base, _nominal_fps(stream), stream.frames
        pts = None if decode else _packet_pts(container, stream, path)
    if pts is None:
        with _open(path) as container:
            pts = _decoded_pts(container, container.streams.video[0], path)
    _check_complete(path, len(pts), announced)
    if any(p is None for p in pts):
        clock = _FrameClock(time_base, fps)
        return np.array([clock.time_of(p) for p in pts], dtype=np.float64)
    pts_arr = np.sort(np.asarray(pts, dtype=np.int64))
    return (pts_arr - pts_arr[0]).astype(np.float64) * float(time_base)


def _packet_pts(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                path: str | Path) -> list[int] | None:
    """pts of every real video packet, or None when some packet has none (decode instead)."""
    out = []
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:  # flush packet / edit-list pre-roll
                continue
            if packet.pts is None:
                return None
            out.append(packet.pts)
    except av.FFmpegError as e:
        raise VideoError(f"{path}: demuxing failed ({e})") from e
    return out


def _decoded_pts(container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 path: str | Path) -> list[int | None]:
    stream.thread_type = "AUTO"
    try:
        return [pts for _, pts in presentation_frames(container, stream)]
    except av.FFmpegError as e:
        raise VideoError(f"{path}: decoding failed ({e})") from e


# ----------------------------------------------------------------------------------------- audio


def read_audio(path: str | Path, sr: int = 44100) -> np.ndarray | None:
    """Mono float32 samples at ``sr`` on the video clock (sample 0 = first video frame), or None.

    Each decoded audio frame is resampled and written at its own pts, so audio starting after the
    video gets leading zeros, audio starting before it (or codec priming with negative pts) is cut,
    and holes in the stream stay silent. The result covers at least the video (last frame time plus
    one frame duration); longer audio is kept. Channels are averaged as ``ffmpeg -ac 1`` does when
    writing a 16-bit WAV (TSAV's path). Undecodable audio packets are skipped with a warning.
    """
    with _open(path) as container:
        if not container.streams.audio:
            return None
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        t0, video_end, chunks = _demux_audio(container, video, audio, sr, path)
    return _place_chunks(chunks, t0, video_end, sr)


def _demux_audio(container: av.container.InputContainer, video: av.video.stream.VideoStream,
                 audio: av.audio.stream.AudioStream, sr: int, path: str | Path
                 ) -> tuple[float, float, list[tuple[float | None, np.ndarray]]]:
    """One pass over the file: first video frame time, last video pts, resampled audio chunks.

    Only the first video frame is decoded (its pts defines t = 0); the other video packets are only
    looked at for their pts, to know how long the video lasts.
    """
    resampler = _Resampler(sr)
    chunks: list[tuple[float | None, np.ndarray]] = []
    first_video: float | None = None
    last_video_pts: int | None = None
    video_packets = bad_packets = 0
    try:
        for packet in container.demux(video, audio):
            if packet.stream.type == "video":
                if packet.size and not packet.is_discard:
                    video_packets += 1
                if packet.pts is not None and not packet.is_discard:
                    last_video_pts = packet.pts if last_video_pts is None else max(last_video_pts, packet.pts)
                if first_video is None:
                    for frame in packet.decode():
                        first_video = _seconds(frame.pts, video.time_base)
                        if first_video is None:
                            first_video = _seconds(video.start_time, video.time_base) or 0.0
                        break
                continue
            try:
                frames = packet.decode()
            except av.FFmpegError as e:
                bad_packets += 1
                log.debug("%s: skipping audio packet at pts %s (%s)", path, packet.pts, e)
                continue
            for frame in frames:
                chunks.extend(resampler.resample(frame))
    except av.FFmpegError as e:
        raise VideoError(f"{path}: demuxing failed ({e})") from e
    chunks.extend(resampler.flush())
    if bad_packets:
        log.warning("%s: %d undecodable audio packets left silent", path, bad_packets)
    if first_video is None:
        raise VideoError(f"{path}: no decodable video frame")
    _check_complete(path, video_packets, video.frames)
    last_video = _seconds(last_video_pts, video.time_base)
    fps = _nominal_fps(video)
    video_end = (last_video if last_video is not None else first_video) + (1.0 / fps if fps else 0.0)
    return first_video, video_end - first_video, chunks


class _Resampler:
    """av.AudioResampler to mono float at ``sr``; rebuilt if the input format changes mid-stream."""

    def __init__(self, sr: int):
        self.sr = sr
        self.resampler: av.AudioResampler | None = None
        self.input_key: tuple | None = None

    def _new(self) -> av.AudioResampler:
        # rematrix_maxval=1 normalises the downmix matrix like ffmpeg does for integer output, so
        # stereo -> mono is (L + R) / 2 as in TSAV's 16-bit WAVs (float output would be (L + R) / sqrt 2).
        return av.AudioResampler(format="flt", layout="mono", rate=self.sr, options={"rematrix_maxval": "1"})

    def resample(self, frame: av.AudioFrame) -> list[tuple[float | None, np.ndarray]]:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        out: list[tuple[float | None, np.ndarray]] = []
        if self.resampler is None or key != self.input_key:
            if self.resampler is not None:
                out.extend(self.flush())
            self.resampler, self.input_key = self._new(), key
        out.extend(_as_chunk(f) for f in self.resampler.resample(frame))
        return out

    def flush(self) -> list[tuple[float | None, np.ndarray]]:
        if self.resampler is None:
            return []
        out = [_as_chunk(f) for f in self.resampler.resample(None)]
        self.resampler = None
        return out


def _as_chunk(frame: av.AudioFrame) -> tuple[float | None, np.ndarray]:
    return _seconds(frame.pts, frame.time_base), frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)


def _place_chunks(chunks: list[tuple[float | None, np.ndarray]], t0: float, video_seconds: float,
                  sr: int) -> np.ndarray:
    """Write each chunk at its timestamp (relative to t0) into one zero-initialised buffer."""
    snap = AUDIO_SNAP_SECONDS * sr
    starts = []
    cursor: int | None = None
    for time, samples in chunks:
        start = cursor if time is None else int(round((time - t0) * sr))
        if start is None:
            start = 0
        elif cursor is not None and abs(start - cursor) <= snap:
            start = cursor
        starts.append(start)
        cursor = start + len(samples)
    end = max((s + len(c) for s, (_, c) in zip(starts, chunks)), default=0)
    out = np.zeros(max(end, math.ceil(video_seconds * sr)), dtype=np.float32)
    for start, (_, samples) in zip(starts, chunks):
        if start + len(samples) <= 0:
            continue
        cut = max(0, -start)
        out[start + cut:start + len(samples)] = samples[cut:]
    return out


# --- finding videos --------------------------------------------------------------------------------
VIDEO_EXTS = (".mp4", ".avi")
TRACK_SUFFIXES = ("_left", "_right")


def find_videos(folders: list[str | Path]) -> dict[str, Path]:
    """Every .mp4/.avi under the folders (recursively) → {video name: path}; duplicates are an error."""
    found: dict[str, Path] = {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: video folder not found")
        for p in sorted(folder.rglob("*")):
            if p.suffix.lower() in VIDEO_EXTS and p.is_file():
                if p.stem in found:
                    raise ValueError(f"{p}: video name {p.stem} also at {found[p.stem]}")
                found[p.stem] = p
    return found


def video_of_track(track: str) -> str:
    for suffix in TRACK_SUFFIXES:
        if track.endswith(suffix):
            return track[: -len(suffix)]
    return track
