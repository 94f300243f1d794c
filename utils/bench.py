"""Benchmarks of every costly step, against faithful re-creations of the TSAV (ABAW 2020) way of doing it.

    python -m utils.bench preprocess [--json FILE]   # per-stage frames/s of create_database, bytes per frame
    python -m utils.bench loader                     # training clips/s: our LMDB ClipDataset vs TSAV's files
    python -m utils.bench train                      # model step clips/s: fp32/bf16, channels-last, compile, DDP
    python -m utils.bench infer                      # end-to-end frames/s: utils.infer vs TSAV's per-frame loop
    python -m utils.bench all --json bench_out/cpu.json

Everything the benchmarks need is made under ``--work`` (default ``bench_out/``): the quick mini
Aff-Wild2 (``data.synthetic``, 3 s videos) unless ``--data`` names one, a database of a few of its videos
(``--video-names``) built with ``data.build.process_video``, and the same frames exported in TSAV's layout:

    tsav/<track>/%05d.jpg         crop, JPEG quality 95 (the database's own JPEG bytes: same encoder, same
                                  quality, same crop); faceless frames are black images, as TSAV wrote them
    tsav/<track>/mask/%05d.jpg    TSAV line mask, JPEG quality 100 (lossy: the grey levels ring)
    tsav/<track>/mask_exact/%05d.png  the lossless mask, used only to check that outputs agree
    tsav/<track>.wav              44.1 kHz mono 16-bit PCM, sample 0 = first video frame
    tsav/<track>_video_ts.txt     per-frame presentation time in ms

Every figure is the median of ``--repeats`` timed runs after ``--warmup`` untimed ones, with min and max;
the JSON also records the machine, its load average and the library versions. Timings on a shared
machine are noisy: compare medians, and only figures taken on the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import time
import wave
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from data import audio, build, masks, store
from data.clips import (
    ClipConfig,
    ClipDataset,
    audio_window,
    close_stores,
    finish_audio,
    normalise,
    prepare_batch,
    resize_frames,
)
from data.video import find_videos
from models.losses import MultiTaskLoss
from models.tsav import build_model, to_channels_last
from tasks import get_layout
from utils import infer
from utils.dist import DeviceError, pick_device
from utils.tables import print_table

COMMANDS = ("preprocess", "loader", "train", "infer", "all")
DEFAULT_VIDEOS = ("1-30-480x270", "video2", "7-30-640x360")  # mp4+AAC, avi+PCM 22 kHz, two people
TSAV_CROP_QUALITY = 95
TSAV_MASK_QUALITY = 100
FS_BLOCK = 4096  # file-system block: every TSAV file takes whole blocks on disk
GOALS = {"speedup": 10.0, "preprocess_fps_per_core": 100.0, "bytes_ratio": 1 / 3, "ddp_efficiency": 0.9}


# ---------------------------------------------------------------------------------------------------
# Measuring


def summary(values: list[float]) -> dict:
    """Median, min, max and the raw values of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "values": [round(v, 6) for v in values]}


def rates(count: float, seconds: list[float]) -> dict:
    """Throughput summary (count per second) of timed runs."""
    return summary([count / s for s in seconds if s > 0] or [0.0])


def timed(fn: Callable[[], object], repeats: int, warmup: int, sync: Callable[[], None] | None = None) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        out.append(time.perf_counter() - t0)
    return out


def cuda_sync(device: torch.device) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.type == "cuda" else None


def bench_device(name: str) -> torch.device:
    """The --device of a sub-command; one that cannot be used ends the bench with its one-line reason."""
    try:
        return pick_device(name)
    except DeviceError as e:
        raise SystemExit(f"utils.bench: {e}") from None


@contextlib.contextmanager
def thread_limit(n: int | None) -> Iterator[None]:
    """torch and OpenCV limited to ``n`` threads inside the block (None: unchanged)."""
    if n is None:
        yield
        return
    old_torch, old_cv = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(n)
    cv2.setNumThreads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old_torch)
        cv2.setNumThreads(old_cv)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model, cores, memory, GPU and load average of this machine."""
    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
        info["memory_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info["gpu_count"] = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return info


def library_versions() -> dict:
    import av
    import lmdb
    import torchvision

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "torchvision": torchvision.__version__, "av": av.__version__, "opencv": cv2.__version__,
                "lmdb": lmdb.__version__, "numpy": np.__version__,
                "cuda": torch.version.cuda if torch.cuda.is_available() else None}
    try:
        import dlib

        versions["dlib"] = dlib.__version__
    except ImportError:
        versions["dlib"] = None
    return versions


def clip_shape(c: dict) -> str:
    """'4xLxSxS + 1x64xW' of a clip config (as ``asdict(ClipConfig)``): the model's two inputs."""
    return (f"4x{c['clip_len']}x{c['size']}x{c['size']} + 1x{audio.N_MELS}x"
            f"{ClipConfig(**c).audio_columns}")


def fmt(s: dict, digits: int = 1) -> str:
    """'median [min–max]' of a summary."""
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


# ---------------------------------------------------------------------------------------------------
# Work folder: data, database, TSAV export


def clip_config(args: argparse.Namespace) -> ClipConfig:
    return ClipConfig(clip_len=args.clip_len, dilation=args.dilation, size=args.size, mask="tsav",
                      audio_seconds=args.audio_seconds)


def build_options(args: argparse.Namespace) -> build.BuildOptions:
    return build.BuildOptions(masks=("tsav", "mtmt"), detector=args.detector, detect_every=args.detect_every,
                              limit_frames=args.limit_frames)


def ensure_data(args: argparse.Namespace) -> Path:
    """The dataset root: ``--data``, or the quick mini Aff-Wild2 generated once under the work folder."""
    if args.data:
        root = Path(args.data)
        if not root.is_dir():
            raise SystemExit(f"utils.bench: --data {root}: no such folder")
        return root
    root = Path(args.work) / "mini"
    if not (root / "meta.json").is_file():
        from data import synthetic

        print(f"generating the quick mini Aff-Wild2 in {root} ...", flush=True)
        synthetic.generate(root, seed=0, quick=True)
    return root


def bench_jobs(args: argparse.Namespace, root: Path) -> list[build.VideoJob]:
    """Jobs of the chosen videos (with their annotated tracks when the dataset has abaw2021 labels)."""
    videos_dir = root / "videos" if (root / "videos").is_dir() else root
    ann = root / "annotations" / "abaw2021"
    jobs = build.collect_jobs([str(videos_dir)], str(ann) if ann.is_dir() else None)
    by_name = {j.name: j for j in jobs}
    names = args.video_names or sorted(by_name)[:3]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SystemExit(f"utils.bench: --video-names {', '.join(missing)} not in {videos_dir} "
                         f"(there: {', '.join(sorted(find_videos([videos_dir])))})")
    return [by_name[n] for n in names]


def fresh_store(path: Path, mask_kinds: tuple[str, ...]) -> store.Store:
    """An empty database at ``path`` (any old one removed) whose schema stores ``mask_kinds`` as PNG."""
    close_stores()
    shutil.rmtree(path, ignore_errors=True)
    db = store.Store(path, readonly=False)
    db.write_schema(list(mask_kinds))
    return db


def prepared_key(args: argparse.Namespace, root: Path) -> dict:
    return {"data": str(root.resolve()), "videos": list(args.video_names or []), "limit_frames": args.limit_frames,
            "detector": args.detector, "detect_every": args.detect_every}


def finish_preparation(args: argparse.Namespace, root: Path) -> None:
    """Export the database in TSAV's layout and remember what the work folder was built from."""
    work = Path(args.work)
    export_tsav(work / "db", work / "tsav")
    (work / "prepared.json").write_text(json.dumps(prepared_key(args, root), indent=1) + "\n")


def ensure_prepared(args: argparse.Namespace) -> tuple[Path, Path]:
    """(database, TSAV export) for the chosen videos, built once (untimed) when missing or stale."""
    work = Path(args.work)
    root = ensure_data(args)
    marker = work / "prepared.json"
    if marker.is_file() and json.loads(marker.read_text()) == prepared_key(args, root) \
            and (work / "db" / "data.mdb").is_file() and (work / "tsav" / "index.json").is_file():
        return work / "db", work / "tsav"
    print(f"building the benchmark database in {work / 'db'} ...", flush=True)
    preprocess_pass(bench_jobs(args, root), build_options(args), work / "db")  # untimed: the timings are dropped
    finish_preparation(args, root)
    return work / "db", work / "tsav"


def write_wav(path: Path, samples: np.ndarray, sr: int = audio.SR) -> None:
    """16-bit PCM mono WAV, what ffmpeg -ar 44100 -ac 1 wrote for TSAV."""
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())


def encode(img: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def export_tsav(db_path: Path, out: Path, mask: str = "tsav") -> dict:
    """Write every frame of every track of the database in TSAV's file layout (see the module docstring).

    Returns (and writes to ``index.json``) per track: video, frames, and the bytes of its crops, masks and
    wav, raw and rounded up to file-system blocks.
    """
    from data.video import read_audio

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    black_crop = encode(np.zeros((112, 112, 3), np.uint8), TSAV_CROP_QUALITY)
    black_mask = encode(np.zeros((112, 112), np.uint8), TSAV_MASK_QUALITY)
    black_png = masks.encode_png(masks.blank_mask())
    index: dict[str, dict] = {}
    with store.Store(db_path) as db:
        for video in db.video_names():
            meta = db.video_meta(video)
            times = db.get_array(store.video_key(video) + b"/times")
            samples = read_audio(meta["source"], audio.SR) if meta.get("audio") else None
            if samples is None:
                samples = np.zeros(int(round((times[-1] + 1 / 30) * audio.SR)), np.float32)
            for track in meta["tracks"]:
                face = db.get_array(store.track_key(track) + b"/face").astype(bool)
                folder = out / track
                for sub in ("mask", "mask_exact"):
                    (folder / sub).mkdir(parents=True)
                sizes = {"crop": [], "mask": []}
                with db.env.begin() as txn:
                    for i in range(len(face)):
                        value = txn.get(store.group_key(track, i)) if face[i] else None
                        parts = [None if value is None else store.unpack_frame(value, i % store.FRAMES_PER_VALUE, p)
                                 for p in ("rgb", mask)]
                        crop, png = (None if b is None else bytes(b) for b in parts)
                        crop_b = crop if crop is not None else black_crop
                        mask_b = encode(masks.decode_png(png), TSAV_MASK_QUALITY) if png is not None else black_mask
                        (folder / f"{i:05d}.jpg").write_bytes(crop_b)
                        (folder / "mask" / f"{i:05d}.jpg").write_bytes(mask_b)
                        (folder / "mask_exact" / f"{i:05d}.png").write_bytes(png if png is not None else black_png)
                        sizes["crop"].append(len(crop_b))
                        sizes["mask"].append(len(mask_b))
                write_wav(out / f"{track}.wav", samples)
                (out / f"{track}_video_ts.txt").write_text("".join(f"{t * 1000:.6f}\n" for t in times))
                wav_bytes = (out / f"{track}.wav").stat().st_size
                index[track] = {"video": video, "frames": int(len(face)),
                                "bytes": {k: int(sum(v)) for k, v in sizes.items()} | {"wav": wav_bytes},
                                "disk_bytes": {k: int(sum(blocks(x) for x in v)) for k, v in sizes.items()}
                                | {"wav": blocks(wav_bytes)}}
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return index


def blocks(n: int) -> int:
    """Bytes a file of ``n`` bytes takes on disk (whole 4 KiB blocks)."""
    return -(-n // FS_BLOCK) * FS_BLOCK


# ---------------------------------------------------------------------------------------------------
# TSAV-style clips from files (the published loader's work per sample)


class TsavStyleClips(Dataset):
    """Clips read TSAV's way: per sample, 8 crops + 8 masks with cv2.imread and the log-mel of 10 s of wav.

    ``rows``: (track, frame) of each sample. Clip slots before the track's first frame stay black without a
    read; every other slot is read from its file (faceless frames are black files, as TSAV wrote them).
    ``exact``: read the lossless PNG masks and slice the database's per-video log-mel instead of the JPEG
    masks and the wav, i.e. our inputs through TSAV's loop, to check that the outputs agree.
    """

    def __init__(self, root: str | Path, rows: list[tuple[str, int]], clip: ClipConfig, exact: bool = False,
                 db_path: str | Path | None = None) -> None:
        self.root, self.rows, self.clip, self.exact = Path(root), list(rows), clip, exact
        index = json.loads((self.root / "index.json").read_text())
        self.times = {t: np.loadtxt(self.root / f"{t}_video_ts.txt", ndmin=1) / 1000.0 for t in {r[0] for r in rows}}
        self.samples = (clip.audio_columns - 1) * audio.HOP  # 10 s → 441000, 1001 columns
        self.bank = torch.from_numpy(audio.mel_filterbank())  # built once, like TSAV's MelSpectrogram module
        self.hann = torch.hann_window(audio.WIN)
        self.mels: dict[str, np.ndarray | None] = {}
        if exact:
            with store.Store(db_path) as db:
                for track in self.times:
                    video = index[track]["video"]
                    self.mels[track] = db.get_array(store.video_key(video) + b"/logmel")

    def __len__(self) -> int:
        return len(self.rows)

    def frames(self, track: str, frame: int) -> np.ndarray:
        out = np.zeros((self.clip.clip_len, 112, 112, 4), np.uint8)
        folder = self.root / track
        mask_dir, ext = ("mask_exact", "png") if self.exact else ("mask", "jpg")
        for k, i in enumerate(frame + self.clip.frame_offsets()):
            if i < 0:
                continue
            bgr = cv2.imread(str(folder / f"{i:05d}.jpg"), cv2.IMREAD_COLOR)
            grey = cv2.imread(str(folder / mask_dir / f"{i:05d}.{ext}"), cv2.IMREAD_GRAYSCALE)
            if bgr is not None and grey is not None:  # TSAV: a failed read leaves the slot black
                out[k, ..., :3] = bgr[..., ::-1]
                out[k, ..., 3] = grey
        return out

    def read_wav(self, track: str, t: float) -> np.ndarray:
        """The window's samples [t − 5 s, t + 5 s) from the wav file, zero outside the file."""
        start = int(round(t * audio.SR)) - self.samples // 2
        out = np.zeros(self.samples, np.float32)
        with wave.open(str(self.root / f"{track}.wav"), "rb") as w:
            lo, hi = max(start, 0), min(start + self.samples, w.getnframes())
            if lo < hi:
                w.setpos(lo)
                pcm = np.frombuffer(w.readframes(hi - lo), "<i2")
                out[lo - start:lo - start + len(pcm)] = pcm / 32768.0
        return out

    def logmel(self, samples: np.ndarray) -> np.ndarray:
        """Per-clip log-mel as in data.audio.reference_logmel_clip (any window length), 1×64×W."""
        spec = torch.stft(torch.from_numpy(samples), audio.N_FFT, hop_length=audio.HOP, win_length=audio.WIN,
                          window=self.hann, center=True, pad_mode="reflect", return_complex=True)
        mel = (self.bank.T @ spec.abs().square()).numpy()
        return audio.finish_window(audio.power_to_db(mel))

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        track, frame = self.rows[k]
        frames = resize_frames(self.frames(track, frame), self.clip.size)
        clip = normalise(torch.from_numpy(frames).permute(3, 0, 1, 2).float().div_(255))  # as TSAV: on the CPU
        t = float(self.times[track][frame])
        if self.exact:
            mel = audio_window(self.mels[track], t, self.clip.audio_columns)
        else:
            mel = self.logmel(self.read_wav(track, t))
        return {"clip": clip, "audio_features": torch.from_numpy(mel)}


# ---------------------------------------------------------------------------------------------------
# preprocess


class BackendTimer:
    """Times the face backend's detect() and landmarks() calls (the rest of the tracker is 'track')."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.seconds: dict[str, float] = defaultdict(float)

    def _wrap(self, name: str, stage: str) -> None:
        original = getattr(self.backend, name)

        def call(*a, **kw):
            t0 = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                self.seconds[stage] += time.perf_counter() - t0

        setattr(self.backend, name, call)

    def __enter__(self) -> BackendTimer:
        self._wrap("detect", "detect")
        self._wrap("landmarks", "landmarks")
        return self

    def __exit__(self, *exc) -> None:
        for name in ("detect", "landmarks"):
            self.backend.__dict__.pop(name, None)


# create_database.py settings whose bytes the preprocess benchmark reports besides the benchmark database's
# (both masks stored as PNG, for the TSAV export and the mask comparison; JPEG q95): (--masks, --crop-format,
# --crop-quality). The first one is create_database.py's default.
STORAGE_VARIANTS = {"--masks none (default)": ((), "jpeg", 95),
                    "--masks none --crop-quality 90": ((), "jpeg", 90),
                    "--masks none --crop-format webp --crop-quality 90": ((), "webp", 90)}

PRE_STAGES = ("decode", "detect", "landmarks", "track", "align", "masks", "encode", "audio", "write", "other")


def preprocess_pass(jobs: list[build.VideoJob], opts: build.BuildOptions, db_path: Path) -> dict:
    """Build the videos into a fresh database (schema: ``opts.masks``) once; seconds per stage, frames and CPU
    seconds. A video that fails to build ends the benchmark (SystemExit)."""
    seconds: dict[str, float] = defaultdict(float)
    frames = 0
    backend = build.face_backend(opts.detector)
    cpu0 = time.process_time()
    with fresh_store(db_path, opts.masks) as db, BackendTimer(backend) as bt:
        for job in jobs:
            rec = build.process_video(job, opts)
            if rec.meta["status"] != "ok":
                raise SystemExit(f"utils.bench: {job.path}: {rec.meta['status']}")
            t0 = time.perf_counter()
            db.write_video(rec)
            seconds["write"] += time.perf_counter() - t0
            for k, v in rec.meta["stats"]["seconds"].items():
                seconds[k] += v
            frames += rec.meta["frames"]
    seconds["track"] = seconds.pop("detect", 0.0) - bt.seconds["detect"] - bt.seconds["landmarks"]
    seconds["detect"], seconds["landmarks"] = bt.seconds["detect"], bt.seconds["landmarks"]
    seconds["other"] = sum(seconds.pop(k) for k in list(seconds) if k not in PRE_STAGES)
    return {"seconds": dict(seconds), "frames": frames, "cpu_seconds": time.process_time() - cpu0}


def db_bytes(db_path: Path) -> dict:
    """Stored bytes by kind (keys included) and on-disk bytes of an LMDB database."""
    kinds: dict[str, int] = defaultdict(int)
    with store.Store(db_path) as db:
        track_frames = store.totals([db.video_meta(v) for v in db.video_names()])["track_frames"]
        for k, v in db.scan(b""):
            if k.startswith(b"f/"):  # a group of frames: count each part, the key and header as 'other'
                sizes = store.group_part_bytes(v)
                kinds["other"] += len(k) + sizes.pop("header")
                for part, n in sizes.items():
                    kinds[part] += n
            else:
                kinds["logmel" if k.endswith(b"/logmel") else "other"] += len(k) + len(v)
        used = db.disk_bytes()
    st = (db_path / "data.mdb").stat()
    return {"track_frames": track_frames, "stored": dict(kinds), "stored_total": sum(kinds.values()),
            "disk_used_pages": used, "file_bytes": st.st_size, "file_allocated": st.st_blocks * 512}


def tsav_bytes(index: dict) -> dict:
    tot = {k: sum(t["bytes"][k] for t in index.values()) for k in ("crop", "mask", "wav")}
    disk = {k: sum(t["disk_bytes"][k] for t in index.values()) for k in ("crop", "mask", "wav")}
    return {"track_frames": sum(t["frames"] for t in index.values()), "raw": tot, "disk": disk}


def bench_preprocess(args: argparse.Namespace) -> dict:
    root = ensure_data(args)
    jobs = bench_jobs(args, root)
    opts = build_options(args)
    work = Path(args.work)
    runs = []
    with thread_limit(1):  # one worker = one core: build.py's workers run torch with one thread too
        for r in range(args.warmup + args.repeats):
            res = preprocess_pass(jobs, opts, work / "db")
            if r >= args.warmup:
                runs.append(res)
    close_stores()
    finish_preparation(args, root)  # the last pass's database is the benchmark database
    frames = runs[0]["frames"]
    stages = {}
    for s in PRE_STAGES:
        secs = [run["seconds"].get(s, 0.0) for run in runs]
        stages[s] = {"seconds": summary(secs), "frames_per_s": rates(frames, secs)}
    total = [sum(run["seconds"].values()) for run in runs]
    cpu = [run["cpu_seconds"] for run in runs]
    ours = db_bytes(work / "db")
    tsav = tsav_bytes(json.loads((work / "tsav" / "index.json").read_text()))
    n = ours["track_frames"]
    images = (tsav["raw"]["crop"] + tsav["raw"]["mask"]) / n
    images_disk = (tsav["disk"]["crop"] + tsav["disk"]["mask"]) / n
    per_frame = {
        "ours_stored": ours["stored_total"] / n, "ours_disk": ours["disk_used_pages"] / n,
        "ours_file_allocated": ours["file_allocated"] / n,
        "ours_by_kind": {k: v / n for k, v in ours["stored"].items()},
        "tsav_images_raw": images, "tsav_images_disk": images_disk,
        "tsav_crop_raw": tsav["raw"]["crop"] / n, "tsav_mask_raw": tsav["raw"]["mask"] / n,
        "tsav_with_wav_raw": images + tsav["raw"]["wav"] / n,
        "tsav_with_wav_disk": images_disk + tsav["disk"]["wav"] / n,
    }
    per_frame["ratio_stored_vs_tsav_images_raw"] = per_frame["ours_stored"] / images
    per_frame["ratio_disk_vs_tsav_images_disk"] = per_frame["ours_disk"] / images_disk
    per_frame["ratio_disk_vs_tsav_with_wav_disk"] = per_frame["ours_disk"] / per_frame["tsav_with_wav_disk"]
    per_frame["variants"] = storage_variants(jobs, opts, work, images, images_disk)
    result = {"videos": [j.name for j in jobs], "tracks": sum(len(j.tracks) for j in jobs), "frames": frames,
              "track_frames": n, "threads": 1, "detector": opts.detector, "detect_every": opts.detect_every,
              "stages": stages, "overall": {"seconds": summary(total), "frames_per_s": rates(frames, total)},
              "overall_cpu": {"cpu_seconds": summary(cpu), "frames_per_cpu_s": rates(frames, cpu)},
              "bytes_per_frame": per_frame, "db": ours, "tsav": tsav}
    print_preprocess(result)
    return result


def crop_psnr(db_path: Path, reference: Path) -> float:
    """Mean PSNR (dB) of a database's crops against the same frames' crops in ``reference``."""
    values = []
    with store.Store(db_path) as a, store.Store(reference) as b, a.env.begin() as ta, b.env.begin() as tb:
        for video in a.video_names():
            for track in a.video_meta(video)["tracks"]:
                for i in np.flatnonzero(a.get_array(store.track_key(track) + b"/face")):
                    mine, ref = store.read_frame(ta, track, int(i), "rgb"), store.read_frame(tb, track, int(i), "rgb")
                    values.append(cv2.PSNR(build.decode_crop(mine), build.decode_crop(ref)))
    return float(np.mean(values)) if values else math.nan


def storage_variants(jobs: list[build.VideoJob], opts: build.BuildOptions, work: Path, tsav_raw: float,
                     tsav_disk: float) -> dict:
    """Bytes per track frame of the same videos built with each of ``STORAGE_VARIANTS`` (untimed)."""
    out = {}
    for label, (kinds, fmt, quality) in STORAGE_VARIANTS.items():
        path = work / "db_variant"
        preprocess_pass(jobs, dataclasses.replace(opts, masks=kinds, crop_format=fmt, crop_quality=quality), path)
        got = db_bytes(path)
        n = got["track_frames"]
        stored, disk = got["stored_total"] / n, got["disk_used_pages"] / n
        out[label] = {"stored": stored, "disk": disk, "ratio_stored": stored / tsav_raw, "ratio_disk": disk / tsav_disk,
                      "crop_psnr_vs_q95_db": crop_psnr(path, work / "db") if (fmt, quality) != ("jpeg", 95) else None}
        shutil.rmtree(path)
    return out


def print_preprocess(r: dict) -> None:
    rows = [[s, fmt(v["seconds"], 3), fmt(v["frames_per_s"], 0)] for s, v in r["stages"].items()
            if v["seconds"]["median"] > 0]
    rows.append(["overall (1 worker, 1 thread)", fmt(r["overall"]["seconds"], 3), fmt(r["overall"]["frames_per_s"], 0)])
    rows.append(["overall per CPU-second (process CPU time)", fmt(r["overall_cpu"]["cpu_seconds"], 3),
                 fmt(r["overall_cpu"]["frames_per_cpu_s"], 0)])
    print_table(["stage", "seconds median [min-max]", "frames/s median [min-max]"], rows, right=True,
                title=f"preprocess: {r['frames']} frames of {len(r['videos'])} videos ({r['tracks']} tracks), "
                f"detector {r['detector']} every {r['detect_every']} frames")
    b = r["bytes_per_frame"]
    kinds = ", ".join(f"{k} {v:.0f}" for k, v in sorted(b["ours_by_kind"].items(), key=lambda kv: -kv[1]))
    print_table(title=f"bytes per track frame ({r['track_frames']} track frames)", right=True,
                header=["layout", "raw", "on disk"], rows=[
        ["ours --masks tsav,mtmt: LMDB (rgb JPEG q95 + 2 PNG masks + arrays + log-mel)", f"{b['ours_stored']:.0f}",
         f"{b['ours_disk']:.0f}"],
        ["TSAV: crop JPEG q95 + mask JPEG q100 (4 KiB blocks on disk)", f"{b['tsav_images_raw']:.0f}",
         f"{b['tsav_images_disk']:.0f}"],
        ["TSAV images + wav (44.1 kHz 16-bit per track)", f"{b['tsav_with_wav_raw']:.0f}",
         f"{b['tsav_with_wav_disk']:.0f}"],
        ["ratio ours / TSAV images", f"{b['ratio_stored_vs_tsav_images_raw']:.2f}",
         f"{b['ratio_disk_vs_tsav_images_disk']:.2f}"],
    ] + [[f"ours {label}" + (f" (crops {v['crop_psnr_vs_q95_db']:.1f} dB PSNR vs the JPEG q95 crops)"
                             if v["crop_psnr_vs_q95_db"] else "") + ": bytes (ratio)",
          f"{v['stored']:.0f} ({v['ratio_stored']:.2f})", f"{v['disk']:.0f} ({v['ratio_disk']:.2f})"]
         for label, v in b.get("variants", {}).items()])
    print(f"ours by kind (bytes/track frame): {kinds}")


# ---------------------------------------------------------------------------------------------------
# loader


def sample_rows(ds: ClipDataset, n: int, seed: int,
                full_history: bool = True) -> tuple[list[int], list[tuple[str, int]]]:
    """``n`` random flat indices of the dataset and the (track, frame) each one is.

    ``full_history``: only frames whose whole clip lies inside the track (as almost every frame of a real,
    minutes-long Aff-Wild2 video), so that every clip reads all its frames.
    """
    hist = (ds.clip.clip_len - 1) * ds.clip.dilation if full_history else 0
    pool = np.concatenate([np.arange(ds.starts[t] + hist, ds.starts[t + 1]) for t in range(len(ds.tracks))])
    if len(pool) == 0:
        raise SystemExit("utils.bench: no track is longer than a clip; use longer videos or --any-frame")
    index = np.random.default_rng(seed).choice(pool, size=min(n, len(pool)), replace=False).tolist()
    rows = []
    for i in index:
        t, frame = ds.locate(i)
        rows.append((ds.tracks[t].name, frame))
    return index, rows


def drain(loader: DataLoader) -> int:
    n = 0
    for batch in loader:
        n += len(batch["clip"])
    return n


def input_difference(ours: dict, tsav: dict) -> dict:
    """How far TSAV's inputs are from ours for one clip (normalised units).

    The clip differs only in the mask channel (JPEG q100 rings around the lines). The audio differs because
    TSAV cuts the wav at the frame's exact time while ours slices the per-video log-mel at the nearest 10 ms
    column (up to 5 ms apart), and in the columns whose STFT frame reaches past the clip or the audio.
    """
    a, b = finish_audio(ours["audio_db"]), tsav["audio_features"]
    clip = normalise(ours["clip"].float() / 255)  # ours leaves this to prepare_batch on the device
    return {"clip_max_abs": float((clip - tsav["clip"]).abs().max()),
            "audio_median_abs": float((a - b).abs().median()), "audio_max_abs": float((a - b).abs().max())}


def webp_copy(db_path: Path, out: Path, quality: int = 90) -> Path:
    """The database with its crops re-encoded as WebP (what --crop-format webp stores), for the loader timing."""
    with store.Store(db_path) as src, fresh_store(out, stored_masks := tuple(src.schema()["masks"])) as dst:
        items = []
        for k, v in src.scan(b""):
            if k.startswith(b"f/"):
                frames = {}
                for slot in range(store.FRAMES_PER_VALUE):
                    parts = {p: store.unpack_frame(v, slot, p) for p in ("rgb", *stored_masks)}
                    if parts["rgb"] is not None:
                        rgb = build.decode_crop(bytes(parts["rgb"]))
                        frames[slot] = {p: build.encode_crop(rgb, "webp", quality) if p == "rgb" else bytes(b)
                                        for p, b in parts.items() if b is not None}
                v = store.pack_frames(frames)
            if k != store.SCHEMA_KEY:
                items.append((k, v))
        dst._transaction(items)
    return out


def bench_loader(args: argparse.Namespace) -> dict:
    db_path, export = ensure_prepared(args)
    clip = clip_config(args)
    ours = ClipDataset(db_path, None, args.layout, clip)
    index, rows = sample_rows(ours, args.clips, args.seed, not args.any_frame)
    tsav = TsavStyleClips(export, rows, clip)
    diff = input_difference(ours[index[-1]], tsav[len(rows) - 1])
    result = {"clips": len(rows), "batch_size": args.loader_batch, "clip": asdict(clip), "workers": {},
              "input_difference": diff, "threads_per_worker": 1}
    with thread_limit(1):  # DataLoader workers run one torch thread; the main process (0 workers) too
        drawn = ClipDataset(db_path, None, args.layout, clip, draw_mask=True)
        webp = ClipDataset(webp_copy(db_path, Path(args.work) / "db_webp"), None, args.layout, clip, draw_mask=True)
        for w in args.loader_workers:
            result["workers"][str(w)] = loader_entry(
                args, w, {"lmdb": ours, "lmdb_drawn_mask": drawn, "lmdb_webp_drawn_mask": webp}, index, tsav)
    result["prepare"] = prepare_entry(args, ours, index)
    print_loader(result)
    return result


def loader_entry(args: argparse.Namespace, w: int, ours: dict[str, ClipDataset], index: list[int],
                 tsav: TsavStyleClips) -> dict:
    """Our loaders (mask PNG read, mask drawn from the landmarks) and TSAV's with ``w`` workers, same clips."""
    n = len(index)
    entry = {}
    for name, ds, sampler in [(k, v, index) for k, v in ours.items()] + [("tsav", tsav, list(range(n)))]:
        loader = DataLoader(ds, batch_size=args.loader_batch, sampler=sampler, num_workers=w,
                            persistent_workers=w > 0)
        secs = timed(lambda ld=loader: drain(ld), args.repeats, max(args.warmup, 1))
        entry[name] = {"clips_per_s": rates(n, secs), "clips_per_s_per_worker": rates(n / max(w, 1), secs)}
        del loader
    entry["speedup"] = entry["lmdb"]["clips_per_s"]["median"] / entry["tsav"]["clips_per_s"]["median"]
    for variant in ("drawn_mask", "webp_drawn_mask"):
        entry[f"speedup_{variant}"] = (entry[f"lmdb_{variant}"]["clips_per_s"]["median"]
                                       / entry["tsav"]["clips_per_s"]["median"])
    return entry


def prepare_entry(args: argparse.Namespace, ours: ClipDataset, index: list[int]) -> dict:
    """Our loader leaves uint8 → float, colour jitter and normalisation to ``prepare_batch`` on the device."""
    device = bench_device(args.device)
    batch = torch.utils.data.default_collate([ours[i] for i in index[:args.loader_batch]])
    batch["jitter"][:, 0] = 1.1  # a brightness change in every clip: the jitter path, not the identity shortcut

    secs = timed(lambda: prepare_batch({k: batch[k] for k in ("clip", "audio_db", "jitter")}, device),
                 args.repeats, max(args.warmup, 1), cuda_sync(device))
    return {"device": str(device), "clips_per_s": rates(len(batch["clip"]), secs)}


def print_loader(r: dict) -> None:
    rows = [[w, fmt(e["lmdb"]["clips_per_s_per_worker"]), fmt(e["lmdb_drawn_mask"]["clips_per_s_per_worker"]),
             fmt(e["lmdb_webp_drawn_mask"]["clips_per_s_per_worker"]), fmt(e["tsav"]["clips_per_s_per_worker"]),
             f"{e['speedup']:.1f}x / {e['speedup_drawn_mask']:.1f}x / {e['speedup_webp_drawn_mask']:.1f}x"]
            for w, e in r["workers"].items()]
    print_table(["workers", "ours: JPEG + PNG mask", "JPEG, mask drawn (default)", "WebP, mask drawn", "TSAV-style",
                 "speedup (3 variants)"], rows, right=True,
                title=f"loader: {r['clips']} clips of {clip_shape(r['clip'])}, batch {r['batch_size']}")
    print("clips/s per worker, median [min-max]; 0 workers = in the main process")
    p = r["prepare"]
    print(f"ours on the device ({p['device']}, prepare_batch: float, jitter, normalise): "
          f"{fmt(p['clips_per_s'])} clips/s; TSAV-style does this in the loader")
    d = r["input_difference"]
    print(f"inputs ours vs TSAV (one clip, normalised units): clip max |diff| {d['clip_max_abs']:.3f} (JPEG mask), "
          f"audio median |diff| {d['audio_median_abs']:.4f}, max {d['audio_max_abs']:.2f} (TSAV cuts the wav at the "
          "exact frame time, ours at the nearest 10 ms column)")


# ---------------------------------------------------------------------------------------------------
# train


def synthetic_batch(args: argparse.Namespace, batch_size: int, device: torch.device, seed: int = 0) -> dict:
    """Random full-size inputs and labels (the model step does not care where they come from)."""
    clip = clip_config(args)
    layout = get_layout(args.layout)
    g = torch.Generator().manual_seed(seed)
    b = {"clip": torch.randn(batch_size, 4, clip.clip_len, clip.size, clip.size, generator=g),
         "audio_features": torch.randn(batch_size, 1, audio.N_MELS, clip.audio_columns, generator=g),
         "expr": torch.randint(0, layout.num_expr_classes, (batch_size,), generator=g),
         "au": torch.randint(0, 2, (batch_size, layout.num_au), generator=g).float(),
         "va": torch.rand(batch_size, 2, generator=g) * 2 - 1}
    return {k: v.to(device) for k, v in b.items()}


def make_step(model: nn.Module, batch: dict, layout: str, device: torch.device, amp: str,
              channels_last: bool) -> Callable[[], None]:
    """One forward + backward + Adam step on ``batch`` (MTMT's optimiser settings)."""
    criterion = MultiTaskLoss(layout)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4, weight_decay=5e-5)
    inputs = {"clip": batch["clip"], "audio_features": batch["audio_features"]}
    if channels_last:
        inputs = {"clip": inputs["clip"].contiguous(memory_format=torch.channels_last_3d),
                  "audio_features": inputs["audio_features"].contiguous(memory_format=torch.channels_last)}
    targets = {k: batch[k] for k in ("expr", "au", "va")}

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            out = model(inputs)
        loss, _ = criterion(out.float(), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def new_model(args: argparse.Namespace, device: torch.device, channels_last: bool) -> nn.Module:
    torch.manual_seed(args.seed)
    model = build_model(args.model, args.layout).to(device).train()
    return to_channels_last(model) if channels_last else model


def train_configs(args: argparse.Namespace, device: torch.device) -> list[dict]:
    compile_on = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    out = []
    for comp in ([False, True] if compile_on else [False]):
        for fmt_name in args.memory_formats:
            for amp in args.precisions:
                out.append({"amp": amp, "channels_last": fmt_name == "channels-last", "compile": comp})
    return out


def bench_train_config(args: argparse.Namespace, device: torch.device, cfg: dict) -> dict:
    model = new_model(args, device, cfg["channels_last"])
    if cfg["compile"]:
        model = torch.compile(model)
    step = make_step(model, synthetic_batch(args, args.batch_size, device), args.layout, device, cfg["amp"],
                     cfg["channels_last"])
    t0 = time.perf_counter()
    warm = max(args.warmup, 2 if cfg["compile"] else 1)
    for _ in range(warm):
        step()
    sync = cuda_sync(device)
    if sync:
        sync()
    first = time.perf_counter() - t0
    secs = timed(step, args.repeats, 0, sync)
    return {**cfg, "warmup_seconds": first, "step_seconds": summary(secs),
            "clips_per_s": rates(args.batch_size, secs)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    """One process of the DDP measurement (gloo on CPU): same steps as the single-process run."""
    import torch.distributed as dist

    torch.set_num_threads(args.ddp_threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        device = torch.device("cpu")
        model = new_model(args, device, False)
        if world > 1:
            model = nn.parallel.DistributedDataParallel(model)
        step = make_step(model, synthetic_batch(args, args.batch_size, device, seed=rank), args.layout, device,
                         "fp32", False)
        for _ in range(max(args.warmup, 1)):
            step()
        dist.barrier()
        cpu: list[float] = []

        def cpu_step() -> None:
            c0 = time.process_time()
            step()
            cpu.append(time.process_time() - c0)

        secs = timed(cpu_step, args.repeats, 0)
        flat = torch.zeros(sum(p.numel() for p in model.parameters()))  # every gradient, as one allreduce
        comm = timed(lambda: dist.all_reduce(flat), args.repeats, 1) if world > 1 else []
        if rank == 0:
            Path(out).write_text(json.dumps({"step": secs, "cpu": cpu, "allreduce": comm}))
    finally:
        dist.destroy_process_group()


def ddp_run(args: argparse.Namespace, world: int) -> dict[str, list[float]]:
    import torch.multiprocessing as tmp

    with tempfile.TemporaryDirectory() as d:
        out = str(Path(d) / "steps.json")
        tmp.spawn(_ddp_worker, args=(world, free_port(), args, out), nprocs=world, join=True)
        return json.loads(Path(out).read_text())


def bench_ddp(args: argparse.Namespace) -> dict:
    """1 process vs ``--ddp-procs`` processes (gloo, CPU, ``--ddp-threads`` threads each), same per-process batch.

    Also per step the CPU seconds of rank 0 (equal in both runs when the cores are free: a longer wall
    time at equal CPU time is waiting, for the other rank or for a core) and one allreduce of every
    gradient alone.
    """
    single = ddp_run(args, 1)
    multi = ddp_run(args, args.ddp_procs)
    one, many = rates(args.batch_size, single["step"]), rates(args.batch_size * args.ddp_procs, multi["step"])
    return {"procs": args.ddp_procs, "threads_per_proc": args.ddp_threads, "backend": "gloo",
            "per_proc_batch": args.batch_size,
            "single": {"step_seconds": summary(single["step"]), "cpu_seconds": summary(single["cpu"]),
                       "clips_per_s": one},
            "multi": {"step_seconds": summary(multi["step"]), "cpu_seconds": summary(multi["cpu"]),
                      "allreduce_seconds": summary(multi["allreduce"]), "clips_per_s": many},
            "efficiency": many["median"] / (args.ddp_procs * one["median"])}


def bench_train(args: argparse.Namespace) -> dict:
    device = bench_device(args.device)
    clip = clip_config(args)
    result: dict = {"device": str(device), "batch_size": args.batch_size, "model": args.model, "clip": asdict(clip),
                    "threads": torch.get_num_threads(), "configs": [], "notes": []}
    if args.compile == "auto" and device.type == "cpu":
        result["notes"].append("torch.compile skipped on CPU by default (compiling the forward+backward graph "
                               "takes minutes on a few cores); --compile on to include it")
    for cfg in train_configs(args, device):
        try:
            result["configs"].append(bench_train_config(args, device, cfg))
        except Exception as e:  # noqa: BLE001 - e.g. compile unsupported here: report and go on
            result["notes"].append(f"{cfg}: failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        print(".", end="", flush=True)
    if args.ddp_procs > 1 and device.type == "cpu":
        result["ddp"] = bench_ddp(args)
    elif args.ddp_procs > 1:
        result["notes"].append("DDP measured on CPU only (one process per GPU needs several GPUs)")
    ok = [c for c in result["configs"] if "clips_per_s" in c]
    if ok:
        result["best_clips_per_s"] = max(c["clips_per_s"]["median"] for c in ok)
    print_train(result)
    return result


def print_train(r: dict) -> None:
    rows = [[c2["amp"], "on" if c2["channels_last"] else "off", "on" if c2["compile"] else "off",
             fmt(c2["step_seconds"], 2), fmt(c2["clips_per_s"], 2), f"{c2['warmup_seconds']:.1f}"]
            for c2 in r["configs"]]
    print_table(["precision", "channels-last", "compile", "s/step", "clips/s", "warm-up s"], rows, right=True,
                title=f"train step (fwd+bwd+Adam), {r['device']}, {r['threads']} threads, batch {r['batch_size']} "
                f"of {clip_shape(r['clip'])}")
    if "ddp" in r:
        d = r["ddp"]
        print_table(title=f"DDP on CPU ({d['backend']}, {d['threads_per_proc']} thread(s) per process, batch "
                    f"{d['per_proc_batch']} per process)", right=True,
                    header=["processes", "s/step", "CPU s/step (rank 0)", "clips/s"],
                    rows=[[1, fmt(d["single"]["step_seconds"], 2), fmt(d["single"]["cpu_seconds"], 2),
                           fmt(d["single"]["clips_per_s"], 2)],
                          [d["procs"], fmt(d["multi"]["step_seconds"], 2), fmt(d["multi"]["cpu_seconds"], 2),
                           fmt(d["multi"]["clips_per_s"], 2)]])
        print(f"one allreduce of all gradients alone: {fmt(d['multi']['allreduce_seconds'], 2)} s")
        print(f"scaling efficiency {d['efficiency']:.0%} (= {d['procs']}-process clips/s / ({d['procs']} x 1-process))")
    for n in r["notes"]:
        print(f"note: {n}")


# ---------------------------------------------------------------------------------------------------
# infer


class StubModel(nn.Module):
    """Stands in for the network to time the input pipelines alone (zeros of the layout's width)."""

    def __init__(self, layout: str) -> None:
        super().__init__()
        self.layout = get_layout(layout)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return batch["clip"].new_zeros(len(batch["clip"]), self.layout.num_outputs)


def prefix_source(db_path: Path, track: str, frames: int | None) -> infer.TrackSource:
    """The track's first ``frames`` frames (all with None) as utils.infer reads them from the database."""
    src = infer.db_track_source(str(db_path), track)
    if frames is not None:
        src.times, src.face = src.times[:frames], src.face[:frames]
    return src


def tsav_loop(model: nn.Module, ds: TsavStyleClips, device: torch.device) -> np.ndarray:
    """TSAV's inference: per frame, read its clip and audio from the files and run the model on it alone."""
    model.eval()
    return batched_logits(model, ds, device, 1)


@torch.no_grad()
def batched_logits(model: nn.Module, ds: TsavStyleClips, device: torch.device, batch: int) -> np.ndarray:
    out = []
    for b0 in range(0, len(ds), batch):
        items = [ds[k] for k in range(b0, min(b0 + batch, len(ds)))]
        x = {key: torch.stack([s[key] for s in items]).to(device) for key in ("clip", "audio_features")}
        out.append(model(x).float().cpu())
    return torch.cat(out).numpy()


def pick_track(db_path: Path, wanted: str | None) -> tuple[str, int]:
    with store.Store(db_path) as db:
        tracks = []
        for v in db.video_names():
            meta = db.video_meta(v)
            tracks += [(t, meta["frames"], bool(meta.get("audio"))) for t in meta["tracks"]]
    if wanted:
        found = [t for t in tracks if t[0] == wanted]
        if not found:
            raise SystemExit(f"utils.bench: --track {wanted}: not in the benchmark database "
                             f"({', '.join(t[0] for t in tracks)})")
        return found[0][:2]
    return next((t[:2] for t in tracks if t[2]), tracks[0][:2])


def compare_pipelines(args: argparse.Namespace, model: nn.Module, db_path: Path, export: Path, track: str,
                      frames: int, device: torch.device) -> dict:
    """Timed: utils.infer.predict_source vs TSAV's per-frame loop over the same frames of one track."""
    clip = clip_config(args)
    rows = [(track, i) for i in range(frames)]
    tsav = TsavStyleClips(export, rows, clip)
    sync = cuda_sync(device)
    fast: dict = {}

    def run_fast() -> None:
        fast.update(infer.predict_source(model, prefix_source(db_path, track, frames), clip,
                                         batch_size=args.infer_batch, workers=args.infer_workers, device=device))

    slow: dict = {}

    def run_slow() -> None:
        slow["logits"] = tsav_loop(model, tsav, device)

    # warm-up on two frames (first-call costs), then full timed runs
    infer.predict_source(model, prefix_source(db_path, track, 2), clip, batch_size=2, device=device)
    tsav_loop(model, TsavStyleClips(export, rows[:2], clip), device)
    fast_s = timed(run_fast, args.repeats, max(args.warmup - 1, 0), sync)
    slow_s = timed(run_slow, args.repeats, max(args.warmup - 1, 0), sync)
    return {"frames": frames, "ours": {"seconds": summary(fast_s), "frames_per_s": rates(frames, fast_s)},
            "tsav": {"seconds": summary(slow_s), "frames_per_s": rates(frames, slow_s)},
            "speedup": statistics.median(slow_s) / statistics.median(fast_s),
            "logits": {"ours": fast["logits"], "tsav": slow["logits"]}}


def bench_infer(args: argparse.Namespace) -> dict:
    device = bench_device(args.device)
    db_path, export = ensure_prepared(args)
    track, n_frames = pick_track(db_path, args.track)
    clip = clip_config(args)
    torch.manual_seed(args.seed)
    model = build_model(args.model, args.layout).to(device).eval()
    frames = min(args.frames, n_frames)
    full = compare_pipelines(args, model, db_path, export, track, frames, device)
    logits = full.pop("logits")
    exact = batched_logits(model, TsavStyleClips(export, [(track, i) for i in range(frames)], clip, exact=True,
                                                 db_path=db_path), device, args.infer_batch)
    full["max_abs_logit_diff"] = {
        "tsav_as_published": float(np.abs(logits["ours"] - logits["tsav"]).max()),
        "tsav_loop_with_db_logmel_and_png_masks": float(np.abs(logits["ours"] - exact).max())}
    stub = compare_pipelines(args, StubModel(args.layout).to(device), db_path, export, track, n_frames, device)
    stub.pop("logits")
    src = prefix_source(db_path, track, None)
    decode_s = timed(lambda: infer.ChunkFrames(src, clip, len(src))[0], args.repeats, 1)
    stub["ours_decode_only"] = {"seconds": summary(decode_s), "frames_per_s": rates(n_frames, decode_s)}
    stub["speedup_decode_only"] = stub["ours_decode_only"]["frames_per_s"]["median"] / \
        stub["tsav"]["frames_per_s"]["median"]
    result = {"device": str(device), "track": track, "clip": asdict(clip), "batch_size": args.infer_batch,
              "workers": args.infer_workers, "threads": torch.get_num_threads(), "model": args.model,
              "end_to_end": full, "inputs_only": stub}
    print_infer(result)
    return result


def print_infer(r: dict) -> None:
    rows = []
    for name, e in (("end to end (model)", r["end_to_end"]), ("inputs only (model stubbed)", r["inputs_only"])):
        rows.append([name, e["frames"], fmt(e["ours"]["frames_per_s"], 2), fmt(e["tsav"]["frames_per_s"], 2),
                     f"{e['speedup']:.1f}x"])
    print_table(["run", "frames", "ours frames/s", "TSAV loop frames/s", "speedup"], rows, right=True,
                title=f"infer: track {r['track']}, {r['device']}, clip {clip_shape(r['clip'])}, batch "
                f"{r['batch_size']}, {r['workers']} workers")
    e = r["inputs_only"]
    print(f"ours, crop decoding only (the CPU's share when clips are gathered and normalised on a GPU, as "
          f"utils.infer does): {fmt(e['ours_decode_only']['frames_per_s'], 0)} frames/s = "
          f"{e['speedup_decode_only']:.0f}x the TSAV loop's inputs")
    d = r["end_to_end"]["max_abs_logit_diff"]
    print(f"max |logit diff| ours vs TSAV loop: {d['tsav_as_published']:.2e} as published (JPEG masks, mel from "
          f"the wav at the exact frame time); {d['tsav_loop_with_db_logmel_and_png_masks']:.2e} with our PNG masks "
          "and log-mel windows fed through the same loop")


# ---------------------------------------------------------------------------------------------------
# all, goals, CLI


def at_least(value: float, goal: str) -> dict:
    """A goal entry: ``value`` against the lower bound ``GOALS[goal]``."""
    return {"value": value, "target": f">= {GOALS[goal]:g}", "met": value >= GOALS[goal]}


def at_most(value: float, goal: str) -> dict:
    """A goal entry: ``value`` against the upper bound ``GOALS[goal]``."""
    return {"value": value, "target": f"<= {GOALS[goal]:.3f}", "met": value <= GOALS[goal]}


def goals(results: dict) -> dict:
    """Each goal: the figure, the target and whether it is met (only for the sub-commands that ran)."""
    g: dict = {}
    if "preprocess" in results:
        p = results["preprocess"]
        fps = p["overall"]["frames_per_s"]["median"]
        for name, fps in (("preprocess_frames_per_s_per_worker", p["overall"]["frames_per_s"]["median"]),
                          ("preprocess_frames_per_cpu_second", p["overall_cpu"]["frames_per_cpu_s"]["median"])):
            g[name] = at_least(fps, "preprocess_fps_per_core")
        for key in ("ratio_stored_vs_tsav_images_raw", "ratio_disk_vs_tsav_images_disk"):
            g[f"bytes_{key}_both_masks_stored"] = at_most(p["bytes_per_frame"][key], "bytes_ratio")
        for label, var in p["bytes_per_frame"].get("variants", {}).items():
            for key in ("ratio_stored", "ratio_disk"):
                g[f"bytes_{key} {label}"] = at_most(var[key], "bytes_ratio")
    if "loader" in results:
        for w, e in results["loader"]["workers"].items():
            for key in ("speedup", "speedup_drawn_mask", "speedup_webp_drawn_mask"):
                g[f"loader_{key}_{w}_workers"] = at_least(e[key], "speedup")
    if "infer" in results:
        for k in ("end_to_end", "inputs_only"):
            g[f"infer_speedup_{k}"] = at_least(results["infer"][k]["speedup"], "speedup")
        g["infer_speedup_cpu_side_with_gpu_model"] = at_least(results["infer"]["inputs_only"]["speedup_decode_only"],
                                                              "speedup")
    if "train" in results and "ddp" in results["train"]:
        g["ddp_scaling_efficiency"] = at_least(results["train"]["ddp"]["efficiency"], "ddp_efficiency")
    if "train" in results and "loader" in results and "best_clips_per_s" in results["train"]:
        need = results["train"]["best_clips_per_s"]
        loaders = results["loader"]["workers"]
        per_worker = max(e["lmdb"]["clips_per_s_per_worker"]["median"]
                         for w, e in loaders.items() if w != "0" or len(loaders) == 1)
        workers = math.ceil(need / per_worker) if per_worker > 0 else None
        g["loader_workers_to_feed_training"] = {
            "value": workers, "train_clips_per_s": need, "loader_clips_per_s_per_worker": per_worker,
            "target": f"<= {os.cpu_count()} (cores)", "met": workers is not None and workers <= (os.cpu_count() or 1)}
    return g


def print_goals(g: dict) -> None:
    if g:
        print_table(title="goals", right=True, header=["figure", "value", "target", "met"],
                    rows=[[k, f"{v['value']:.3g}" if isinstance(v["value"], float) else v["value"], v["target"],
                           "yes" if v["met"] else "NO"] for k, v in g.items()])


RUNNERS = {"preprocess": bench_preprocess, "loader": bench_loader, "train": bench_train, "infer": bench_infer}


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m utils.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=COMMANDS, help="what to measure ('all': the four, one JSON)")
    p.add_argument("--json", default=None, help="write the results (and machine, versions, goals) to this file")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median, min, max reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="device of the model (train, infer); preprocessing and loading run on the CPU")
    p.add_argument("--work", default="bench_out", help="work folder for the data, database and TSAV export")
    p.add_argument("--seed", type=int, default=0, help="seed of the model weights and of the sampled clips")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for train and infer (default: torch's, one per core); preprocessing and "
                   "loading always run one thread per worker")
    g = p.add_argument_group("data and preprocessing")
    g.add_argument("--data", default=None,
                   help="mini Aff-Wild2 root (or a folder of videos) to use; default: generate the quick one "
                   "(3 s videos) in WORK/mini")
    g.add_argument("--video-names", nargs="*", default=list(DEFAULT_VIDEOS),
                   help="videos (file stems) to preprocess and build the benchmark database from")
    g.add_argument("--limit-frames", type=int, default=None, help="use at most this many frames per video")
    g.add_argument("--detector", choices=("hog", "cnn"), default="hog", help="dlib face detector")
    g.add_argument("--detect-every", type=int, default=5, help="run the detector every k frames (as create_database)")
    g = p.add_argument_group("clips (loader, train, infer)")
    g.add_argument("--size", type=int, default=112, help="crop side given to the model (112 = published)")
    g.add_argument("--clip-len", type=int, default=8, help="frames per clip")
    g.add_argument("--dilation", type=int, default=6, help="frames between clip frames")
    g.add_argument("--audio-seconds", type=float, default=10.0, help="log-mel window (10 s = 1001 columns)")
    g.add_argument("--model", choices=("tsav", "mtmt"), default="tsav", help="model to time (train, infer)")
    g.add_argument("--layout", default="abaw2021", help="output layout of the model")
    g = p.add_argument_group("loader")
    g.add_argument("--clips", type=int, default=128, help="clips drawn at random (the same for both loaders)")
    g.add_argument("--loader-batch", type=int, default=8, help="DataLoader batch size")
    g.add_argument("--loader-workers", type=int, nargs="+", default=[0, 1, 2],
                   help="DataLoader worker counts (0: in the main process, with one torch thread like a worker)")
    g.add_argument("--any-frame", action="store_true",
                   help="draw clips from every frame, also the first ones whose clip reaches before the track start")
    g = p.add_argument_group("train")
    g.add_argument("--batch-size", type=int, default=2, help="clips per step (per process for DDP)")
    g.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"],
                   help="fp32, and/or bf16 autocast (CPU or CUDA)")
    g.add_argument("--memory-formats", nargs="+", choices=("contiguous", "channels-last"),
                   default=["contiguous", "channels-last"], help="memory formats of the model and inputs")
    g.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                   help="also time torch.compile'd steps (auto: on CUDA only; on CPU compiling takes minutes)")
    g.add_argument("--ddp-procs", type=int, default=2, help="processes of the CPU DDP run (gloo); < 2: skip DDP")
    g.add_argument("--ddp-threads", type=int, default=1, help="torch threads per DDP process (and the 1-process run)")
    g = p.add_argument_group("infer")
    g.add_argument("--frames", type=int, default=16,
                   help="frames run through the model (the track's first ones); the inputs-only run takes all")
    g.add_argument("--track", default=None, help="track to predict (default: the first one with sound)")
    g.add_argument("--infer-batch", type=int, default=16, help="utils.infer batch size")
    g.add_argument("--infer-workers", type=int, default=0, help="utils.infer DataLoader workers decoding chunks")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("utils.bench: --repeats must be >= 1 and --warmup >= 0")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"machine": machine_info(), "versions": library_versions(), "args": vars(args), "results": {}}
    commands = list(RUNNERS) if args.command == "all" else [args.command]
    for name in commands:
        t0 = time.perf_counter()
        out["results"][name] = RUNNERS[name](args)
        out["results"][name]["wall_seconds"] = time.perf_counter() - t0
        print(f"({name}: {out['results'][name]['wall_seconds']:.0f} s)", flush=True)
    out["goals"] = goals(out["results"])
    out["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    print_goals(out["goals"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(jsonable(out), indent=1) + "\n")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
