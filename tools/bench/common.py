"""What every sub-command of the benchmark shares: timing and summaries, the machine, the work folder.

Everything the benchmarks need is made under ``--work`` (default ``bench_out/``): the quick mini
Aff-Wild2 (``tools.synthetic``, 3 s videos) unless ``--data`` names one, a database of a few of its videos
(``--video-names``) built with ``data.build.process_video``, and the same frames exported in TSAV's layout:

    tsav/<track>/%05d.jpg         crop, JPEG quality 95 (the database's own JPEG bytes: same encoder, same
                                  quality, same crop); faceless frames are black images, as TSAV wrote them
    tsav/<track>/mask/%05d.jpg    TSAV line mask, JPEG quality 100 (lossy: the grey levels ring)
    tsav/<track>/mask_exact/%05d.png  the lossless mask, used only to check that outputs agree
    tsav/<track>.wav              44.1 kHz mono 16-bit PCM, sample 0 = first video frame
    tsav/<track>_video_ts.txt     per-frame presentation time in ms

The TSAV-style loader (``TsavStyleClips``: the loader and infer benchmarks) reads that export, and
``preprocess_pass`` (one build of the videos, stage by stage) both times the preprocessing and builds
the benchmark database.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import time
import wave
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from data import audio, build, build_plan, masks, store
from data.reader import audio_window_db, close_stores, resize_frames
from data.video import find_videos
from models.tsav import prepare_clip_audio
from utils.dist import DeviceError, pick_device
from utils.inputs import AUDIO_DB, PIXELS, InputSpec

TSAV_CROP_QUALITY = 95
TSAV_MASK_QUALITY = 100
FS_BLOCK = 4096  # file-system block: every TSAV file takes whole blocks on disk


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
        raise SystemExit(f"tools.bench: {e}") from None


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


def input_shape(d: dict) -> str:
    """'CxTxSxS + 1x64xW' of an input spec (as ``InputSpec.to_dict``): the raw pixels and the audio window."""
    spec = InputSpec.from_dict(d)
    pixels = f"{spec.channels}x{spec.clip_len}x{spec.size}x{spec.size}"
    return pixels + (f" + 1x{audio.N_MELS}x{spec.audio_columns}" if spec.has_audio else "")


def fmt(s: dict, digits: int = 1) -> str:
    """'median [min–max]' of a summary."""
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"


# ---------------------------------------------------------------------------------------------------
# Work folder: data, database, TSAV export


def input_spec(args: argparse.Namespace) -> InputSpec:
    """The clip+audio input of the --clip-len/--dilation/--size/--audio-seconds flags, TSAV mask (the one the
    TSAV export holds), for TSAV and MTMT; one RGB frame of --size for EMMA and CoTEX; a block for CNU_ADL."""
    if getattr(args, "model", "") in ("emma", "cotex"):
        return InputSpec.frame(size=args.size, mask=None)
    if getattr(args, "model", "") == "cnu":  # CNU_ADL: a block of selected frames
        return InputSpec.frame_block(args.clip_len, size=args.size, block="selected")
    return InputSpec(kind="clip_audio", clip_len=args.clip_len, dilation=args.dilation, size=args.size, mask="tsav",
                     audio_seconds=args.audio_seconds)


def build_options(args: argparse.Namespace) -> build_plan.BuildOptions:
    return build_plan.BuildOptions(masks=("tsav", "mtmt"), detector=args.detector, detect_every=args.detect_every,
                                   limit_frames=args.limit_frames)


def ensure_data(args: argparse.Namespace) -> Path:
    """The dataset root: ``--data``, or the quick mini Aff-Wild2 generated once under the work folder."""
    if args.data:
        root = Path(args.data)
        if not root.is_dir():
            raise SystemExit(f"tools.bench: --data {root}: no such folder")
        return root
    root = Path(args.work) / "mini"
    if not (root / "meta.json").is_file():
        from tools import synthetic

        print(f"generating the quick mini Aff-Wild2 in {root} ...", flush=True)
        synthetic.generate(root, seed=0, quick=True)
    return root


def bench_jobs(args: argparse.Namespace, root: Path) -> list[build_plan.VideoJob]:
    """Jobs of the chosen videos (with their annotated tracks when the dataset has abaw2021 labels)."""
    videos_dir = root / "videos" if (root / "videos").is_dir() else root
    ann = root / "annotations" / "abaw2021"
    jobs = build_plan.collect_jobs([str(videos_dir)], str(ann) if ann.is_dir() else None)
    by_name = {j.name: j for j in jobs}
    names = args.video_names or sorted(by_name)[:3]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SystemExit(f"tools.bench: --video-names {', '.join(missing)} not in {videos_dir} "
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
    """Clips read TSAV's way: per sample, 8 crops + 8 masks with cv2.imread and the log-mel of 10 s of wav,
    made into network inputs on the CPU, in the loader (as TSAV normalised them in its DataLoader workers).

    ``rows``: (track, frame) of each sample. Clip slots before the track's first frame stay black without a
    read; every other slot is read from its file (faceless frames are black files, as TSAV wrote them).
    ``exact``: read the lossless PNG masks and slice the database's per-video log-mel instead of the JPEG
    masks and the wav, i.e. our inputs through TSAV's loop, to check that the outputs agree.
    ``raw(k)`` is sample k before that last step: pixels and the dB window, laid out as our dataset's samples.
    """

    def __init__(self, root: str | Path, rows: list[tuple[str, int]], spec: InputSpec, exact: bool = False,
                 db_path: str | Path | None = None) -> None:
        if spec.kind != "clip_audio" or spec.channels != 4:
            raise ValueError(f"TSAV-style clips are RGB + mask clips with audio, not {spec}")
        self.root, self.rows, self.spec, self.exact = Path(root), list(rows), spec, exact
        index = json.loads((self.root / "index.json").read_text())
        self.times = {t: np.loadtxt(self.root / f"{t}_video_ts.txt", ndmin=1) / 1000.0 for t in {r[0] for r in rows}}
        self.samples = (spec.audio_columns - 1) * audio.HOP  # 10 s → 441000, 1001 columns
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
        out = np.zeros((self.spec.clip_len, 112, 112, 4), np.uint8)
        folder = self.root / track
        mask_dir, ext = ("mask_exact", "png") if self.exact else ("mask", "jpg")
        for k, i in enumerate(frame + self.spec.frame_offsets()):
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

    def logmel_db(self, samples: np.ndarray) -> np.ndarray:
        """Per-clip log-mel in dB (1×64×W float32), not yet floored or normalised."""
        spec = torch.stft(torch.from_numpy(samples), audio.N_FFT, hop_length=audio.HOP, win_length=audio.WIN,
                          window=self.hann, center=True, pad_mode="reflect", return_complex=True)
        mel = (self.bank.T @ spec.abs().square()).numpy()
        return audio.power_to_db(mel)[None]

    def logmel(self, samples: np.ndarray) -> np.ndarray:
        """Per-clip log-mel as in data.audio.reference_logmel_clip (any window length), 1×64×W."""
        return audio.finish_window(self.logmel_db(samples)[0])

    def raw(self, k: int) -> dict[str, torch.Tensor]:
        """Sample k read from the files: uint8 pixels C×T×S×S and the (1, 64, W) dB window, unbatched."""
        track, frame = self.rows[k]
        frames = resize_frames(self.frames(track, frame), self.spec.size)
        t = float(self.times[track][frame])
        if self.exact:
            mel = audio_window_db(self.mels[track], t, self.spec.audio_columns)
        else:
            mel = self.logmel_db(self.read_wav(track, t))
        return {PIXELS: torch.from_numpy(frames).permute(3, 0, 1, 2).contiguous(), AUDIO_DB: torch.from_numpy(mel)}

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        """Sample k as TSAV's network inputs (named and made by ``models.tsav``), on the CPU, unbatched."""
        batch = {key: v[None] for key, v in self.raw(k).items()}
        return {key: v[0] for key, v in prepare_clip_audio(batch, torch.device("cpu")).items()}


# ---------------------------------------------------------------------------------------------------
# One preprocessing pass (timed by the preprocess sub-command, untimed to build the benchmark database)


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


PRE_STAGES = ("decode", "detect", "landmarks", "track", "align", "masks", "encode", "audio", "write", "other")


def preprocess_pass(jobs: list[build_plan.VideoJob], opts: build_plan.BuildOptions, db_path: Path) -> dict:
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
                raise SystemExit(f"tools.bench: {job.path}: {rec.meta['status']}")
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
