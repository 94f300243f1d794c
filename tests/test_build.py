"""The database stage end to end on the quick mini Aff-Wild2: create_database.py → LMDB, checked against
the generator's ground truth (frame counts, faces, landmarks, labels, audio) and for resumability,
bad input, shards, importers, parallelism, the report and the command line."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from helpers import subset

import create_database
from data import align, build, build_plan, chunks, masks, store, store_report, workers
from data.annotations import fit_length, read_label_file

REPO = Path(__file__).resolve().parents[1]
TSAV_LEVELS = {0, masks.TSAV_MOUTH, masks.TSAV_LEFT_BROW, masks.TSAV_RIGHT_BROW, masks.TSAV_LEFT_EYE,
               masks.TSAV_RIGHT_EYE, masks.TSAV_NOSE, masks.TSAV_JAW}
MTMT_LEVELS = {0, masks.MTMT_SKIN, masks.MTMT_BROWS, masks.MTMT_NOSE, masks.MTMT_EYES, masks.MTMT_UPPER_LIP,
               masks.MTMT_LOWER_LIP}
TWO = "7-30-640x360"  # the two-person video of the generator
FACELESS = "3-30-640x360"  # its face slides out of the frame for ~1 s
SILENT = "4-30-400x300"  # no audio stream


# --- helpers --------------------------------------------------------------------------------------
def cli(*args) -> int:
    return create_database.main([str(a) for a in args])


def shas(db_path: Path) -> dict[str, str]:
    with store.Store(db_path) as db:
        return {v: db.video_meta(v)["sha256"] for v in db.video_names()}


def frame_parts(db: store.Store, track: str) -> dict[int, set[str]]:
    """Frame index → stored parts (rgb, tsav, mtmt) of a track."""
    out: dict[int, set[str]] = {}
    for k in db.keys(f"f/{track}/".encode()):
        first, value = int(k.decode().rsplit("/", 1)[1]), db.get(k)
        assert first % store.FRAMES_PER_VALUE == 0
        for slot in range(store.FRAMES_PER_VALUE):
            for name in ("rgb", "tsav", "mtmt"):
                if store.unpack_frame(value, slot, name) is not None:
                    out.setdefault(first + slot, set()).add(name)
    return out


def part(db: store.Store, track: str, index: int, name: str) -> bytes | None:
    """One stored frame part (JPEG crop or PNG mask) of a track."""
    with db.env.begin() as txn:
        b = store.read_frame(txn, track, int(index), name)
    return None if b is None else bytes(b)


def decoded_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(c.streams.video[0]))


def jpeg(b: bytes) -> np.ndarray:
    return build.decode_crop(b).astype(np.float64)


# --- fixtures -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def meta(mini_quick) -> dict:
    return json.loads((mini_quick / "meta.json").read_text())


@pytest.fixture(scope="module")
def tracks(meta) -> dict[str, dict]:
    """Track name → its generator meta, with the video's meta under "video"."""
    return {t["name"]: {**t, "video": v} for v in meta["videos"] for t in v["tracks"]}


@pytest.fixture(scope="module")
def ann(mini_quick) -> Path:
    return mini_quick / "annotations" / "abaw2021"


@pytest.fixture(scope="module")
def ref(mini_quick, ann, tmp_path_factory) -> Path:
    """The reference: every video of the quick dataset, --workers 2, default flags (no mask stored), test lists."""
    out = tmp_path_factory.mktemp("ref") / "db"
    rc = cli("--videos", mini_quick / "videos", "--annotations", ann, "--test-lists",
             *sorted((mini_quick / "test_sets").glob("*.txt")), "--out", out, "--workers", 2)
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def stored_masks(mini_quick, ann, tmp_path_factory) -> Path:
    """Two videos' first 40 frames with both masks stored as PNG and WebP crops (quality 90)."""
    tmp = tmp_path_factory.mktemp("stored")
    out = tmp / "db"
    assert cli("--videos", subset(mini_quick, [TWO, "video2"], tmp / "v"), "--annotations", ann, "--out", out,
               "--workers", 1, "--masks", "tsav,mtmt", "--crop-format", "webp", "--crop-quality", 90,
               "--limit-frames", 40) == 0
    return out


@pytest.fixture(scope="module")
def db(ref):
    with store.Store(ref) as d:
        yield d


# --- content of the reference build ---------------------------------------------------------------
def test_every_video_and_track_is_stored(db, meta, tracks, mini_quick):
    assert db.video_names() == sorted(v["name"] for v in meta["videos"])  # test videos included
    assert db.video_meta(TWO)["tracks"] == [f"{TWO}_left", f"{TWO}_right"]
    for v in meta["videos"]:
        vm = db.video_meta(v["name"])
        assert vm["status"] == "ok", vm["status"]
        n = decoded_frames(mini_quick / v["path"])
        assert vm["frames"] == n == len(db.get_array(store.video_key(v["name"]) + b"/times"))
        for t in vm["tracks"]:
            assert t in tracks
            face = db.get_array(store.track_key(t) + b"/face")
            assert face.dtype == bool and face.shape == (n,)
            for suffix, shape in ((b"/landmarks", (n, 68, 2)), (b"/affine", (n, 2, 3)), (b"/confidence", (n,))):
                assert db.get_array(store.track_key(t) + suffix).shape == shape
            parts = frame_parts(db, t)
            assert sorted(parts) == np.flatnonzero(face).tolist()  # crop keys exist iff has_face
            assert all(p == {"rgb"} for p in parts.values())  # masks: drawn from the landmarks
            assert face.mean() > 0.5


def test_faceless_stretch_has_no_face(db, tracks):
    (first, last), = tracks[FACELESS]["faceless_frames"]  # 1-based, inclusive
    face = db.get_array(store.track_key(FACELESS) + b"/face")
    gone = face[first - 1:last]
    assert not gone[3:-3].any() and gone.mean() < 0.1
    assert face[:first - 1].all()
    assert not any(first - 1 + 3 <= i < last - 3 for i in frame_parts(db, FACELESS))


def test_alignment_matches_the_truth(db, tracks, mini_quick):
    """Truth 5 points through the stored affine land where the ideal similarity puts them (within a few px
    of the ArcFace template: the photo's own geometry leaves ~5.4 px RMS even for the ideal fit)."""
    for name in tracks:
        truth = np.load(mini_quick / "truth" / f"{name}.npy")
        affine = db.get_array(store.track_key(name) + b"/affine")
        face = db.get_array(store.track_key(name) + b"/face")
        assert np.isnan(affine[~face]).all() and np.isfinite(affine[face]).all()
        both = face & np.isfinite(truth).all(axis=(1, 2))
        err, rms = [], []
        for i in np.flatnonzero(both):
            ideal = align.transform_points(truth[i], align.estimate_similarity(truth[i], align.TEMPLATE_112))
            ours = align.transform_points(truth[i], affine[i])
            err.append(np.linalg.norm(ours - ideal, axis=1).mean())
            rms.append(np.sqrt(((ours - align.TEMPLATE_112) ** 2).sum(1).mean()))
        assert np.mean(np.array(err) < 3.0) >= 0.85, name
        assert np.median(err) < 1.5 and np.median(rms) < 6.5, name


def test_two_person_tracks_follow_their_person(db, mini_quick):
    truth = {s: np.load(mini_quick / "truth" / f"{TWO}_{s}.npy") for s in ("left", "right")}
    assert np.nanmean(truth["left"][:, :, 0]) < np.nanmean(truth["right"][:, :, 0])
    for side, other in (("left", "right"), ("right", "left")):
        affine = db.get_array(store.track_key(f"{TWO}_{side}") + b"/affine")
        ok = np.isfinite(affine).all(axis=(1, 2))
        own = [np.abs(align.transform_points(truth[side][i], affine[i]) - align.TEMPLATE_112).mean()
               for i in np.flatnonzero(ok)]
        wrong = [np.abs(align.transform_points(truth[other][i], affine[i]) - align.TEMPLATE_112).mean()
                 for i in np.flatnonzero(ok)]
        assert np.median(own) < 6 and np.median(wrong) > 30
        assert db.track_meta(f"{TWO}_{side}")["person"] == (0 if side == "left" else 1)


def test_masks_are_lossless_pngs_with_exact_levels(stored_masks):
    seen = {"tsav": set(), "mtmt": set()}
    with store.Store(stored_masks) as db:
        for track in ("video2", f"{TWO}_right"):
            for i in sorted(frame_parts(db, track))[::5]:
                for kind, levels in (("tsav", TSAV_LEVELS), ("mtmt", MTMT_LEVELS)):
                    b = part(db, track, i, kind)
                    assert b[:8] == b"\x89PNG\r\n\x1a\n"
                    m = masks.decode_png(b)
                    assert m.shape == (112, 112) and m.dtype == np.uint8
                    assert set(np.unique(m)) <= levels
                    seen[kind] |= set(np.unique(m).tolist())
                rgb = build.decode_crop(part(db, track, i, "rgb"))
                assert rgb.shape == (112, 112, 3)
    assert seen["tsav"] == TSAV_LEVELS and seen["mtmt"] == MTMT_LEVELS


def test_masks_not_stored_are_drawn_when_read_with_the_same_pixels(stored_masks, ref):
    from app import inference
    from data.clips import ClipDataset
    from data.reader import close_stores
    from utils.inputs import InputSpec

    track = f"{TWO}_left"
    with store.Store(stored_masks) as d, store.Store(ref) as r:
        assert r.schema()["masks"] == [] and d.schema()["masks"] == ["mtmt", "tsav"]
        assert set().union(*frame_parts(r, track).values()) == {"rgb"}  # the default stores no mask
        faces = sorted(frame_parts(d, track))
        small = [len(part(d, track, i, "rgb")) for i in faces]
        full = [len(part(r, track, i, "rgb")) for i in faces]
        assert sum(small) < 0.6 * sum(full)  # WebP q90 vs the default JPEG q95
        assert bytes(part(d, track, faces[0], "rgb"))[8:12] == b"WEBP"
        assert np.mean([cv2.PSNR(jpeg(part(d, track, i, "rgb")), jpeg(part(r, track, i, "rgb"))) for i in faces]) > 35
    for kind in ("tsav", "mtmt"):
        cfg = InputSpec(clip_len=4, dilation=6, mask=kind)
        drawn = ClipDataset(ref, None, "abaw2021", cfg, tracks=[track], labels=False)
        stored = ClipDataset(stored_masks, None, "abaw2021", cfg, tracks=[track], labels=False)
        assert drawn.draw_mask and not stored.draw_mask
        for i in (0, 18, 39):
            a, b = drawn.raw_frames(0, i), stored.raw_frames(0, i)
            assert b[..., 3].any() and np.array_equal(a[..., 3], b[..., 3])
        chunks = {}
        for name, path in (("drawn", ref), ("stored", stored_masks)):
            source = inference.db_track_source(str(path), track)
            chunks[name] = inference.ChunkFrames([source], cfg, inference.plan_chunks([source], [None], 16))[1].numpy()
        chunk, stored_chunk = chunks["drawn"], chunks["stored"]
        assert stored_chunk[..., 3].any() and np.array_equal(chunk[..., 3], stored_chunk[..., 3])
    close_stores()


def test_logmel_per_video(db, meta):
    for v in meta["videos"]:
        mel = db.get_array(store.video_key(v["name"]) + b"/logmel")
        assert db.video_meta(v["name"])["audio"] == v["has_audio"]
        if not v["has_audio"]:
            assert mel is None and v["name"] == SILENT
            continue
        assert mel.dtype == np.float16 and mel.shape[0] == 64
        # one column per 10 ms: covers the video, plus at most the tail of the last audio frame (<= 100 ms)
        assert -1 <= mel.shape[1] - v["duration_s"] / 0.01 <= 10, (v["name"], mel.shape)
        assert np.isfinite(mel).all()


def test_labels_fitted_with_validity_and_splits(db, tracks, ann):
    for name, t in tracks.items():
        tm = db.track_meta(name)
        n = tm["frames"]
        expected_splits = {task: s for task, s in t["split"].items() if s is not None}
        assert tm["splits"] == expected_splits
        labelled = {task for task, s in expected_splits.items() if s != "test"}
        assert set(tm["labels"]) == labelled
        for task in labelled:
            info = tm["labels"][task]
            assert info["split"] == t["split"][task] and info["lines"] == t["n_label_lines"]
            values = db.get_array(store.track_key(name) + f"/label/{task}/values".encode())
            valid = db.get_array(store.track_key(name) + f"/label/{task}/valid".encode())
            assert len(values) == len(valid) == n
            task_dir = {"VA": "VA_Set", "EXPR": "EXPR_Set", "AU": "AU_Set"}[task]
            src = read_label_file(ann / task_dir / info["split"] / f"{name}.txt", info["split"], task)
            assert len(src) == t["n_label_lines"] == n + t["label_delta"]
            np.testing.assert_array_equal(values, fit_length(src, n).values)
            k = min(n, len(src))
            np.testing.assert_array_equal(valid[:k], src.valid[:k])
            assert not valid[k:].any()  # padded frames are invalid
            assert info["valid"] == int(valid.all(axis=-1).sum() if valid.ndim > 1 else valid.sum())
    assert {t["label_delta"] for t in tracks.values()} >= {-3, 1, 2}


def test_report_json(ref, tmp_path, capsys, tracks):
    out = tmp_path / "r" / "report.json"
    assert cli("--report", ref, "--json", out) == 0
    assert "13 tracks" in capsys.readouterr().out
    rep = json.loads(out.read_text())
    assert set(rep["videos"]) == set(tracks)
    for name, entry in rep["videos"].items():
        assert {"frames", "faces", "audio", "labels", "status", "sha256"} <= set(entry)
        assert entry["status"] == "ok" and len(entry["sha256"]) == 64
        assert entry["frames"] == tracks[name]["video"]["n_frames"]
        assert entry["audio"] == tracks[name]["video"]["has_audio"]
    assert rep["videos"][f"{TWO}_left"]["sha256"] == rep["videos"][f"{TWO}_right"]["sha256"]
    assert rep["videos"]["video2"]["labels"] == {"AU": 67, "EXPR": 76, "VA": 70}
    assert rep["videos"]["11-30-480x270"]["labels"] == {}  # a test video: no labels
    t = rep["totals"]
    assert (t["videos"], t["videos_ok"], t["videos_failed"], t["tracks"]) == (12, 12, 0, 13)
    assert t["frames"] == sum(v["n_frames"] for v in {id(x["video"]): x["video"] for x in tracks.values()}.values())
    assert 0.8 < t["face_rate"] <= 1 and 1000 < t["bytes_per_frame"] < 50_000
    assert t["disk_bytes"] >= t["bytes"] and t["disk_bytes_per_frame"] >= t["bytes_per_frame"]


# --- runs on subsets ------------------------------------------------------------------------------
def live_group_members(pgid: int) -> list[int]:
    """Processes of a process group that are still alive (zombies excluded)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_database(mini_quick, ann, ref, tmp_path):
    """A parallel build SIGKILLed after its first commit: the database holds only complete videos, no
    worker outlives the main process, and rerunning the command completes it with the same bytes."""
    names = ["8-30-416x240", SILENT, "video5", "video9", "video12"]
    videos = subset(mini_quick, names, tmp_path / "videos")
    out = tmp_path / "db"
    args = ["--videos", videos, "--annotations", ann, "--out", out, "--workers", 2,
            "--test-lists", *sorted((mini_quick / "test_sets").glob("*.txt"))]
    proc = subprocess.Popen([sys.executable, "create_database.py", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "data.mdb").exists():
                with store.Store(out) as d:
                    if d.video_names():
                        break
            time.sleep(0.05)
        assert proc.poll() is None, "the build ended before it could be killed"
        proc.kill()  # SIGKILL to the main process only: its workers must notice and end by themselves
        proc.wait()
        deadline = time.monotonic() + 15
        while live_group_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live_group_members(proc.pid) == []
    finally:
        if live_group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    with store.Store(out) as d:
        done = d.video_names()
        assert 1 <= len(done) < len(names) and all(d.verify(v) for v in done)
    assert cli(*args) == 0
    want = shas(ref)
    assert shas(out) == {v: want[v] for v in names}
    jobs = build_plan.collect_jobs([str(videos)], str(ann), [str(p) for p in (mini_quick / "test_sets").glob("*.txt")])
    assert build.build(jobs, out, build_plan.BuildOptions(), workers=1) == []  # complete: everything skipped


@pytest.mark.slow
def test_shards_merge_and_workers_give_the_same_bytes(mini_quick, ann, ref, tmp_path, caplog):
    """Two shards built with --workers 1, merged: every video's sha256 equals the --workers 2 build's
    (which also shows the stored content does not depend on where the videos were read from)."""
    caplog.set_level(logging.INFO)
    names = [TWO, "video2", "6-30-480x272"]
    videos = subset(mini_quick, names, tmp_path / "videos")
    test_lists = sorted((mini_quick / "test_sets").glob("*.txt"))
    shard_dbs = [tmp_path / f"shard{k}" for k in range(2)]
    for k, out in enumerate(shard_dbs):
        assert cli("--videos", videos, "--annotations", ann, "--test-lists", *test_lists, "--out", out,
                   "--workers", 1, "--shard", f"{k}/2") == 0
    got = [shas(s) for s in shard_dbs]
    assert sorted(got[0]) == sorted(names)[0::2] and sorted(got[1]) == sorted(names)[1::2]
    assert cli("--out", tmp_path / "merged", "--merge", *shard_dbs) == 0
    want = shas(ref)
    assert shas(tmp_path / "merged") == {v: want[v] for v in names}
    logged = caplog.text
    assert "92 label lines for 90 frames, truncating" in logged  # video2
    assert "81 label lines for 84 frames, padding with invalid" in logged  # 6-30-480x272


@pytest.mark.slow
def test_bad_videos_fail_alone_and_are_retried(mini_quick, ann, ref, tmp_path, caplog, capsys):
    videos = subset(mini_quick, ["video12", "1-30-480x270"], tmp_path / "videos")
    good = (mini_quick / "videos" / "batch1" / "1-30-480x270.mp4").read_bytes()
    (videos / "truncated.mp4").write_bytes(good[: len(good) // 2])
    (videos / "garbage.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 30_000, np.uint8).tobytes())
    out = tmp_path / "db"
    test_lists = sorted((mini_quick / "test_sets").glob("*.txt"))
    args = ("--videos", videos, "--annotations", ann, "--out", out, "--workers", 1, "--test-lists", *test_lists)
    assert cli(*args) == 1
    text = capsys.readouterr().out
    assert "FAILED" in text and "garbage.mp4" in text and "truncated.mp4" in text
    assert "garbage.mp4" in caplog.text and "failed" in caplog.text
    with store.Store(out) as d:
        for bad in ("garbage", "truncated"):
            status = d.video_meta(bad)["status"]
            assert status.startswith("failed: VideoError") and bad in status
        assert d.keys(b"f/garbage/") == [] and d.keys(b"t/garbage") == []
        rep = store_report.report(d)
    assert rep["videos"]["garbage"]["status"].startswith("failed") and rep["totals"]["videos_failed"] == 2
    want = shas(ref)
    assert {v: shas(out)[v] for v in ("video12", "1-30-480x270")} == {v: want[v] for v in ("video12", "1-30-480x270")}
    # the user replaces one bad file: the rerun retries both failed videos and nothing else
    (videos / "garbage.mp4").write_bytes((mini_quick / "videos" / "batch2" / "video12.avi").read_bytes())
    jobs = build_plan.collect_jobs([str(videos)], str(ann), [str(p) for p in test_lists])
    metas = build.build(jobs, out, build_plan.BuildOptions(), workers=1)
    assert sorted((m["name"], m["status"][:6]) for m in metas) == [("garbage", "ok"), ("truncated", "failed")]
    assert {v: shas(out)[v] for v in ("video12", "1-30-480x270")} == {v: want[v] for v in ("video12", "1-30-480x270")}


def test_cropped_aligned_import(mini_quick, ann, tmp_path):
    names = [FACELESS, TWO]
    videos = subset(mini_quick, names, tmp_path / "videos")
    crops = mini_quick / "cropped_aligned"
    out = tmp_path / "db"
    assert cli("--videos", videos, "--annotations", ann, "--out", out, "--workers", 1,
               "--cropped-aligned", crops, "--masks", "tsav") == 0
    with store.Store(out) as d:
        for name in names:
            assert d.video_meta(name)["importer"] == "cropped_aligned"
        for track in (FACELESS, f"{TWO}_left", f"{TWO}_right"):
            face = d.get_array(store.track_key(track) + b"/face")
            official = {int(p.stem) - 1 for p in (crops / track).glob("*.jpg")}
            assert set(np.flatnonzero(face).tolist()) == official  # absent image → no face
            assert sorted(frame_parts(d, track)) == sorted(official)
            assert np.isnan(d.get_array(store.track_key(track) + b"/affine")).all()
            lm = d.get_array(store.track_key(track) + b"/landmarks").astype(np.float64)
            err = [np.abs(align.five_points(lm[i]) - align.TEMPLATE_112).max() for i in sorted(official)]
            assert np.median(err) < 8  # fitted on the crop: lands on the template (up to the photo's shape)
            for i in sorted(official)[::20]:
                mine = jpeg(part(d, track, i, "rgb"))
                theirs = cv2.imread(str(crops / track / f"{i + 1:05d}.jpg"))[:, :, ::-1].astype(np.float64)
                assert np.abs(mine - theirs).mean() < 2.0
                m = masks.decode_png(part(d, track, i, "tsav"))
                assert set(np.unique(m)) <= TSAV_LEVELS and (m > 0).sum() > 100


def test_tsav_alignment_import_reproduces_the_crops(mini_quick, ann, db, tmp_path):
    """Pickles in TSAV's format made from the reference DB's affines and landmarks → the same crops."""
    names = ["1-30-480x270", FACELESS, TWO]
    videos = subset(mini_quick, names, tmp_path / "videos")
    pk = tmp_path / "tsav"
    pk.mkdir()
    tracks = ["1-30-480x270", FACELESS, f"{TWO}_left", f"{TWO}_right"]
    for i, track in enumerate(tracks):
        affine = db.get_array(store.track_key(track) + b"/affine")
        lm = db.get_array(store.track_key(track) + b"/landmarks")
        d = {"frame": [None if np.isnan(a).any() else a.astype(np.float64) for a in affine],
             "mask": [None if np.isnan(x).any() else x.astype(np.float32) for x in lm]}
        name = f"{track}_alignment_mask.pkl" if i % 2 else f"{track}.pkl"
        (pk / name).write_bytes(pickle.dumps(d))
    out = tmp_path / "db"
    assert cli("--videos", videos, "--annotations", ann, "--out", out, "--workers", 1, "--tsav-alignment", pk) == 0
    with store.Store(out) as d:
        assert {d.video_meta(v)["importer"] for v in names} == {"tsav"}
        for track in tracks:
            key = store.track_key(track)
            face = d.get_array(key + b"/face")
            np.testing.assert_array_equal(face, db.get_array(key + b"/face"))
            np.testing.assert_array_equal(d.get_array(key + b"/landmarks"), db.get_array(key + b"/landmarks"))
            np.testing.assert_array_equal(d.get_array(key + b"/affine"), db.get_array(key + b"/affine"))
            pickled = pickle.loads((pk / (f"{track}_alignment_mask.pkl" if tracks.index(track) % 2
                                          else f"{track}.pkl")).read_bytes())["mask"]
            for i in np.flatnonzero(face)[::7]:
                mine = jpeg(part(d, track, i, "rgb"))
                ref_crop = jpeg(part(db, track, i, "rgb"))
                assert np.abs(mine - ref_crop).mean() < 1.0
                # the TSAV mask is stored, drawn from the pickle's landmarks (not from the float16 ones)
                drawn = masks.render("tsav", np.asarray(pickled[i], np.float64))
                np.testing.assert_array_equal(masks.decode_png(part(d, track, i, "tsav")), drawn)
        assert d.schema()["masks"] == ["tsav"]


def test_limit_limit_frames_masks_and_rebuild_on_other_options(mini_quick, ann, tmp_path):
    out = tmp_path / "db"
    base = ("--videos", mini_quick / "videos", "--annotations", ann, "--out", out, "--workers", 1,
            "--masks", "tsav", "--limit", 2)
    assert cli(*base, "--limit-frames", 4) == 0
    with store.Store(out) as d:
        assert d.schema()["masks"] == ["tsav"]
        assert d.video_names() == ["1-30-480x270", "10-30-560x316"]  # the first two by name
        for v in d.video_names():
            assert d.video_meta(v)["frames"] == 4 and len(d.get_array(store.video_key(v) + b"/times")) == 4
            assert len(d.get_array(store.track_key(v) + b"/label/VA/values")) == 4
            assert set().union(*frame_parts(d, v).values()) == {"rgb", "tsav"}
    assert cli(*base, "--limit-frames", 6) == 0  # other options: rebuilt, not skipped
    with store.Store(out) as d:
        assert [d.video_meta(v)["frames"] for v in d.video_names()] == [6, 6]
    assert cli(*base[:-4], "--masks", "tsav,mtmt", "--limit", 1) == 2  # schema mismatch: one-line error


# --- driver details -------------------------------------------------------------------------------
def _fake_process_video(job: build_plan.VideoJob, opts: build_plan.BuildOptions, **hooks) -> store.VideoRecord:
    """Stands in for the pipeline in the crash test (module level: workers get it by reference)."""
    if job.name == "crash":
        os._exit(3)  # the worker dies without a word, as on a segfault or the OOM killer
    rec = build.new_record(job, opts)
    rec.meta.update(status="ok", frames=1, faces=0, stats={"seconds": {}, "bytes": 0})
    return rec


def test_a_dying_worker_fails_only_its_video(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "START_METHOD", "fork")  # so the workers see the stand-in (no cv2/torch in it)
    monkeypatch.setattr(build, "process_video", _fake_process_video)
    jobs = [build_plan.VideoJob(f"/nowhere/{n}.mp4", n, [n], source="tsav") for n in ("a", "b", "crash", "d", "e")]
    metas = build.build(jobs, tmp_path / "db", build_plan.BuildOptions(), workers=2)
    status = {m["name"]: m["status"] for m in metas}
    assert sorted(status) == ["a", "b", "crash", "d", "e"]
    assert status.pop("crash").startswith("failed: worker process died")
    assert set(status.values()) == {"ok"}


def test_summary_face_rate_counts_every_track():
    metas = [{"status": "ok", "tracks": ["v_left", "v_right"], "frames": 100, "faces": 150,
              "stats": {"seconds": {"detect": 2.0}, "bytes": 3000}},
             {"status": "ok", "tracks": ["w"], "frames": 100, "faces": 50, "stats": {"seconds": {}, "bytes": 1000}},
             {"status": "failed: x", "tracks": ["z"], "stats": {"seconds": {}, "bytes": 0}}]
    rows = dict((r[0], r[1]) for r in create_database.summary_rows(metas, 4.0))
    assert rows["videos ok / failed"] == "2 / 1"
    assert rows["face rate (faces / frames x tracks)"] == "66.7%"  # 200 faces / (100x2 + 100x1)
    assert rows["frames/s (wall)"] == "50.0" and rows["bytes/frame"] == "20"


@pytest.mark.parametrize("args, needle", [
    (["--shard", "3/2"], "3/2"),
    (["--workers", "0"], "positive"),
    (["--videos", "/no/such/folder"], "/no/such/folder"),
    (["--report", "{tmp}"], "{tmp}"),
    (["--report", "{tmp}/missing"], "{tmp}/missing"),
    (["--report", "{tmp}/lmdb"], "{tmp}/lmdb"),
    (["--merge", "{tmp}/lmdb", "--out", "{tmp}/m"], "{tmp}/lmdb"),
    (["--merge", "{tmp}/missing", "--out", "{tmp}/m"], "{tmp}/missing"),
    (["--masks", "tsav,foo", "--videos", "{tmp}"], "foo"),
    (["--cropped-aligned", "/no/crops", "--videos", "{videos}", "--annotations", ""], "/no/crops"),
    (["--json", "x.json"], "--report"),
])
def test_bad_flags_give_one_line_errors(args, needle, tmp_path, capsys, mini_quick):
    fill = {"tmp": str(tmp_path), "videos": str(mini_quick / "videos")}
    with store.Store(tmp_path / "lmdb", readonly=False) as other:  # an LMDB, but not one of ours
        other._transaction([(b"some", b"thing")])
    args = [a.format(**fill) for a in args]
    try:
        rc = create_database.main(args + ([] if "--out" in args else ["--out", str(tmp_path / "db")]))
    except SystemExit as e:  # argparse's own errors
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert needle.format(**fill) in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "db" / "data.mdb").exists()


# --- long videos: several transactions per video, progress (issue 10, item 11) ----------------------------
@pytest.mark.slow
def test_chunked_builds_store_the_same_bytes_and_show_frame_progress(mini_quick, ann, tmp_path, monkeypatch, capsys):
    """Chunks of 20 KB (≈ 10 per video): in-process and with workers, the same sha256 as one transaction per
    video, no marker left, and the bar shows the frames of the video in flight."""
    monkeypatch.setattr(chunks, "PROGRESS_SECONDS", 0.0)
    names = [TWO, "video2"]
    jobs = build_plan.collect_jobs([str(subset(mini_quick, names, tmp_path / "videos"))], str(ann))
    assert build.build(jobs, tmp_path / "whole", build_plan.BuildOptions(limit_frames=48, chunk_bytes=1 << 30)) != []
    want = shas(tmp_path / "whole")
    capsys.readouterr()
    for n in (1, 2):
        out = tmp_path / f"db{n}"
        metas = build.build(jobs, out, build_plan.BuildOptions(limit_frames=48, chunk_bytes=20_000), workers=n)
        assert all(m["stats"]["chunks"] >= 5 for m in metas), [m["stats"] for m in metas]
        assert shas(out) == want
        with store.Store(out) as d:
            assert d.keys(chunks.PARTIAL_PREFIX) == [] and all(d.verify(v) for v in names)
        err = capsys.readouterr().err  # workers (which do not see the monkeypatch) report once a second
        assert f"{TWO} 40/90 frames" in err if n == 1 else re.search(rf"{TWO} \d+/90 frames", err)


def test_a_chunk_never_holds_much_more_than_chunk_bytes(mini_quick, ann):
    """What the pipeline holds before handing it on stays within chunk_bytes plus one frame group per track."""
    job = next(j for j in build_plan.collect_jobs([str(mini_quick / "videos")], str(ann)) if j.name == TWO)
    sent: list[int] = []
    rec = build.process_video(job, build_plan.BuildOptions(chunk_bytes=30_000),
                              send=lambda items: sent.append(sum(len(k) + len(v) for k, v in items)))
    group = max(len(v) for k, v in rec.items if k.startswith(b"f/"))
    assert len(sent) == rec.chunks == rec.meta["stats"]["chunks"] >= 5
    assert all(30_000 <= n <= 30_000 + 2 * group for n in sent)
    assert sum(len(k) + len(v) for k, v in rec.items if k.startswith(b"f/")) < 30_000 + 2 * group
    assert rec.meta["stats"]["bytes"] == sum(sent) + sum(len(k) + len(v) for k, v in rec.items)


@pytest.mark.slow
def test_a_build_killed_inside_a_video_resumes_to_the_same_bytes(mini_quick, ann, ref, tmp_path):
    """SIGKILL while a video is half written (its marker present, no meta): the rerun clears the partial keys
    and ends with the reference's bytes, no key that a clean build would not have."""
    names = ["video2", "video5"]
    videos = subset(mini_quick, names, tmp_path / "videos")
    out = tmp_path / "db"
    args = ["--videos", videos, "--annotations", ann, "--out", out, "--workers", 1, "--chunk-mb", 0.03]
    proc = subprocess.Popen([sys.executable, "create_database.py", *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "data.mdb").exists():
                with store.Store(out) as d:
                    if d.keys(chunks.PARTIAL_PREFIX):
                        break
            time.sleep(0.01)
        assert proc.poll() is None, "the build ended before it could be killed"
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    with store.Store(out) as d:
        (partial,) = [k.decode().split("/", 1)[1] for k in d.keys(chunks.PARTIAL_PREFIX)]
        assert d.video_meta(partial) is None and d.keys(f"f/{partial}/".encode())
    assert cli(*args) == 0
    assert shas(out) == {v: shas(ref)[v] for v in names}
    clean = tmp_path / "clean"
    assert cli(*args[:5], clean, *args[6:]) == 0
    with store.Store(out) as d, store.Store(clean) as c:
        assert d.keys(b"") == c.keys(b"")


# --- untrusted TSAV pickles (item 4) ------------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_tsav_pickle_that_runs_code_fails_its_video_without_running(mini_quick, tmp_path, capsys):
    videos = subset(mini_quick, ["video2"], tmp_path / "videos")
    pk = tmp_path / "tsav"
    pk.mkdir()
    marker = tmp_path / "ran"
    (pk / "video2.pkl").write_bytes(pickle.dumps({"frame": [_Evil(marker)], "mask": [None]}))
    out = tmp_path / "db"
    assert cli("--videos", videos, "--annotations", "", "--out", out, "--workers", 1, "--tsav-alignment", pk,
               "--limit-frames", 4) == 1
    failed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and str(pk / "video2.pkl") in failed[0] and "refused" in failed[0]
    assert not marker.exists()
    with store.Store(out) as d:
        assert d.video_meta("video2")["status"].startswith("failed: UnsafePickleError")


# --- damaged databases (item 6) -----------------------------------------------------------------------------
def flip_inside_value(db_path: Path, value: bytes, offset: int) -> None:
    """Flip one byte of a stored value where it lies in data.mdb (a value is stored contiguously)."""
    data = bytearray((db_path / "data.mdb").read_bytes())
    at = data.find(value)
    assert at >= 0
    while at >= 0:  # every copy: an older copy may linger in a page LMDB has freed
        data[at + offset] ^= 0xFF
        at = data.find(value, at + 1)
    (db_path / "data.mdb").write_bytes(bytes(data))


def test_verify_finds_flipped_bytes_and_a_verified_rebuild_repairs_them(mini_quick, ann, tmp_path, capsys):
    names = ["video2", "video5"]
    videos = subset(mini_quick, names, tmp_path / "videos")
    out = tmp_path / "db"
    args = ("--videos", videos, "--annotations", ann, "--out", out, "--workers", 1, "--limit-frames", 24)
    assert cli(*args) == 0
    good = shas(out)
    with store.Store(out) as d:
        value = d.get(store.group_key("video5", 8))
    flip_inside_value(out, value, len(value) // 2)  # inside a JPEG's entropy-coded data: still decodes
    capsys.readouterr()
    assert cli("--report", out) == 0  # the stored sha256 alone cannot tell
    assert cli("--report", out, "--verify", "--json", tmp_path / "r.json") == 1
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[-1] for line in text.splitlines() if line.startswith("video")}
    assert rows == {"video2": "ok", "video5": "MISMATCH"}
    assert "DAMAGED: video5" in text
    assert json.loads((tmp_path / "r.json").read_text())["videos"]["video5"]["verified"] == "MISMATCH"
    assert cli(*args) == 0 and "nothing to do" in capsys.readouterr().out  # complete: skipped
    metas = build.build(build_plan.collect_jobs([str(videos)], str(ann)), out, build_plan.BuildOptions(limit_frames=24),
                        verify=True)
    assert [m["name"] for m in metas] == ["video5"]
    assert shas(out) == good and cli("--report", out, "--verify") == 0


# --- flags (item 13) ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--workers", "--detect-every", "--limit", "--limit-frames", "--chunk-mb",
                                  "--crop-quality"])
@pytest.mark.parametrize("value", ["0", "-1", "nan", "x"])
def test_zero_negative_or_non_numbers_are_refused_when_parsed(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        create_database.main(["--videos", str(tmp_path), "--out", str(tmp_path / "db"), flag, value])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and flag in err and len(err.splitlines()) == 1
    assert not (tmp_path / "db").exists()
