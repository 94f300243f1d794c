"""The opt-in LSD set (``--lsd``): "synthetic" training faces in a style of their own, "real" validation crops.

``DIR/lsd/train/<CLASS>/%05d.jpg``: ``per_class`` images per class, all of identity 0, each drawn from its own
stream ``rng_for(seed, LSD_KEY, class, index)`` (made in any order or in parallel, they are the same bytes).
The label → signal mapping is the videos' (class hue, valence → brightness, AU dots), then a style the real
crops lack:
plain or two-colour gradient backgrounds, a fixed colour cast, a Gaussian blur and low JPEG quality.

``DIR/lsd/val/<CLASS>/<track>_<frame5>.jpg``: byte copies of the mini dataset's aligned crops whose abaw2021
EXPR label is 1–6 (class = code − 1), taken from the validation tracks, evenly spread over the frames and
at most ``VAL_MAX_PER_CLASS`` a class. A class the validation tracks show on fewer than ``VAL_MIN_PER_CLASS``
frames is topped up from the training tracks' crops (with seed 0 the full set's validation tracks show
no Fear and no Sadness); ``meta.json`` counts each class's frames by source. In the LSD setting no real frame is
trained on, so these crops are unseen by an LSD model whichever split they come from.

Class folders are upper case and the anger folder is misspelt ``ANGRE`` (first three letters kept), as the
official release misspells its anger folder, so that ``data.lsd``'s prefix matching is exercised.
``DIR/lsd/meta.json``, written last, marks a complete set: seed, quick, per_class, the style, the counts.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from data.annotations import read_label_file
from tasks import EXPR_CODES_6, EXPR_NAMES_6, TRAIN_SPLIT, VAL_SPLIT
from tools.synthetic.faces import align_crop, apply_affine, composite, identities, render_face
from tools.synthetic.labels import rng_for
from tools.synthetic.mapping import AU_NAMES_ALL, EXPR_AU_AFFINITY, FACE_REGION_XYWH

LSD_FOLDERS = ("ANGRE", "DISGUST", "FEAR", "HAPPINESS", "SADNESS", "SURPRISE")  # order of EXPR_NAMES_6
LSD_KEY = 1000            # first rng key of the LSD streams (video streams use the video index 0..11)
PER_CLASS = 120           # default training images per class
VAL_MAX_PER_CLASS = 100
VAL_MIN_PER_CLASS = 40
CANVAS = 256              # square canvas the face is composited on before alignment
SCALE_RANGE = (0.85, 1.15)
SHIFT_PX = 8.0            # max offset of the face centre from the canvas centre
ROTATION_DEG = 10.0       # max tilt
# Fixed per-set colour cast (magenta), at right angles to how identity 1's cooler skin moves the face chroma
# (Cb/Y, Cr/Y). Strong enough that the gap is real: a nearest-class-mean on face chroma fitted on the synthetic
# images scores macro-F1 0.68 on the real ones (1.00 at (1.03, 0.97, 1.03), 0.41 at 1.15/0.85), and a tiny ViT's
# validation F1 swings between epochs as it fits the synthetic style (README, masked CoTEX).
CAST_RGB = (1.08, 0.92, 1.08)
BLUR_SIGMA = 1.0
JPEG_QUALITY = 30
META = "meta.json"


class LsdRefused(RuntimeError):
    """DIR/lsd (or DIR) holds files this run did not make; the message names the folder."""


def style_meta() -> dict:
    """The style parameters of the synthetic images, as written to ``lsd/meta.json``."""
    return {"identity": 0, "canvas_px": CANVAS, "scale_range": list(SCALE_RANGE), "shift_px": SHIFT_PX,
            "rotation_deg": ROTATION_DEG, "background": "plain or two-colour linear gradient (1:1)",
            "au_dots": "each AU on with p = 0.25, + 0.5 when in the class's AU affinity (as in labels)",
            "valence": "uniform in [-1, 1] → face brightness", "cast_rgb": list(CAST_RGB),
            "blur_sigma_px": BLUR_SIGMA, "jpeg_quality": JPEG_QUALITY}


def draw_background(rng: np.random.Generator) -> np.ndarray:
    """A plain colour or a linear gradient between two colours at a random angle (CANVAS², RGB float)."""
    a = rng.uniform(40, 215, 3)
    if rng.random() < 0.5:
        return np.broadcast_to(a, (CANVAS, CANVAS, 3)).astype(np.float32)
    b = rng.uniform(40, 215, 3)
    ang = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS] / (CANVAS - 1) - 0.5
    t = np.clip(0.5 + xx * np.cos(ang) + yy * np.sin(ang), 0, 1)[..., None]
    return ((1 - t) * a + t * b).astype(np.float32)


def random_similarity(rng: np.random.Generator) -> np.ndarray:
    """2x3 patch → canvas: the patch centre near the canvas centre, a random scale and tilt."""
    w, h = FACE_REGION_XYWH[2:]
    s = rng.uniform(*SCALE_RANGE)
    rad = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    cx, cy = (CANVAS - 1) / 2 + rng.uniform(-SHIFT_PX, SHIFT_PX, 2)
    a, b = s * np.cos(rad), s * np.sin(rad)
    px, py = (w - 1) / 2, (h - 1) / 2
    return np.array([[a, -b, cx - (a * px - b * py)], [b, a, cy - (b * px + a * py)]])


def synthetic_face(seed: int, cls: int, index: int) -> np.ndarray:
    """Training image ``index`` of class ``cls`` (0..5) before JPEG: 112x112 RGB uint8, style applied."""
    rng = rng_for(seed, LSD_KEY, cls, index)
    code = EXPR_CODES_6[cls]  # the Aff-Wild2 code drives the hue, as in the videos
    ident = identities()[0]
    valence = float(rng.uniform(-1, 1))
    affinity = EXPR_AU_AFFINITY[code]
    p_on = np.array([0.25 + (0.5 if au in affinity else 0.0) for au in AU_NAMES_ALL])
    aus = (rng.random(len(AU_NAMES_ALL)) < p_on).astype(np.int8)
    canvas = draw_background(rng).round().astype(np.uint8)
    m = random_similarity(rng)
    composite(canvas, render_face(ident, code, valence, aus), ident.alpha, m)
    crop = align_crop(canvas, apply_affine(m, ident.landmarks)).astype(np.float32)
    crop = cv2.GaussianBlur(crop * np.array(CAST_RGB, np.float32), (0, 0), BLUR_SIGMA)
    return np.clip(crop + 0.5, 0, 255).astype(np.uint8)


def synthetic_jpeg(seed: int, cls: int, index: int) -> bytes:
    """``synthetic_face`` encoded at JPEG_QUALITY (the file's bytes)."""
    rgb = synthetic_face(seed, cls, index)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return jpg.tobytes()


def labelled_crops(root: Path, split: str) -> dict[int, list[tuple[str, int]]]:
    """{class 0..5: [(track, frame 1-based), ...]} of one split's crops whose abaw2021 EXPR code is 1–6 and
    whose face has its five landmarks inside the picture (not a face sliding out of the frame)."""
    out: dict[int, list[tuple[str, int]]] = {k: [] for k in range(len(EXPR_NAMES_6))}
    folder = root / "annotations" / "abaw2021" / "EXPR_Set" / split
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (is {root} a mini dataset?)")
    sizes = {t["name"]: (v["width"], v["height"]) for v in json.loads((root / "meta.json").read_text())["videos"]
             for t in v["tracks"]}
    for path in sorted(folder.glob("*.txt")):
        labels = read_label_file(path, split, "EXPR")
        crops = root / "cropped_aligned" / path.stem
        lm = np.load(root / "truth" / f"{path.stem}.npy")  # NaN (no face) compares False: not inside
        inside = np.all((lm >= 0) & (lm <= np.array(sizes[path.stem]) - 1), axis=(1, 2))
        for i in np.flatnonzero(labels.valid[:len(inside)] & inside[:len(labels.valid)]):
            code = int(labels.values[i])
            if code in EXPR_CODES_6 and (crops / f"{i + 1:05d}.jpg").is_file():
                out[EXPR_CODES_6.index(code)].append((path.stem, int(i) + 1))
    return out


def evenly(items: list, n: int) -> list:
    """At most n of ``items``, evenly spread over the list (deterministic; all of them when n ≥ len)."""
    if n >= len(items):
        return list(items)
    return [items[i] for i in np.round(np.linspace(0, len(items) - 1, n)).astype(int)]


def choose_val(root: Path) -> dict[int, dict[str, list[tuple[str, int]]]]:
    """{class: {split: [(track, frame)]}}: validation-track crops, topped up from training tracks when short."""
    val, train = labelled_crops(root, VAL_SPLIT), labelled_crops(root, TRAIN_SPLIT)
    chosen = {}
    for k in range(len(EXPR_NAMES_6)):
        own = evenly(val[k], VAL_MAX_PER_CLASS)
        extra = evenly(train[k], max(VAL_MIN_PER_CLASS - len(own), 0)) if len(own) < VAL_MIN_PER_CLASS else []
        chosen[k] = {VAL_SPLIT: own, TRAIN_SPLIT: extra}
    return chosen


def state(out: Path, seed: int, quick: bool, per_class: int) -> str:
    """'absent' (no DIR/lsd), 'complete' (made by this generator with these settings, every file there),
    or a reason why DIR/lsd is someone else's."""
    lsd = out / "lsd"
    if not lsd.exists():
        return "absent"
    try:
        meta = json.loads((lsd / META).read_text())
    except (OSError, ValueError):
        return f"no readable {META} (not a complete set made by --lsd)"
    want = {"generator": "tools.synthetic --lsd", "seed": seed, "quick": quick, "per_class": per_class,
            "style": style_meta()}  # another style: a set of an earlier version of this generator
    diff = [f"{k} {meta.get(k)!r} (asked: {v!r})" for k, v in want.items() if k != "style" and meta.get(k) != v]
    had = meta.get("style") if isinstance(meta.get("style"), dict) else {}
    diff += [f"style {k} {had.get(k)!r} (this generator: {v!r})" for k, v in want["style"].items() if had.get(k) != v]
    if diff:
        return "made with other settings: " + ", ".join(diff)
    for split in ("train", "val"):
        for folder, n in meta["counts"][split].items():
            if len(list((lsd / split / folder).glob("*.jpg"))) != n:
                return f"{split}/{folder} does not hold the {n} images its {META} lists"
    return "complete"


def dataset_matches(out: Path, seed: int, quick: bool) -> bool | None:
    """Whether DIR holds the mini dataset of this seed and quick flag (None: DIR has no meta.json)."""
    try:
        meta = json.loads((out / "meta.json").read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return False
    return meta.get("generator") == "tools.synthetic" and meta.get("seed") == seed and meta.get("quick") == quick


def write_set(tmp: Path, root: Path, seed: int, quick: bool, per_class: int) -> dict:
    """Write the whole set under ``tmp`` (crops read from ``root``) and return its meta."""
    chosen = choose_val(root)
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    sources: dict[str, dict[str, int]] = {}
    for k, folder in enumerate(LSD_FOLDERS):
        d = tmp / "train" / folder
        d.mkdir(parents=True)
        for i in range(per_class):
            (d / f"{i:05d}.jpg").write_bytes(synthetic_jpeg(seed, k, i))
        counts["train"][folder] = per_class
        d = tmp / "val" / folder
        d.mkdir(parents=True)  # even when empty: data.lsd wants a folder per class
        for picks in chosen[k].values():
            for track, frame in picks:
                shutil.copyfile(root / "cropped_aligned" / track / f"{frame:05d}.jpg", d / f"{track}_{frame:05d}.jpg")
        counts["val"][folder] = sum(len(p) for p in chosen[k].values())
        sources[folder] = {split: len(p) for split, p in chosen[k].items()}
    return {"generator": "tools.synthetic --lsd", "seed": seed, "quick": quick, "per_class": per_class,
            "classes": dict(zip(LSD_FOLDERS, EXPR_NAMES_6)),
            "expr_codes": dict(zip(LSD_FOLDERS, EXPR_CODES_6)),
            "counts": counts, "val_sources": sources, "val_max_per_class": VAL_MAX_PER_CLASS,
            "val_min_per_class": VAL_MIN_PER_CLASS, "style": style_meta()}


def generate_lsd(out: Path, seed: int = 0, quick: bool = False, per_class: int = PER_CLASS) -> dict | None:
    """Add ``out/lsd`` to the mini dataset in ``out``; returns its meta, or None when a complete set of these
    settings is already there. LsdRefused when ``out/lsd`` is anything else (nothing is touched)."""
    out = Path(out)
    found = state(out, seed, quick, per_class)
    if found == "complete":
        return None
    if found != "absent":
        raise LsdRefused(f"{out / 'lsd'} exists and is not a complete LSD set of seed {seed}: {found}; "
                         "remove it or choose another --out")
    # built aside and renamed at the end: an interrupted run leaves no half set under the final name
    tmp = out / f".lsd.tmp-{os.getpid()}"
    tmp.mkdir()  # fails if it exists: what the except below removes is this run's own
    try:
        meta = write_set(tmp, out, seed, quick, per_class)
        (tmp / META).write_text(json.dumps(meta, indent=1) + "\n")
        tmp.rename(out / "lsd")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
