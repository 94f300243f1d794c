"""The embedded mini Aff-Wild2 (data/synthetic.py): layout, formats, media facts and that labels are in
the pixels and the sound. One full generation per module, plus three quick ones for determinism."""

import filecmp
import json
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from av.video.frame import PictureType
from numpy.lib.stride_tricks import sliding_window_view

import tasks as T
from data import annotations as A
from tools import synthetic as S

LUMA = np.array([0.299, 0.587, 0.114])
EDITION_DIRS = {
    "abaw2020": (("VA_Set", "EXPR_Set", "AU_Set"), "Training_Set", T.EXPR_NAMES_7, T.AU_NAMES_8),
    "abaw2021": (("VA_Set", "EXPR_Set", "AU_Set"), "Train_Set", T.EXPR_NAMES_7, T.AU_NAMES_12),
    "abaw3": (("VA_Estimation_Challenge", "EXPR_Classification_Challenge", "AU_Detection_Challenge"),
              "Train_Set", T.EXPR_NAMES_8, T.AU_NAMES_12),
}


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthetic")
    meta = S.generate(root, seed=0)
    return root, meta


@pytest.fixture(scope="module")
def tracks(ds) -> dict[str, dict]:
    """Track name → its meta entry, with the video entry under "video"."""
    _, meta = ds
    return {t["name"]: {**t, "video": v} for v in meta["videos"] for t in v["tracks"]}


@pytest.fixture(scope="module")
def abaw3(ds) -> dict[str, dict[str, A.TrackLabels]]:
    return A.read_annotations(ds[0] / "annotations" / "abaw3")


@pytest.fixture(scope="module")
def decoded(ds) -> dict[str, dict]:
    """Every video decoded once: frame count, frame pts (s) in display order, the pts as the decoder
    handed them out (decode order for H.264 in AVI), picture types, mono audio and its start time."""
    root, meta = ds
    out = {}
    for v in meta["videos"]:
        with av.open(str(root / v["path"])) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            frames = [(float(f.pts * vs.time_base), PictureType(f.pict_type).name) for f in c.decode(vs)]
            raw = np.array([t for t, _ in frames])
            # frames come out in display order; every file here holds exactly their pts, so sorted
            info = {"n": len(raw), "pts": np.sort(raw), "raw_pts": raw, "types": {p for _, p in frames},
                    "codec": vs.codec_context.name, "audio": None, "audio_codec": None}
        with av.open(str(root / v["path"])) as c:
            if c.streams.audio:
                a = c.streams.audio[0]
                chunks, start = [], None
                for f in c.decode(a):
                    start = float(f.pts * a.time_base) if start is None else start
                    x = f.to_ndarray().reshape(-1)
                    chunks.append(x / 32768.0 if x.dtype == np.int16 else x)
                info.update(audio=np.concatenate(chunks), audio_start=start, audio_rate=a.rate,
                            audio_codec=a.codec_context.name)
        out[v["name"]] = info
    return out


def crop_features(root: Path, track: str) -> dict[str, np.ndarray]:
    """Per crop: frame index (0-based), chroma (Cb/Y, Cr/Y) of the face centre after downsizing to
    32x32, and the median luminance of the face centre at full size."""
    ks, chroma, bright = [], [], []
    for f in sorted((root / "cropped_aligned" / track).glob("*.jpg")):
        img = cv2.imread(str(f))[:, :, ::-1].astype(np.float64)
        small = cv2.resize(img, (32, 32), interpolation=cv2.INTER_AREA)[9:27, 9:23].reshape(-1, 3).mean(0)
        y = small @ LUMA
        ks.append(int(f.stem) - 1)
        chroma.append(((small[2] - y) / 1.772 / y, (small[0] - y) / 1.402 / y))
        bright.append(np.median(img[30:95, 30:82] @ LUMA))
    return {"k": np.array(ks), "chroma": np.array(chroma), "bright": np.array(bright)}


def labels_at(lab: A.TrackLabels, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and validity at 0-based frames k (frames past the file's end count as invalid)."""
    inside = k < len(lab)
    kk = np.where(inside, k, 0)
    valid = lab.valid[kk] & (inside if lab.valid.ndim == 1 else inside[:, None])
    return lab.values[kk], valid


# ----------------------------------------------------------------------------------------------------
# Layout and formats


def test_layout(ds, tracks):
    root, meta = ds
    assert len(meta["videos"]) == 12 and len(tracks) == 13
    for batch in ("batch1", "batch2"):
        files = list((root / "videos" / batch).iterdir())
        assert files and {f.suffix for f in files} <= {".mp4", ".avi"}
    suffixes = {Path(v["path"]).suffix for v in meta["videos"]}
    assert suffixes == {".mp4", ".avi"}
    for edition, (task_dirs, train, _, _) in EDITION_DIRS.items():
        for d in task_dirs:
            for split in (train, "Validation_Set"):
                assert (root / "annotations" / edition / d / split).is_dir(), (edition, d, split)
    for name in ("training_set_annotations.txt", "validation_set_annotations.txt"):
        assert (root / "annotations" / "mtl" / name).is_file()
    for task in ("VA", "EXPR", "AU", "MTL"):
        assert (root / "test_sets" / f"{task}_test_set.txt").is_file()
    for name in tracks:
        assert (root / "cropped_aligned" / name / "00001.jpg").is_file()
        assert np.load(root / "truth" / f"{name}.npy").shape == (tracks[name]["video"]["n_frames"], 5, 2)
    assert json.loads((root / "meta.json").read_text()) == meta
    sizes = {cv2.imread(str(next((root / "cropped_aligned" / n).glob("*.jpg")))).shape for n in tracks}
    assert sizes == {(112, 112, 3)}


def test_videos_are_10_to_20_s_and_320_to_640_wide(ds):
    for v in ds[1]["videos"]:
        assert 10 <= v["duration_s"] <= 20.5 and 320 <= v["width"] <= 640, v["name"]


@pytest.mark.parametrize("edition", list(EDITION_DIRS))
def test_headers_and_parsing_per_edition(ds, tracks, edition):
    root = ds[0]
    task_dirs, train, expr_names, au_names = EDITION_DIRS[edition]
    expected = {"VA": "valence,arousal", "EXPR": ",".join(expr_names), "AU": ",".join(au_names)}
    for task, d in zip(T.TASKS, task_dirs):
        for f in (root / "annotations" / edition / d).glob("*/*.txt"):
            text = f.read_text()
            assert text.split("\n", 1)[0] == expected[task] and "\r" not in text and text.endswith("\n")
            assert A.read_label_file(f, task=task).names == tuple(expected[task].split(","))
    ann = A.read_annotations(root / "annotations" / edition)
    for task in T.TASKS:
        want = {n: t["split"][task] for n, t in tracks.items() if t["split"][task] not in (None, "test")}
        assert {n: lab.split for n, lab in ann[task].items()} == want
        for name, lab in ann[task].items():
            assert len(lab) == tracks[name]["n_label_lines"]
            assert not lab.valid.all() and lab.valid.any(), (task, name)  # every file has invalid frames
    expr = np.concatenate([lab.values for lab in ann["EXPR"].values()])
    assert set(np.unique(expr)) == set(range(len(expr_names))) | {-1}


def test_seven_class_files_write_other_as_invalid(ds):
    ann7 = A.read_annotations(ds[0] / "annotations" / "abaw2021", tasks=("EXPR",))["EXPR"]
    ann8 = A.read_annotations(ds[0] / "annotations" / "abaw3", tasks=("EXPR",))["EXPR"]
    for name, lab8 in ann8.items():
        other = lab8.values == 7
        assert np.all(ann7[name].values[other] == -1)
        assert np.array_equal(ann7[name].values[~other], lab8.values[~other])


def test_au_subsets_agree(ds):
    ann8 = A.read_annotations(ds[0] / "annotations" / "abaw2020", tasks=("AU",))["AU"]
    ann12 = A.read_annotations(ds[0] / "annotations" / "abaw2021", tasks=("AU",))["AU"]
    cols = [T.AU_NAMES_12.index(a) for a in T.AU_NAMES_8 if a in T.AU_NAMES_12]
    cols8 = [i for i, a in enumerate(T.AU_NAMES_8) if a in T.AU_NAMES_12]
    for name, lab in ann8.items():
        assert np.array_equal(lab.values[:, cols8], ann12[name].values[:, cols])
        assert np.array_equal(lab.valid.all(1), lab.valid.any(1))  # invalid rows are whole rows


def test_splits_tasks_and_test_lists(ds, tracks, abaw3):
    root = ds[0]
    split_of = {n: {s for s in t["split"].values() if s} for n, t in tracks.items()}
    assert all(len(s) == 1 for s in split_of.values())  # one split per track
    counts = {s: sum(next(iter(v)) == s for v in split_of.values()) for s in ("Train_Set", "Validation_Set", "test")}
    assert counts == {"Train_Set": 8, "Validation_Set": 3, "test": 2}
    lacking = {task for t in tracks.values() if "test" not in split_of[t["name"]]
               for task, s in t["split"].items() if s is None}
    assert {"VA", "AU"} <= lacking
    test_names = sorted(n for n, s in split_of.items() if s == {"test"})
    for task in ("VA", "EXPR", "AU", "MTL"):
        assert sorted(A.read_video_list(root / "test_sets" / f"{task}_test_set.txt")) == test_names
    all_files = {f.stem for f in (root / "annotations").rglob("*.txt")}
    assert not set(test_names) & all_files
    mtl_text = "".join(f.read_text() for f in (root / "annotations" / "mtl").glob("*.txt"))
    assert not any(f"{n}/" in mtl_text for n in test_names)


def test_two_person_video(ds, abaw3):
    two = [v for v in ds[1]["videos"] if v["two_person"]]
    assert len(two) == 1
    name = two[0]["name"]
    assert [t["name"] for t in two[0]["tracks"]] == [name + "_left", name + "_right"]
    assert not list((ds[0] / "annotations").rglob(f"{name}.txt"))
    for side in ("_left", "_right"):
        assert name + side in abaw3["EXPR"]
    left, right = (np.load(ds[0] / "truth" / f"{name}{s}.npy") for s in ("_left", "_right"))
    assert np.nanmax(left[..., 0]) < np.nanmin(right[..., 0])  # side by side


def test_mtl_files(ds, tracks, abaw3):
    root = ds[0]
    for split, fname in A.MTL_FILES.items():
        path = root / "annotations" / "mtl" / fname
        assert path.read_text().split("\n", 1)[0] == A.MTL_HEADER
        mtl = A.read_mtl_file(path, split)
        want = {n for n, t in tracks.items() if split in t["split"].values()}
        assert set(mtl["EXPR"]) == want
        for name in want:
            listed = [int(line.split(",")[0][-9:-4]) for line in path.read_text().splitlines()[1:]
                      if line.startswith(name + "/")]
            assert len(listed) > 20
            for k in listed:  # only frames that have a face (a crop)
                assert (root / "cropped_aligned" / name / f"{k:05d}.jpg").is_file()
            k0 = np.array(listed) - 1
            for task in T.TASKS:
                got = mtl[task][name]
                if name in abaw3[task]:
                    ref = abaw3[task][name]
                    assert np.array_equal(got.valid[k0], ref.valid[k0])
                    np.testing.assert_allclose(got.values[k0][got.valid[k0]], ref.values[k0][ref.valid[k0]])
                else:
                    assert not got.valid[k0].any()


# ----------------------------------------------------------------------------------------------------
# Media facts


def test_decoded_frame_counts_codecs_and_audio(ds, decoded):
    rates = set()
    for v in ds[1]["videos"]:
        d = decoded[v["name"]]
        assert d["n"] == v["n_frames"], v["name"]
        assert d["codec"] == v["video_codec"]
        assert (d["audio"] is not None) == v["has_audio"]
        if v["has_audio"]:
            assert d["audio_rate"] == v["audio_rate"]
            assert d["audio_start"] == pytest.approx(v["audio_first_pts_s"], abs=1e-6)
            assert len(d["audio"]) / d["audio_rate"] == pytest.approx(v["duration_s"] - v["audio_offset_s"],
                                                                      abs=0.1)
            rates.add(v["audio_rate"])
    assert len(rates) >= 3
    assert sum(not v["has_audio"] for v in ds[1]["videos"]) == 1
    codecs = {(decoded[v["name"]]["audio_codec"] or "none")[:3] for v in ds[1]["videos"]}
    assert codecs == {"aac", "mp3", "pcm", "non"}  # the MP3 decoder is called mp3float


def test_b_frame_videos(ds, decoded):
    """Three videos store frames in decode order: H.264 in mp4, MPEG-4 part 2 and H.264 in avi; the H.264
    AVI hands the decoder's frames decode-order timestamps, and the AVIs show frame 0 one frame late."""
    videos = ds[1]["videos"]
    with_b = {(v["container"], v["video_codec"]) for v in videos if v["b_frames"]}
    assert with_b == {("mp4", "h264"), ("avi", "mpeg4"), ("avi", "h264")}
    for v in videos:
        d = decoded[v["name"]]
        assert ("B" in d["types"]) == (v["b_frames"] > 0), v["name"]
        reordered = bool(np.any(np.diff(d["raw_pts"]) < 0))
        assert reordered == (v["container"] == "avi" and v["video_codec"] == "h264"), v["name"]
        assert d["pts"][0] == pytest.approx(v["video_first_pts_s"], abs=1e-6)
        late = v["container"] == "avi" and v["b_frames"] > 0
        assert v["video_first_pts_s"] == (round(1 / S.FPS, 6) if late else 0.0), v["name"]


def test_label_length_deltas(ds, tracks, abaw3):
    deltas = {n: t["label_delta"] for n, t in tracks.items() if t["label_delta"]}
    assert 2 <= len(deltas) <= 3 and all(1 <= abs(d) <= 3 for d in deltas.values())
    for name, t in tracks.items():
        for lab in (abaw3[task].get(name) for task in T.TASKS):
            if lab is not None:
                assert len(lab) - t["video"]["n_frames"] == t["label_delta"]


def test_variable_frame_rate(ds, decoded):
    vfr = [v for v in ds[1]["videos"] if v["vfr"]]
    assert len(vfr) == 1
    pts = decoded[vfr[0]["name"]]["pts"]
    durations = np.round(np.diff(pts) * 1000).astype(int)
    assert len(set(durations)) >= 2 and set(durations) <= {33, 40}
    np.testing.assert_allclose(pts, vfr[0]["frame_times_s"], atol=1e-3)
    for v in ds[1]["videos"]:
        if not v["vfr"]:
            assert len(set(np.round(np.diff(decoded[v["name"]]["pts"]) * 1000).astype(int))) == 1


def test_audio_starts_late(ds, decoded):
    late = [v for v in ds[1]["videos"] if v["audio_offset_s"] > 0]
    assert len(late) == 1
    # AAC keeps one 1024-sample priming frame before the offset; its content is aligned by pts
    assert decoded[late[0]["name"]]["audio_start"] == pytest.approx(late[0]["audio_offset_s"], abs=0.07)
    for v in ds[1]["videos"]:
        if v["has_audio"] and not v["audio_offset_s"]:
            assert decoded[v["name"]]["audio_start"] == pytest.approx(0.0, abs=1e-6)


def test_face_leaves_the_frame(ds, tracks, abaw3):
    root = ds[0]
    exits = {n: t for n, t in tracks.items() if t["faceless_frames"]}
    assert len(exits) == 1
    name, t = next(iter(exits.items()))
    (first, last), = t["faceless_frames"]
    assert 25 <= last - first + 1 <= 40
    k0 = np.arange(first - 1, last)
    assert not any((root / "cropped_aligned" / name / f"{k + 1:05d}.jpg").exists() for k in k0)
    assert np.isnan(np.load(root / "truth" / f"{name}.npy")[k0]).all()
    for task in T.TASKS:
        assert not abaw3[task][name].valid[k0].any()
        assert [first, last] in [r for r in t["invalid_frames"][task]] or any(
            a <= first and last <= b for a, b in t["invalid_frames"][task])


def test_crops_exist_exactly_where_the_truth_has_a_face(ds, tracks):
    root = ds[0]
    for name in tracks:
        truth = np.load(root / "truth" / f"{name}.npy")
        have = {int(f.stem) - 1 for f in (root / "cropped_aligned" / name).glob("*.jpg")}
        assert have == set(np.flatnonzero(~np.isnan(truth[:, 0, 0])).tolist())


def test_truth_landmarks_are_a_similarity_of_the_photo(ds, tracks):
    """Every frame's true landmarks are a similarity image of the photo's: the alignment residual to the
    ArcFace template is the photo's own residual, scaled, in every frame."""
    template = np.array(S.ARCFACE_TEMPLATE_112)
    for name in ("1-30-480x270", "7-30-640x360_right"):
        src = S.identities()[tracks[name]["identity"]].landmarks
        ref = S.apply_affine(S.similarity_lstsq(src, template), src) - template
        truth = np.load(ds[0] / "truth" / f"{name}.npy")
        for lm in truth[~np.isnan(truth[:, 0, 0])][::25]:
            residual = S.apply_affine(S.similarity_lstsq(lm, template), lm) - template
            np.testing.assert_allclose(residual, ref, atol=1e-3)
        assert np.abs(ref).max() < 6  # the photo is a plausible frontal face for the template


# ----------------------------------------------------------------------------------------------------
# The labels are in the pixels and in the sound


@pytest.fixture(scope="module")
def crops(ds, tracks) -> dict[str, dict[str, np.ndarray]]:
    return {name: crop_features(ds[0], name) for name in tracks}


def test_face_hue_predicts_expression(abaw3, crops):
    feats, labels, train = [], [], []
    for name, lab in abaw3["EXPR"].items():
        c = crops[name]
        y, ok = labels_at(lab, c["k"])
        feats.append(c["chroma"][ok])
        labels.append(y[ok])
        train += [lab.split == "Train_Set"] * int(ok.sum())
    x, y, train = np.concatenate(feats), np.concatenate(labels), np.array(train)
    centroids = np.stack([x[train & (y == c)].mean(0) for c in range(8)])
    pred = np.argmin(((x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (pred[~train] == y[~train]).mean() > 0.9
    assert (pred[train] == y[train]).mean() > 0.9


def test_face_brightness_follows_valence(abaw3, crops):
    bright, valence = [], []
    for name, lab in abaw3["VA"].items():
        y, ok = labels_at(lab, crops[name]["k"])
        bright.append(crops[name]["bright"][ok])
        valence.append(y[ok, 0])
    assert np.corrcoef(np.concatenate(bright), np.concatenate(valence))[0, 1] > 0.8


def test_au_dots_mark_active_action_units(ds, tracks, abaw3):
    root, meta = ds
    name = "1-30-480x270"
    lab = abaw3["AU"][name]
    points = meta["mapping"]["au_points_crop"][str(tracks[name]["identity"])]
    files = sorted((root / "cropped_aligned" / name).glob("*.jpg"))[::3]
    k = np.array([int(f.stem) - 1 for f in files])
    lum = np.stack([cv2.imread(str(f))[:, :, ::-1] @ LUMA for f in files])
    values, valid = labels_at(lab, k)
    for j, au in enumerate(T.AU_NAMES_12):
        dark = np.mean([lum[:, round(y), round(x)] for x, y in points[au]], axis=0) / np.median(
            lum[:, 30:95, 30:82], axis=(1, 2))
        ok = valid[:, j]
        on = values[ok, j] == 1
        assert on.any() and (~on).any(), au
        assert ((dark[ok] < 0.5) == on).mean() > 0.95, au


def audio_around(d: dict, t: np.ndarray, half: float) -> list[np.ndarray]:
    """Audio samples in [t - half, t + half) for each time t (empty where there is no audio)."""
    rate, start = d["audio_rate"], d["audio_start"]
    lo = np.round((t - half - start) * rate).astype(int)
    hi = np.round((t + half - start) * rate).astype(int)
    return [d["audio"][max(a, 0):max(b, 0)] for a, b in zip(lo, hi)]


def test_audio_is_aligned_with_the_video_by_its_timestamps(ds, decoded):
    """Decoded audio t seconds after the first frame's container time is the synthesised signal of time
    t (within 1 ms), for every codec, rate, the late-starting, the VFR and the B-frame videos (whose AVIs
    show frame 0 one frame late): frame k's sound sits at frame k's timestamp.
    Checked around pitch changes (a steady tone would match at any multiple of its period)."""
    specs = {s.name: s for s in S.video_specs()}
    for v in ds[1]["videos"]:
        if not v["has_audio"]:
            continue
        spec, d, rate = specs[v["name"]], decoded[v["name"]], v["audio_rate"]
        job = S.plan_video(spec, 0, ds[0])
        ref = S.reference_audio(spec, seed=0)
        n = len(job.times)
        changes = job.times[np.flatnonzero(np.diff(job.tracks[0].expr[:n])) + 1]
        changes = changes[(changes > v["audio_offset_s"] + 0.2) & (changes < v["duration_s"] - 0.2)]
        assert len(changes) >= 2
        half, lags = rate // 10, np.arange(-rate // 100, rate // 100 + 1)  # ±0.1 s window, ±10 ms lags
        for t in changes[:2]:
            c = round((t - v["audio_offset_s"]) * rate)
            seg = ref[c - half:c + half]
            at = round((t + v["video_first_pts_s"] - d["audio_start"]) * rate) - half
            shifted = sliding_window_view(d["audio"][at + lags[0]:at + lags[-1] + len(seg)], len(seg))
            shifted = shifted - shifted.mean(1, keepdims=True)
            score = shifted @ (seg - seg.mean()) / (np.linalg.norm(shifted, axis=1) * np.linalg.norm(seg - seg.mean()))
            assert abs(lags[int(np.argmax(score))]) <= rate / 1000, (v["name"], t)
            assert score.max() > 0.9, (v["name"], t)


def test_audio_loudness_follows_arousal(ds, tracks, abaw3, decoded):
    checked = 0
    for name, lab in abaw3["VA"].items():
        v = tracks[name]["video"]
        if not v["has_audio"] or v["two_person"]:
            continue
        d = decoded[v["name"]]
        n = min(len(lab), d["n"])
        win = audio_around(d, d["pts"][:n], 0.5 / S.FPS)
        ok = lab.valid[:n] & np.array([len(w) > 0.02 * d["audio_rate"] for w in win])
        rms = np.array([np.sqrt(np.mean(w ** 2)) if len(w) else 0 for w in win])
        assert np.corrcoef(rms[ok], lab.values[:n, 1][ok])[0, 1] > 0.8, name
        checked += 1
    assert checked >= 5


def test_audio_pitch_follows_expression(ds, tracks, abaw3, decoded):
    tones = np.log(np.array(S.EXPR_TONE_HZ))
    for name in ("1-30-480x270", "video2", "video5", "8-30-416x240"):
        lab, d = abaw3["EXPR"][name], decoded[name]
        n = min(len(lab), d["n"])
        frames = np.flatnonzero(lab.valid[:n])[::4]
        win = audio_around(d, d["pts"][frames], 1024 / d["audio_rate"])
        keep = [i for i, w in enumerate(win) if len(w) == 2048]
        pred = []
        for i in keep:
            spec = np.abs(np.fft.rfft(win[i] * np.hanning(2048), 16384))
            f0 = np.argmax(spec) * d["audio_rate"] / 16384
            pred.append(np.argmin(np.abs(tones - np.log(max(f0, 1.0)))))
        assert (np.array(pred) == lab.values[frames[keep]]).mean() > 0.85, name


# ----------------------------------------------------------------------------------------------------
# Determinism and CLI


def dataset_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_same_seed_same_bytes_other_seed_other_labels(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    S.generate(a, seed=3, quick=True)
    S.generate(b, seed=3, quick=True, workers=1)  # the worker count must not matter either
    files = dataset_files(a)
    assert files == dataset_files(b)
    same, differ, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not differ and not errors  # annotations, meta, crops, truth and video bytes
    # another seed: different labels (planning only, the rendering follows the plan)
    spec = S.video_specs(quick=True)[1]
    p3, p4 = (S.plan_video(spec, seed, tmp_path).tracks[0] for seed in (3, 4))
    assert not np.array_equal(p3.expr, p4.expr) and not np.allclose(p3.va, p4.va)
    assert not np.array_equal(p3.au, p4.au)
    ea = A.read_annotations(a / "annotations" / "abaw3", tasks=("EXPR",))["EXPR"]["video2"]
    assert np.array_equal(ea.values[ea.valid], p3.expr[: len(ea)][ea.valid])


def test_cli_flags_have_help(tmp_path, capsys):
    parser = S.build_parser()
    assert all(a.help for a in parser._actions)
    with pytest.raises(SystemExit) as e:
        S.main(["--help"])
    assert e.value.code == 0 and "--seed" in capsys.readouterr().out
