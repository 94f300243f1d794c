"""The whole mini dataset: plan, render (in parallel), write the labels and ``meta.json``."""

from __future__ import annotations

import gc
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from tasks import TASKS
from tools.synthetic.faces import crop_au_points, tint_colours
from tools.synthetic.mapping import (
    ARCFACE_TEMPLATE_112,
    ASTRONAUT_LANDMARKS_5,
    AU_DOT_RADIUS,
    AU_NAMES_ALL,
    EDITION_FOLDERS,
    EXPR_HUES_DEG,
    EXPR_TONE_HZ,
    FPS,
    TINT_CHROMA,
    TINT_KEEP_ORIGINAL,
)
from tools.synthetic.plan import VideoJob, plan_video
from tools.synthetic.render import VideoResult, render_video
from tools.synthetic.specs import video_specs
from tools.synthetic.writers import apply_faceless, write_edition, write_mtl, write_test_lists


def ranges_1based(mask: np.ndarray) -> list[list[int]]:
    """[[first, last], ...] of True runs, 1-based inclusive frame numbers."""
    padded = np.concatenate([[False], mask, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [[int(s) + 1, int(e)] for s, e in zip(edges[::2], edges[1::2])]


def mapping_meta() -> dict:
    """The label → signal constants, as exposed in meta.json."""
    return {
        "expr_hue_deg": list(EXPR_HUES_DEG),
        "expr_tint_rgb_multipliers": np.round(tint_colours(), 4).tolist(),
        "tint_chroma": TINT_CHROMA,
        "tint_keep_original": TINT_KEEP_ORIGINAL,
        "expr_tone_hz": list(EXPR_TONE_HZ),
        "valence_gain": "0.45 + 0.2 * (v + 1)",
        "valence_harmonic": "0.125 * (v + 1)",
        "arousal_amplitude": "0.03 + 0.13 * (a + 1)",
        "arousal_jitter": "translation std scale*(0.2 + 1.8*(a + 1)) px, rotation std 0.5*(a + 1) deg",
        "au_names": list(AU_NAMES_ALL),
        "au_dot_radius_src_px": AU_DOT_RADIUS,
        "au_points_crop": {str(i): crop_au_points(i) for i in (0, 1)},
        "landmarks_src_astronaut": [list(p) for p in ASTRONAUT_LANDMARKS_5],
        "arcface_template_112": [list(p) for p in ARCFACE_TEMPLATE_112],
        "truth_files": "truth/<track>.npy float32 (n_frames, 5, 2) x,y frame pixels, NaN = no face",
        "frame_ranges": "1-based inclusive [first, last]",
    }


def video_meta(job: VideoJob, res: VideoResult) -> dict:
    """One video's entry in meta.json.

    Keys: name, path (relative to DIR), batch, container, video_codec, b_frames (max consecutive
    B-frames, 0: none), width, height, fps (nominal), n_frames (decoded count), duration_s, has_audio,
    audio_codec, audio_rate, audio_offset_s (intended start of the audio, after the first frame),
    audio_first_pts_s and video_first_pts_s (container times of the first decoded sample and frame),
    vfr (+ frame_times_s), two_person, and tracks:
    name, identity, split {task: Train_Set|Validation_Set|test|None}, n_label_lines, label_delta
    (label lines − n_frames), faceless_frames and invalid_frames {task: ranges} (1-based, inclusive).
    """
    spec = job.spec
    meta = {
        "name": spec.name,
        "path": f"videos/{spec.batch}/{spec.name}.{spec.container}",
        "batch": spec.batch,
        "container": spec.container,
        "video_codec": spec.codec,
        "b_frames": spec.b_frames,
        "width": spec.width,
        "height": spec.height,
        "fps": FPS,
        "n_frames": res.n_frames,
        "duration_s": round(float(job.times[-1] + (job.times[-1] - job.times[-2])), 6),
        "has_audio": spec.audio_codec is not None,
        "audio_codec": spec.audio_codec,
        "audio_rate": spec.audio_rate or None,
        "audio_offset_s": spec.audio_offset_s,
        "audio_first_pts_s": res.audio_first_pts_s,
        "video_first_pts_s": res.video_first_pts_s,
        "vfr": spec.vfr,
        "two_person": spec.two_person,
        "tracks": [],
    }
    if spec.vfr:
        meta["frame_times_s"] = [round(float(t), 3) for t in job.times]
    for tr in job.tracks:
        meta["tracks"].append({
            "name": tr.name,
            "identity": tr.identity,
            "split": dict(tr.split),
            "n_label_lines": tr.n_label,
            "label_delta": tr.n_label - tr.n_frames,
            "faceless_frames": ranges_1based(res.faceless[tr.name]),
            "invalid_frames": {t: ranges_1based(~tr.valid[t][:tr.n_label]) for t in TASKS},
        })
    return meta


def generate(out: Path, seed: int = 0, quick: bool = False, workers: int | None = None) -> dict:
    """Write the whole mini dataset under ``out`` and return the meta it writes to ``out/meta.json``.

    Deterministic for a seed (labels, meta, crops and, with these single-threaded encoders, video
    bytes), whatever ``workers``. ``quick`` shortens every video to 3 s (for tests); ``workers``
    processes render videos in parallel (default: up to 2).
    """
    return generate_timed(out, seed, quick, workers)[0]


def generate_timed(out: Path, seed: int = 0, quick: bool = False,
                   workers: int | None = None) -> tuple[dict, dict[str, float]]:
    """``generate`` plus the seconds each video took to render (kept out of meta: they vary)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [plan_video(spec, seed, out) for spec in video_specs(quick)]
    workers = workers or min(2, os.cpu_count() or 1)
    if workers > 1:
        # forked workers inherit the caller's uncollected garbage; PyAV objects in it (e.g. held by an
        # exception's traceback) crash a worker that frees them, the FFmpeg threads they use being gone
        gc.collect()
        with ProcessPoolExecutor(workers) as pool:
            results = list(pool.map(render_video, jobs))
    else:
        results = [render_video(job) for job in jobs]
    tracks, faceless = [], {}
    for job, res in zip(jobs, results):
        for tr in job.tracks:
            apply_faceless(tr, res.faceless[tr.name])
            faceless[tr.name] = res.faceless[tr.name]
            tracks.append(tr)
    for edition in EDITION_FOLDERS:
        write_edition(out, edition, tracks)
    write_mtl(out, tracks, faceless)
    write_test_lists(out, tracks)
    meta = {
        "generator": "tools.synthetic",
        "seed": seed,
        "quick": quick,
        "fps": FPS,
        "mapping": mapping_meta(),
        "videos": [video_meta(job, res) for job, res in zip(jobs, results)],
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta, {res.name: res.seconds for res in results}
