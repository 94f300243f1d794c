"""The fixed cast of videos: size, length, codecs, audio, splits and special case of each."""

from __future__ import annotations

from dataclasses import dataclass

from tasks import TASKS, TEST_SPLIT, TRAIN_SPLIT, VAL_SPLIT
from tools.synthetic import video_codecs
from tools.synthetic.mapping import FPS


@dataclass(frozen=True)
class VideoSpec:
    """One video's fixed properties; ``split`` maps each track suffix to {task: split or None}."""

    index: int
    name: str
    batch: str
    container: str          # "mp4" or "avi"
    width: int
    height: int
    seconds: float
    audio_codec: str | None  # "aac", "libmp3lame", "pcm_s16le" or None for no audio stream
    audio_rate: int
    split: dict[str, dict[str, str | None]]
    vfr: bool = False
    audio_offset_s: float = 0.0
    face_exit: bool = False
    label_delta: int = 0
    video_codec: str | None = None  # "h264" or "mpeg4"; None: H.264 in mp4, MPEG-4 part 2 in avi
    b_frames: int = 0               # max consecutive B-frames (frames stored in decode order)

    @property
    def two_person(self) -> bool:
        return len(self.split) == 2

    @property
    def codec(self) -> str:
        return self.video_codec or video_codecs.default_codec(self.container)

    @property
    def encoding(self) -> video_codecs.VideoEncoding:
        return video_codecs.VideoEncoding(self.container, self.codec, self.b_frames, self.width, self.height,
                                              FPS, self.vfr)


def _all_tasks(split: str | None, missing: tuple[str, ...] = ()) -> dict[str, str | None]:
    return {t: (None if t in missing else split) for t in TASKS}


def video_specs(quick: bool = False) -> list[VideoSpec]:
    """The 12 videos (13 tracks: 8 train, 3 validation, 2 test); ``quick`` makes every video 3 s long."""
    tr, va, te = TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT
    rows = [
        # idx name            batch     cont  w    h    sec  audio         rate   split / extras
        (0, "1-30-480x270", "batch1", "mp4", 480, 270, 12, "aac", 44100, {"": _all_tasks(tr)}, {}),
        (1, "video2", "batch1", "avi", 320, 240, 10, "pcm_s16le", 22050, {"": _all_tasks(tr)},
         {"label_delta": 2}),
        (2, "3-30-640x360", "batch1", "mp4", 640, 360, 16, "aac", 48000, {"": _all_tasks(tr)},
         {"face_exit": True, "b_frames": 2}),
        (3, "4-30-400x300", "batch1", "mp4", 400, 300, 10, None, 0, {"": _all_tasks(tr, ("AU",))}, {}),
        (4, "video5", "batch1", "avi", 384, 288, 11, "libmp3lame", 44100, {"": _all_tasks(tr, ("VA",))}, {}),
        (5, "6-30-480x272", "batch1", "mp4", 480, 272, 13, "aac", 32000, {"": _all_tasks(tr)},
         {"vfr": True, "label_delta": -3}),
        (6, "7-30-640x360", "batch2", "mp4", 640, 360, 15, "aac", 44100,
         {"_left": _all_tasks(tr), "_right": _all_tasks(tr)}, {}),
        (7, "8-30-416x240", "batch2", "mp4", 416, 240, 10, "aac", 16000, {"": _all_tasks(va)},
         {"audio_offset_s": 0.5}),
        (8, "video9", "batch2", "avi", 448, 336, 12, "pcm_s16le", 32000, {"": _all_tasks(va)},
         {"label_delta": 1, "video_codec": "h264", "b_frames": 2}),
        (9, "10-30-560x316", "batch2", "mp4", 560, 316, 20, "aac", 48000, {"": _all_tasks(va)}, {}),
        (10, "11-30-480x270", "batch2", "mp4", 480, 270, 10, "aac", 44100, {"": _all_tasks(te)}, {}),
        (11, "video12", "batch2", "avi", 320, 240, 10, "pcm_s16le", 48000, {"": _all_tasks(te)},
         {"b_frames": 2}),
    ]
    specs = []
    for idx, name, batch, cont, w, h, sec, codec, rate, split, extra in rows:
        specs.append(VideoSpec(idx, name, batch, cont, w, h, 3.0 if quick else float(sec), codec, rate,
                               split, **extra))
    return specs
