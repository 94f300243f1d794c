"""data/chunks.py, data/channel.py: a video written in several transactions with its meta last (same sha256 as
one transaction, partial data of an interrupted write cleared), the producer's chunking, the worker channel."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from data import channel, chunks, store


def fkey(track: str, i: int) -> bytes:
    return store.group_key(track, i * store.FRAMES_PER_VALUE)


def video(name: str, tracks: list[str], groups: int = 6, status: str = "ok", seed: int = 0) -> store.VideoRecord:
    """A record with ``groups`` frame-group values per track (1-3 KB each) and the per-track arrays."""
    rng = np.random.default_rng(seed)
    rec = store.VideoRecord(name, {"name": name, "tracks": tracks, "status": status, "source": f"/v/{name}.mp4",
                                   "stats": {"seconds": {}, "bytes": 0}})
    if status != "ok":
        return rec
    for t in tracks:
        for g in range(groups):
            rec.items.append((fkey(t, g), rng.integers(0, 256, int(rng.integers(1000, 3000)), np.uint8).tobytes()))
    for t in tracks:
        rec.put_array(store.track_key(t) + b"/face", np.ones(groups * store.FRAMES_PER_VALUE, bool))
        rec.put_json(store.track_key(t), {"video": name, "frames": groups * store.FRAMES_PER_VALUE})
    rec.put_array(store.video_key(name) + b"/times", np.arange(groups * store.FRAMES_PER_VALUE) / 30.0)
    return rec


def split(rec: store.VideoRecord, n_first: int) -> tuple[list, store.VideoRecord]:
    """(the first ``n_first`` items as chunk material, a record holding the rest)."""
    rest = store.VideoRecord(rec.name, dict(rec.meta), rec.items[n_first:])
    return rec.items[:n_first], rest


def every_key(db: store.Store) -> list[bytes]:
    return db.keys(b"")


def test_chunks_then_finish_store_the_same_bytes_and_sha256_as_one_transaction(tmp_path):
    whole, parts = video("v", ["v_left", "v_right"]), video("v", ["v_left", "v_right"])
    with store.Store(tmp_path / "one", readonly=False) as one, store.Store(tmp_path / "many", readonly=False) as many:
        sha = one.write_video(whole)
        first, rest = split(parts, 9)
        w = chunks.VideoWriter(many)
        for k in range(0, 9, 3):
            w.chunk("v", ["v_left", "v_right"], first[k:k + 3])
            assert many.video_meta("v") is None and many.keys(chunks.PARTIAL_PREFIX) == [b"partial/v"]
        assert w.finish(rest) == sha
        assert many.keys(chunks.PARTIAL_PREFIX) == []
        assert list(many.scan(b"")) == list(one.scan(b"")) and many.verify("v")


def test_first_chunk_clears_an_older_version_and_an_interrupted_write(tmp_path):
    """A stored version with other tracks, and the leftovers of a killed write (marker, no meta), are gone
    once the video is written again; what remains equals a fresh database's bytes."""
    new = video("v", ["v"], groups=3, seed=1)
    with store.Store(tmp_path / "fresh", readonly=False) as fresh:
        fresh.write_video(video("v", ["v"], groups=3, seed=1))
        want = list(fresh.scan(b""))
    with store.Store(tmp_path / "db", readonly=False) as db:
        db.write_video(video("v", ["v_left", "v_right"], groups=5))  # an older, complete version
        killed = chunks.VideoWriter(db)
        killed.chunk("v", ["v", "v_x"], video("v", ["v", "v_x"], groups=7, seed=2).items[:10])  # then SIGKILL
        assert db.video_meta("v") is None and db.keys(b"f/v_left/") == []
        first, rest = split(new, 2)
        w = chunks.VideoWriter(db)
        w.chunk("v", ["v"], first)
        w.finish(rest)
        assert list(db.scan(b"")) == want


def test_a_failed_record_removes_the_chunks_written(tmp_path):
    with store.Store(tmp_path / "db", readonly=False) as db:
        w = chunks.VideoWriter(db)
        w.chunk("v", ["v"], video("v", ["v"]).items[:4])
        w.finish(video("v", ["v"], status="failed: ValueError: bad"))
        assert every_key(db) == [b"v/v"] and db.verify("v")


def test_an_abandoned_attempt_is_cleared_by_the_retry(tmp_path):
    """A worker that died after some chunks: the retry (no chunk: short, or chunks again) replaces them."""
    for retry_chunks in (0, 2):
        with store.Store(tmp_path / f"db{retry_chunks}", readonly=False) as db:
            w = chunks.VideoWriter(db)
            w.chunk("v", ["v"], video("v", ["v"], groups=9, seed=3).items[:8])
            w.abandon("v")
            first, rest = split(video("v", ["v"], groups=2), retry_chunks)
            if first:
                w.chunk("v", ["v"], first)
            w.finish(rest)
            assert len(db.keys(b"f/v/")) == 2 and db.keys(chunks.PARTIAL_PREFIX) == [] and db.verify("v")


def test_clear_interrupted_removes_partial_videos_only(tmp_path):
    with store.Store(tmp_path / "db", readonly=False) as db:
        db.write_video(video("done", ["done"]))
        w = chunks.VideoWriter(db)
        w.chunk("half", ["half_left", "half_right"], video("half", ["half_left", "half_right"]).items[:7])
        keep = list(db.scan(b"v/done")) + list(db.scan(b"f/done/")) + list(db.scan(b"t/done"))
        assert chunks.clear_interrupted(db) == ["half"]
        assert sorted(list(db.scan(b""))) == sorted(keep) and db.verify("done")


def test_spill_sends_bounded_chunks_and_reports_progress(monkeypatch):
    monkeypatch.setattr(chunks, "PROGRESS_SECONDS", 0.0)
    rec = store.VideoRecord("v", {})
    sent, progress = [], []
    spill = chunks.Spill(rec, 10_000, 50, send=sent.append, progress=lambda d, n: progress.append((d, n)))
    held = []
    for i in range(60):  # 60 frames of 1 KB: a group of 8 every 8th frame
        if i % 8 == 7:
            rec.items.append((fkey("v", i // 8), bytes(8 * 1000)))
        spill.frame_done(i + 1)
        held.append(sum(len(v) for _, v in rec.items))
    assert max(held) < 10_000 and spill.chunks == len(sent) == 3
    assert all(10_000 <= sum(len(k) + len(v) for k, v in c) < 10_000 + 8_100 for c in sent)
    assert spill.sent_bytes == sum(len(k) + len(v) for c in sent for k, v in c)
    keys = [k for c in sent for k, _ in c] + [k for k, _ in rec.items]
    assert len(keys) == len(set(keys)) == 7  # every group once
    assert progress[0] == (1, 50) and progress[-1] == (60, 60)  # the estimate grows when it was short


def test_channel_messages_roundtrip_and_a_client_reaches_the_server():
    items = [(b"f/x/000000", b"\x00" * 5), (b"t/x", b"{}"), (b"k", b"")]
    assert channel.decode(channel.encode_chunk("17", items)) == (channel.CHUNK, "17", items)
    assert channel.decode(channel.encode_progress("3", 40, 90)) == (channel.PROGRESS, "3", (40, 90))
    server = channel.ChannelServer()
    got = []
    try:
        client = channel.ChannelClient(server.address, server.authkey)
        t = threading.Thread(target=lambda: (client.send_chunk("1", items), client.send_progress("1", 8, 9)))
        t.start()
        for _ in range(200):
            server.poll(lambda *m: got.append(m), 0.05)
            if len(got) == 2:
                break
        t.join()
        assert got == [(channel.CHUNK, "1", items), (channel.PROGRESS, "1", (8, 9))]
        intruder = channel.ChannelClient(server.address, b"wrong key")
        with pytest.raises(Exception):  # noqa: B017 - multiprocessing's AuthenticationError or a closed pipe
            intruder.send_progress("1", 1, 1)
    finally:
        server.close()


def test_marker_is_json_with_the_tracks(tmp_path):
    with store.Store(tmp_path / "db", readonly=False) as db:
        chunks.VideoWriter(db).chunk("v", ["v_left", "v_right"], [])
        assert json.loads(db.get(chunks.partial_key("v"))) == {"tracks": ["v_left", "v_right"]}


def test_copy_videos_in_chunks_keeps_bytes_and_checks_sha256(tmp_path):
    with store.Store(tmp_path / "shard", readonly=False) as shard, store.Store(tmp_path / "out", readonly=False) as out:
        shard.write_video(video("x", ["x_left", "x_right"], groups=9))
        shard.write_video(video("y", ["y"], status="failed: bad"))
        out.write_video(video("y", ["y"], groups=2))
        sent = []
        writer = chunks.VideoWriter(out)
        real_chunk = writer.chunk
        writer.chunk = lambda *a: (sent.append(a), real_chunk(*a))
        assert chunks.copy_videos(shard, writer, chunk_bytes=5_000) == 1  # the ok y is not replaced by a failed y
        assert len(sent) >= 4 and out.video_meta("y")["status"] == "ok"
        assert out.video_meta("x") == shard.video_meta("x") and out.verify("x") and out.keys(b"partial/") == []
        assert list(out.scan(b"f/x")) == list(shard.scan(b"f/x"))
        shard.write([(fkey("x_left", 3), b"tampered")])
        with pytest.raises(ValueError, match="video x does not match its sha256"):
            chunks.copy_videos(shard, chunks.VideoWriter(out))
