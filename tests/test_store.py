"""data/store.py: keys, atomic rewrite, growing map, names that are prefixes of each other, report, sha256."""

from __future__ import annotations

import json

import lmdb
import numpy as np
import pytest

from data import store, store_report


def fkey(track: str, i: int) -> bytes:
    """A key under the track's frame prefix (the store handles any value there)."""
    return f"f/{track}/{i:06d}".encode()


def record(name: str, tracks: list[str], frames: int = 3, payload: int = 10, status: str = "ok",
           faces: int | None = None) -> store.VideoRecord:
    """A small, valid video record with ``frames`` frames per track, each with a face."""
    meta = {"name": name, "source": f"/videos/{name}.mp4", "tracks": tracks, "status": status,
            "stats": {"seconds": {"decode": 1.0}, "bytes": 0}}
    rec = store.VideoRecord(name, meta)
    if status != "ok":
        return rec
    rec.put_array(store.video_key(name) + b"/times", np.arange(frames) / 30.0)
    for t in tracks:
        rec.put_array(store.track_key(t) + b"/face", np.ones(frames, bool))
        rec.put_json(store.track_key(t), {"video": name, "faces": frames, "frames": frames, "labels": {}})
        for i in range(frames):
            rec.items.append((fkey(t, i), bytes([i % 256]) * payload))
    meta.update(frames=frames, faces=frames * len(tracks) if faces is None else faces, audio=False)
    meta["stats"]["bytes"] = sum(len(k) + len(v) for k, v in rec.items)
    return rec


def test_keys_and_arrays_roundtrip(tmp_path):
    with store.Store(tmp_path / "db", readonly=False) as db:
        db.write_schema(["tsav"])
        sha = db.write_video(record("a", ["a"]))
    with store.Store(tmp_path / "db") as db:
        assert db.schema() == {"version": store.SCHEMA_VERSION, "masks": ["tsav"]}
        assert db.video_names() == ["a"]
        assert db.video_meta("a")["sha256"] == sha
        np.testing.assert_array_equal(db.get_array(b"v/a/times"), np.arange(3) / 30.0)
        assert db.get(fkey("a", 2)) == b"\x02" * 10
        assert db.verify("a")


def test_frames_are_packed_eight_to_a_value(tmp_path):
    assert store.group_key("x_left", 7) == b"f/x_left/000000" and store.group_key("x", 8) == b"f/x/000008"
    frames = {0: {"rgb": b"jpeg0", "tsav": b"png0"}, 3: {"rgb": b"jpeg3"}, 7: {"rgb": b"j" * 5000, "tsav": b"p7"}}
    value = store.pack_frames(frames)
    for slot in range(store.FRAMES_PER_VALUE):
        for part in ("rgb", "tsav", "mtmt"):
            got = store.unpack_frame(value, slot, part)
            want = frames.get(slot, {}).get(part)
            assert (None if got is None else bytes(got)) == want
    assert store.group_part_bytes(value) == {"header": len(value) - 5016, "rgb": 5010, "tsav": 6}
    with store.Store(tmp_path / "db", readonly=False) as db:
        db._transaction([(store.group_key("t", 16), value)])
        with db.env.begin(buffers=True) as txn:
            assert bytes(store.read_frame(txn, "t", 23, "rgb")) == b"j" * 5000
            assert store.read_frame(txn, "t", 17, "rgb") is None and store.read_frame(txn, "t", 5, "rgb") is None


def test_names_that_prefix_each_other(tmp_path):
    """'a' must not pick up keys of 'a-2', 'a.x' or the tracks a_left/a_right of another video 'a_'."""
    with store.Store(tmp_path / "db", readonly=False) as db:
        db.write_video(record("a", ["a"], frames=2))
        db.write_video(record("a-2", ["a-2"], frames=4))
        db.write_video(record("a.x", ["a.x"], frames=5))
        db.write_video(record("ab", ["ab_left", "ab_right"], frames=3))
        assert db.video_names() == ["a", "a-2", "a.x", "ab"]
        keys = [k for k, _ in db.video_items("a")]
        assert keys == sorted([b"t/a", b"t/a/face", b"v/a/times", b"f/a/000000", b"f/a/000001"])
        assert len(db.video_items("ab")) == 1 + 2 * (2 + 3)
        db.delete_video("a")
        assert db.video_names() == ["a-2", "a.x", "ab"]
        assert all(db.verify(v) for v in db.video_names())


def test_rewrite_replaces_every_old_key(tmp_path):
    """Rewriting a video with fewer frames (or as failed) leaves none of its old keys behind."""
    with store.Store(tmp_path / "db", readonly=False) as db:
        db.write_video(record("v", ["v_left", "v_right"], frames=5))
        db.write_video(record("w", ["w"], frames=2))
        db.write_video(record("v", ["v_left", "v_right"], frames=2))
        assert len(db.keys(b"f/v_left/")) == 2
        db.write_video(record("v", ["v_left", "v_right"], status="failed: boom"))
        assert db.keys(b"f/v_") == [] and db.keys(b"t/v_") == [] and db.keys(b"v/v/") == []
        assert db.video_meta("v")["status"] == "failed: boom"
        assert db.verify("w")


def test_map_grows_when_full(tmp_path):
    """A 64 KiB map and a 1 MiB video: the write doubles the map until it fits, nothing is lost."""
    rng = np.random.default_rng(0)
    big = store.VideoRecord("big", {"name": "big", "tracks": ["big"], "status": "ok"})
    blobs = [rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes() for _ in range(10)]
    big.items = [(fkey("big", i), b) for i, b in enumerate(blobs)]
    with store.Store(tmp_path / "db", readonly=False, map_size=64 * 1024) as db:
        db.write_video(record("small", ["small"]))
        db.write_video(big)
        assert db.env.info()["map_size"] >= 1_000_000
        assert db.get(fkey("big", 9)) == blobs[9]
    with store.Store(tmp_path / "db") as db:  # a reader opening with the default map size sees it all
        assert db.video_names() == ["big", "small"] and db.verify("big") and db.verify("small")


def test_sha256_ignores_timings_and_location():
    a, b = record("v", ["v"]), record("v", ["v"])
    b.meta["stats"] = {"seconds": {"decode": 99.0}, "bytes": 1}
    b.meta["source"] = "/elsewhere/v.mp4"
    assert store.video_sha256(a.items, a.meta) == store.video_sha256(list(reversed(b.items)), b.meta)
    b.items[-1] = (b.items[-1][0], b"changed")
    assert store.video_sha256(a.items, a.meta) != store.video_sha256(b.items, b.meta)


def test_readonly_open_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        store.Store(tmp_path / "nowhere")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="plain.*not an LMDB"):
        store.Store(tmp_path / "plain")
    assert not (tmp_path / "nowhere").exists()


def test_schema_mismatch_is_refused(tmp_path):
    with store.Store(tmp_path / "db", readonly=False) as db:
        db.write_schema(["tsav", "mtmt"])
        db.write_schema(["mtmt", "tsav"])  # order does not matter
        with pytest.raises(ValueError, match="--masks"):
            db.write_schema(["tsav"])
        db._transaction([(store.SCHEMA_KEY, json.dumps({"version": 1, "masks": ["mtmt", "tsav"]}).encode())])
        with pytest.raises(ValueError, match="schema version 1.*delete it"):
            db.write_schema(["tsav", "mtmt"])


def test_copy_from_checks_sha_and_keeps_ok_videos(tmp_path):
    with store.Store(tmp_path / "a", readonly=False) as a, store.Store(tmp_path / "b", readonly=False) as b:
        a.write_video(record("x", ["x"]))
        a.write_video(record("y", ["y"], status="failed: bad"))
        b.write_video(record("y", ["y"]))
        assert b.copy_from(a) == 1  # x copied; the ok y is not replaced by a's failed y
        assert b.video_meta("y")["status"] == "ok" and b.verify("x")
        a._transaction([(fkey("x", 0), b"tampered")])
        with pytest.raises(ValueError, match="sha256"):
            b.copy_from(a)


def test_report_and_totals(tmp_path):
    with store.Store(tmp_path / "db", readonly=False) as db:
        db.write_schema(["tsav"])
        db.write_video(record("two", ["two_left", "two_right"], frames=10, faces=15))
        db.write_video(record("one", ["one"], frames=10, faces=5))
        db.write_video(record("bad", ["bad"], status="failed: VideoError: bad.mp4: cannot open"))
        rep = store_report.report(db)
    json.dumps(rep)  # plain data
    assert set(rep["videos"]) == {"two_left", "two_right", "one", "bad"}
    assert rep["videos"]["bad"]["status"].startswith("failed: VideoError") and rep["videos"]["bad"]["frames"] == 0
    for entry in rep["videos"].values():
        assert {"frames", "faces", "audio", "labels", "status", "sha256"} <= set(entry)
    t = rep["totals"]
    assert (t["videos"], t["videos_ok"], t["videos_failed"], t["tracks"]) == (3, 2, 1, 4)
    assert (t["frames"], t["track_frames"], t["faces"]) == (20, 30, 20)
    assert t["face_rate"] == pytest.approx(20 / 30)
    assert t["bytes_per_frame"] == pytest.approx(t["bytes"] / 20)


def test_one_environment_shared_per_process(tmp_path):
    """LMDB allows one open environment per process: Stores of one folder share it; closing one keeps
    the others working; a reader cannot write."""
    with store.Store(tmp_path / "db", readonly=False) as w:
        w.write_video(record("a", ["a"]))
        with store.Store(tmp_path / "db") as r1:
            r2 = store.Store(tmp_path / "db")
            assert r1.video_names() == ["a"]
            r2.close()
            r2.close()  # twice is harmless
            assert r1.video_names() == ["a"]
            with pytest.raises(lmdb.ReadonlyError):
                r1.write_video(record("b", ["b"]))
        w.write_video(record("b", ["b"]))
    with store.Store(tmp_path / "db") as r:
        assert r.video_names() == ["a", "b"]
        with pytest.raises(lmdb.Error, match="read-only"):
            store.Store(tmp_path / "db", readonly=False)


def test_stored_sha256_reads_value_by_value_and_equals_the_written_hash(tmp_path):
    with store.Store(tmp_path / "db", readonly=False) as db:
        sha = db.write_video(record("v", ["v_left", "v_right"], frames=12))
        db.write_video(record("v_", ["v__left"], frames=2))  # a name that 'v' prefixes
        assert db.stored_sha256("v") == sha and db.verify("v")
        keys = db.video_keys("v")
        assert keys == sorted(keys) and b"v/v" not in keys and not any(k.startswith(b"f/v__") for k in keys)
        assert db.video_keys("v", ["v_left"]) == [k for k in keys if b"v_right" not in k]  # tracks given
        assert list(db.iter_items([b"v/v/times", b"missing", b"t/v_left"])) == [
            (b"v/v/times", db.get(b"v/v/times")), (b"t/v_left", db.get(b"t/v_left"))]
        db.write([(fkey("v_left", 5), b"flipped")])
        assert db.stored_sha256("v") != sha and not db.verify("v")
