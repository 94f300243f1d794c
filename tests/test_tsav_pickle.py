"""data/tsav_pickle.py: TSAV's alignment pickles load (numpy 1.x and 2.x names, every protocol); pickles that
call anything else are refused before anything in them runs."""

from __future__ import annotations

import os
import pickle
import subprocess

import numpy as np
import pytest

from data import tsav_pickle
from data.tsav_pickle import UnsafePickleError, load_tsav_alignment


def tsav_dict(n: int = 6) -> dict:
    """TSAV's layout: per frame a 2x3 float64 affine or None, and 68x2 landmarks (None without a face)."""
    rng = np.random.default_rng(0)
    frame = [None if i in (2, 3) else rng.normal(size=(2, 3)) for i in range(n)]
    mask = [None if i in (2, 3) else rng.uniform(0, 112, (68, 2)).astype(np.float32) for i in range(n)]
    return {"frame": frame, "mask": mask}


def numpy1_pickle(obj: object, protocol: int) -> bytes:
    """The bytes numpy 1.x writes: its globals live in numpy.core, not numpy._core (protocols <= 3 name
    globals as text lines, so renaming the module is a plain replacement)."""
    assert protocol <= 3
    b = pickle.dumps(obj, protocol=protocol)
    assert b"numpy._core." in b
    return b.replace(b"numpy._core.", b"numpy.core.")


class RunsCommand:
    """Unpickling this calls os.system (the attack of the issue)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class OpensProcess:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return subprocess.Popen, (["sh", "-c", self.command],)


def assert_same(got: tuple[list, list], want: dict) -> None:
    for loaded, original in zip(got, (want["frame"], want["mask"])):
        assert len(loaded) == len(original)
        for a, b in zip(loaded, original):
            assert (a is None) == (b is None)
            if b is not None:
                np.testing.assert_array_equal(a.reshape(b.shape), b)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy2_pickles_of_every_protocol_load(tmp_path, protocol):
    d = tsav_dict()
    path = tmp_path / "track.pkl"
    path.write_bytes(pickle.dumps(d, protocol=protocol))
    assert_same(load_tsav_alignment(path), d)


@pytest.mark.parametrize("protocol", [2, 3])
def test_numpy1_pickles_load(tmp_path, protocol):
    d = tsav_dict()
    d["extra"] = np.float64(1.5)  # a numpy scalar: numpy.core.multiarray.scalar
    path = tmp_path / "track_alignment_mask.pkl"
    path.write_bytes(numpy1_pickle(d, protocol))
    assert_same(load_tsav_alignment(path), d)


@pytest.mark.parametrize("payload", [RunsCommand, OpensProcess])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_pickles_that_call_code_are_refused_without_running(tmp_path, payload, protocol):
    marker = tmp_path / "ran"
    d = tsav_dict()
    d["frame"][0] = payload(f"touch {marker}")
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(d, protocol=protocol))
    with pytest.raises(UnsafePickleError) as e:
        load_tsav_alignment(path)
    msg = str(e.value)
    assert str(path) in msg and "refused" in msg and len(msg.splitlines()) == 1
    assert (".system" in msg) if payload is RunsCommand else (".Popen" in msg)  # posix.system, subprocess.Popen
    assert not marker.exists()


def test_codecs_encode_admits_latin1_only(tmp_path):
    # what protocols 0-2 use for array bytes is admitted for latin-1 and refused for any other codec
    assert tsav_pickle._latin1_encode("\xff\x00", "latin1") == b"\xff\x00"
    path = tmp_path / "codec.pkl"
    path.write_bytes(b"c_codecs\nencode\n(Vabc\nVrot13\ntR.")
    with pytest.raises(ValueError, match=f"{path}.*rot13"):
        load_tsav_alignment(path)


@pytest.mark.parametrize("content, needle", [
    (pickle.dumps([1, 2]), "expected a dict with keys 'frame' and 'mask'"),
    (pickle.dumps({"frame": 3, "mask": []}), "'frame' is a int"),
    (pickle.dumps({"frame": [np.zeros(5)], "mask": [None]}), "'frame' entry 0 is not None or 6 numbers"),
    (pickle.dumps({"frame": [None, np.eye(2, 3)], "mask": [None, "abc"]}), "'mask' entry 1"),
    (pickle.dumps(tsav_dict())[:50], "not a readable pickle"),
    (b"", "not a readable pickle"),
])
def test_bad_files_give_one_line_errors_naming_them(tmp_path, content, needle):
    path = tmp_path / "bad.pkl"
    path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        load_tsav_alignment(path)
    assert str(path) in str(e.value) and needle in str(e.value) and len(str(e.value).splitlines()) == 1
