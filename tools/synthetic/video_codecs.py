"""How the mini Aff-Wild2 (tools.synthetic) encodes its video streams, and where their first frame lands.

Two codecs, both single-threaded so that a seed always gives the same bytes: H.264 (libx264, preset
ultrafast, CRF 20) and MPEG-4 part 2 (ffmpeg's ``mpeg4``, 2 Mbit/s). ``b_frames`` > 0 lets the encoder
use up to that many consecutive B-frames, so packets are stored in decode order, not display order.

An AVI stores no timestamps: the demuxer numbers the packets in decode order and, when B-frames delay
the display, the first frame is shown one frame after the container's zero (while the audio still
starts at zero). For H.264 in AVI those decode-order numbers also reach the decoded frames unsorted
(the case ``data.video.presentation_frames`` repairs). ``first_frame_time`` measures that start by
encoding a few blank frames the same way into memory, so the generator can delay the audio to match.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from fractions import Fraction
from functools import cache

import av
import numpy as np

VIDEO_CODECS = ("h264", "mpeg4")
MPEG4_BIT_RATE = 2_000_000
PROBE_FRAMES = 8  # enough for the encoders' B-frame lookahead to emit the first packets


@dataclass(frozen=True)
class VideoEncoding:
    """Everything that decides a video stream's encoder settings and packet timing."""

    container: str  # "mp4" or "avi"
    codec: str      # "h264" or "mpeg4"
    b_frames: int   # max consecutive B-frames (0: none)
    width: int
    height: int
    fps: int
    vfr: bool       # frame pts in milliseconds instead of frame numbers


def default_codec(container: str) -> str:
    """The codec a container gets unless a video says otherwise: H.264 in mp4, MPEG-4 part 2 in avi."""
    return "h264" if container == "mp4" else "mpeg4"


def add_video_stream(container: av.container.OutputContainer, enc: VideoEncoding) -> av.VideoStream:
    """A video stream encoded as ``enc`` says; single-threaded so the bytes are reproducible."""
    if enc.codec not in VIDEO_CODECS:
        raise ValueError(f"unknown video codec {enc.codec!r} (known: {', '.join(VIDEO_CODECS)})")
    b_frames = {"bf": str(enc.b_frames)} if enc.b_frames else {}
    if enc.codec == "h264":
        stream = container.add_stream("libx264", rate=enc.fps,
                                      options={"preset": "ultrafast", "crf": "20", "threads": "1", **b_frames})
    else:
        stream = container.add_stream("mpeg4", rate=enc.fps, options=b_frames)
        stream.bit_rate = MPEG4_BIT_RATE
    stream.width, stream.height, stream.pix_fmt = enc.width, enc.height, "yuv420p"
    stream.thread_count = 1
    if enc.vfr:
        stream.codec_context.time_base = Fraction(1, 1000)  # fine enough for integer-ms durations
    return stream


def stamp(frame: av.VideoFrame, k: int, time_s: float, enc: VideoEncoding) -> None:
    """Give frame k its pts: the frame number, or integer milliseconds for a variable frame rate."""
    if enc.vfr:
        frame.pts, frame.time_base = int(round(time_s * 1000)), Fraction(1, 1000)
    else:
        frame.pts, frame.time_base = k, Fraction(1, enc.fps)


@cache
def first_frame_time(enc: VideoEncoding) -> float:
    """Container time (s) at which the first frame of a video encoded as ``enc`` is decoded.

    0 except where B-frames delay the display in an AVI; measured on a few blank frames encoded the
    same way into memory (the delay depends on the settings, not on the pictures).
    """
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=enc.container) as out:
        stream = add_video_stream(out, enc)
        blank = np.zeros((enc.height, enc.width, 3), np.uint8)
        for k in range(PROBE_FRAMES):
            frame = av.VideoFrame.from_ndarray(blank, format="rgb24")
            stamp(frame, k, k / enc.fps, enc)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    buffer.seek(0)
    return first_video_time(buffer)


def first_video_time(source: str | io.BytesIO) -> float:
    """Container time (s) of the first decoded video frame, the frame ``data.video`` calls t = 0."""
    with av.open(source) as c:
        stream = c.streams.video[0]
        for frame in c.decode(stream):
            return round(float(frame.pts * stream.time_base), 6)
    raise ValueError(f"{source}: no decodable video frame")
