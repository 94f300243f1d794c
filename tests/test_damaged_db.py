"""Frames that cannot be decoded (bytes flipped inside data.mdb) are errors naming the track and the frame, in
the readers that training and inference use (data/reader.py, under data/clips.py and app/inference.py), not
black or garbage frames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app import inference
from data import reader, store
from data.clips import ClipDataset
from data.reader import DamagedFrameError, read_frames
from tests.toy_db import make_toy_db
from utils.inputs import InputSpec

TRACK, FRAME = "a", 9  # frame 9 of toy track a has a face; its group holds frames 8-15


def damage(db_path: Path, track: str, frame: int, part: str | None, offset: int = 0) -> None:
    """Flip one byte of a stored frame group in data.mdb: at ``offset`` into ``part`` of ``frame``, or into
    the group's header when ``part`` is None."""
    with store.Store(db_path) as db:
        value = db.get(store.group_key(track, frame))
    at = 0
    if part is not None:  # where the part's view starts inside the value
        view = store.unpack_frame(value, frame % store.FRAMES_PER_VALUE, part)
        at = np.frombuffer(view, np.uint8).ctypes.data - np.frombuffer(value, np.uint8).ctypes.data
    data = bytearray((db_path / "data.mdb").read_bytes())
    base = data.find(value)
    assert base >= 0 and at >= 0
    while base >= 0:  # every copy: an older copy may linger in a page LMDB has freed
        data[base + at + offset] ^= 0xFF
        base = data.find(value, base + 1)
    (db_path / "data.mdb").write_bytes(bytes(data))
    reader.close_stores()


@pytest.fixture
def toy(tmp_path) -> Path:
    reader.close_stores()
    return make_toy_db(tmp_path / "db")


def clip_at(db_path: Path, mask: str = "tsav", frame: int = FRAME) -> np.ndarray:
    ds = ClipDataset(db_path, None, "abaw2021", spec=InputSpec(clip_len=4, dilation=1, mask=mask), tracks=[TRACK],
                     labels=False)
    return ds.raw_frames(0, frame)


def assert_one_line(e: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "--verify" in msg
    for n in needles:
        assert n in msg, msg


def test_an_intact_database_reads(toy):
    frames = clip_at(toy)
    assert frames.shape == (4, 112, 112, 4) and frames[-1, ..., 0].mean() == pytest.approx(40 + 9 * FRAME, abs=2)


def test_an_undecodable_crop_names_database_track_and_frame(toy):
    damage(toy, TRACK, FRAME, "rgb")  # the JPEG's SOI marker
    with pytest.raises(DamagedFrameError) as e:
        clip_at(toy)
    assert_one_line(e, str(toy), f"track {TRACK} frame {FRAME}", "crop cannot be decoded")
    clip_at(toy, frame=7)  # the frames of other groups still read


def test_a_damaged_group_header_or_mask_is_an_error(toy, tmp_path):
    damage(toy, TRACK, FRAME, "tsav", offset=20)  # inside the PNG's IHDR chunk
    with pytest.raises(DamagedFrameError) as e:
        clip_at(toy, mask="tsav")
    assert_one_line(e, f"track {TRACK} frame {FRAME}", "tsav mask cannot be decoded")
    other = make_toy_db(tmp_path / "other")
    damage(other, TRACK, FRAME, None)  # the group's magic
    with pytest.raises(DamagedFrameError) as e:
        clip_at(other)
    assert_one_line(e, str(other), f"track {TRACK} frame 8", "frame group cannot be read")


def test_read_frames_without_a_path_still_names_track_and_frame(toy):
    """The reader inference uses (app/inference.py passes no path)."""
    damage(toy, TRACK, FRAME, "rgb")
    out = np.zeros((2, 112, 112, 4), np.uint8)
    with store.Store(toy) as db, db.env.begin(buffers=True) as txn:
        read_frames(txn, TRACK, [(0, 8)], "tsav", False, out)  # intact
        with pytest.raises(DamagedFrameError) as e:
            read_frames(txn, TRACK, [(0, 8), (1, FRAME)], "tsav", False, out)
    assert_one_line(e, f"track {TRACK} frame {FRAME}")


def test_inference_stops_at_the_damaged_frame(toy):
    """app.inference decodes through read_frames too: the error names the track and the frame."""
    from models.registry import build_model

    damage(toy, TRACK, FRAME, "rgb")
    model = build_model("resnet18", "abaw2021", input_spec=InputSpec.frame(size=32)).eval()
    source = inference.db_track_source(str(toy), TRACK)
    before = inference.predict_sources(model, [source], targets=[np.arange(8)])[0]  # other groups still read
    assert before["logits"].shape == (8, model.layout.num_outputs)
    with pytest.raises(DamagedFrameError) as e:
        inference.predict_source(model, source, chunk=16)
    assert_one_line(e, f"track {TRACK} frame {FRAME}", "crop cannot be decoded")
