"""tools/bench on tiny inputs: every sub-command runs and writes the JSON shape; no timing is asserted."""

from __future__ import annotations

import json
import wave
from pathlib import Path

import numpy as np
import pytest

from data import audio
from tools import bench
from utils.inputs import InputSpec

# One short video, tiny clips: enough to exercise every code path quickly.
TINY = ["--video-names", "1-30-480x270", "--limit-frames", "24", "--repeats", "2", "--warmup", "0",
        "--size", "16", "--clip-len", "2", "--dilation", "2", "--audio-seconds", "0.3", "--threads", "1"]


def is_summary(s: dict) -> bool:
    return {"median", "min", "max", "n", "values"} <= set(s) and s["min"] <= s["median"] <= s["max"]


@pytest.fixture(scope="module")
def work(tmp_path_factory, mini_quick) -> tuple[Path, list[str]]:
    """A work folder whose database and TSAV export the first sub-command builds (the others reuse them)."""
    w = tmp_path_factory.mktemp("bench")
    return w, ["--work", str(w / "work"), "--data", str(mini_quick), *TINY]


def run(work: tuple[Path, list[str]], command: str, *extra: str) -> dict:
    folder, common = work
    out = folder / f"{command}.json"
    bench.main([command, "--json", str(out), *common, *extra])
    data = json.loads(out.read_text())
    assert {"machine", "versions", "args", "results", "goals"} <= set(data)
    assert data["machine"]["cpu_count"] >= 1 and "cpu" in data["machine"]
    assert {"python", "torch", "torchvision", "av", "opencv", "dlib", "lmdb", "numpy"} <= set(data["versions"])
    assert list(data["results"]) == ([command] if command != "all" else list(bench.RUNNERS))
    return data


def test_preprocess(work):
    r = run(work, "preprocess")["results"]["preprocess"]
    assert r["frames"] == 24 and r["track_frames"] == 24
    for stage in ("decode", "detect", "landmarks", "align", "masks", "encode", "write"):
        assert is_summary(r["stages"][stage]["frames_per_s"]), stage
    assert is_summary(r["overall"]["frames_per_s"])
    b = r["bytes_per_frame"]
    assert b["ours_stored"] > 0 and b["tsav_images_disk"] >= 2 * bench.FS_BLOCK  # two files per frame
    assert b["tsav_images_disk"] >= b["tsav_images_raw"]
    export = work[0] / "work" / "tsav" / "1-30-480x270"
    assert len(list(export.glob("*.jpg"))) == 24 and len(list((export / "mask").glob("*.jpg"))) == 24


def test_loader(work):
    r = run(work, "loader", "--clips", "8", "--loader-batch", "4", "--loader-workers", "0", "1")["results"]["loader"]
    assert set(r["workers"]) == {"0", "1"}
    for entry in r["workers"].values():
        assert is_summary(entry["lmdb"]["clips_per_s"]) and is_summary(entry["tsav"]["clips_per_s_per_worker"])
        assert entry["speedup"] > 0
    assert r["input_difference"]["clip_max_abs"] < 0.1  # only the JPEG mask differs


def test_infer_outputs_agree(work):
    r = run(work, "infer", "--frames", "4", "--infer-batch", "4")["results"]["infer"]
    for key in ("end_to_end", "inputs_only"):
        assert is_summary(r[key]["ours"]["frames_per_s"]) and is_summary(r[key]["tsav"]["frames_per_s"])
    assert r["end_to_end"]["frames"] == 4 and r["inputs_only"]["frames"] == 24
    diff = r["end_to_end"]["max_abs_logit_diff"]
    assert diff["tsav_loop_with_db_logmel_and_png_masks"] < 1e-4
    assert np.isfinite(diff["tsav_as_published"])


@pytest.mark.slow
def test_train_and_ddp(work):
    r = run(work, "train", "--batch-size", "2", "--precisions", "fp32", "bf16", "--memory-formats", "contiguous",
            "--ddp-procs", "2")["results"]["train"]
    assert [c["amp"] for c in r["configs"]] == ["fp32", "bf16"]
    assert all(is_summary(c["clips_per_s"]) for c in r["configs"])
    assert r["ddp"]["procs"] == 2 and r["ddp"]["efficiency"] > 0


@pytest.mark.parametrize("name, layout", [("emma", "emma"), ("cotex", "lsd")])
def test_train_times_the_frame_models_and_refuses_them_elsewhere(tmp_path, name, layout):
    out = bench.main(["train", "--model", name, "--model-size", "tiny", "--size", "32", "--batch-size", "2",
                      "--repeats", "1", "--warmup", "0", "--precisions", "fp32", "--memory-formats", "contiguous",
                      "--ddp-procs", "1", "--threads", "1", "--work", str(tmp_path)])
    r = out["results"]["train"]
    assert r["model"] == name and r["input"]["kind"] == "frame" and r["input"]["size"] == 32
    assert is_summary(r["configs"][0]["clips_per_s"]) and r["best_clips_per_s"] > 0
    assert out["args"]["layout"] == layout  # the model's own layout and size unless given
    with pytest.raises(SystemExit, match=f"{name} is measured by 'train' only"):
        bench.main(["loader", "--model", name, "--work", str(tmp_path)])


def test_train_times_a_cnu_block_model(tmp_path):
    out = bench.main(["train", "--model", "cnu", "--model-size", "small", "--size", "32", "--clip-len", "3",
                      "--no-history-grad", "--batch-size", "2", "--repeats", "1", "--warmup", "0", "--precisions",
                      "fp32", "--memory-formats", "contiguous", "--ddp-procs", "1", "--threads", "1", "--work",
                      str(tmp_path)])
    r = out["results"]["train"]
    assert r["input"]["kind"] == "frame_block" and r["input"]["block"] == "selected" and r["input"]["clip_len"] == 3
    assert out["args"]["layout"] == "cnu" and r["best_clips_per_s"] > 0
    assert bench.build_parser().parse_args(["train", "--model", "cnu"]).clip_len is None  # 16 once resolved
    with pytest.raises(SystemExit, match="cnu is measured by 'train' only"):
        bench.main(["infer", "--model", "cnu", "--work", str(tmp_path)])


def test_tsav_logmel_is_the_reference_computation(tmp_path):
    """The TSAV-style loader's per-clip log-mel equals data.audio.reference_logmel_clip on the same wav."""
    rng = np.random.default_rng(0)
    x = (0.1 * rng.standard_normal(12 * audio.SR)).astype(np.float32)
    bench.write_wav(tmp_path / "t.wav", x)
    (tmp_path / "t_video_ts.txt").write_text("6000.0\n")
    (tmp_path / "index.json").write_text(json.dumps({"t": {"video": "t", "frames": 1}}))
    ds = bench.TsavStyleClips(tmp_path, [("t", 0)], InputSpec())
    with wave.open(str(tmp_path / "t.wav")) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768.0
    ref = audio.reference_logmel_clip(pcm.astype(np.float32), audio.SR, 6.0)
    got = ds.logmel(ds.read_wav("t", 6.0))
    assert got.shape == (1, audio.N_MELS, 1001)
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_summary_and_blocks():
    s = bench.summary([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.0, 1.0, 3.0, 3)
    assert bench.blocks(1) == 4096 and bench.blocks(4096) == 4096 and bench.blocks(4097) == 8192
