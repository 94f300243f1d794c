"""The opt-in pool of unlabelled faces (``--unlabelled-faces N``): aligned crops like the videos', truth kept apart.

``DIR/unlabelled_faces/%05d.jpg`` (00000.jpg …): N aligned 112x112 faces that look like the videos' crops, not
like the LSD set's synthetic style: either identity, the videos' label → signal mapping (class hue, valence →
brightness, AU dots), the class drawn from the videos' EXPR prior and the AUs as ``labels`` draws them given
the class, composited on a video background (the moving gradient with shapes, at a random time and frame
size) with a random pose, aligned with the true landmarks (``align_crop``) and JPEG-encoded like the crops.
Face i is drawn from its own stream ``rng_for(seed, UNLABELLED_KEY, i)``: made alone, in any order or by any
number of workers, it is the same bytes.

``DIR/unlabelled_faces_truth.json`` (outside the image folder, so that a reader of the folder sees no label):
generator, seed, quick, n, the style, and per file its EXPR class (8-class Aff-Wild2 codes, 0 Neutral …
7 Other), valence (3 decimals, as the label files), AUs (0/1 over ``au_names``) and identity. It is written
last and marks a complete pool.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tasks import EXPR_NAMES_8
from tools.synthetic.faces import align_crop, apply_affine, composite, face_scale_for, identities, render_face
from tools.synthetic.labels import draw_action_units, rng_for
from tools.synthetic.mapping import AU_NAMES_ALL, EXPR_PRIOR, FACE_REGION_XYWH
from tools.synthetic.render import Background
from tools.synthetic.specs import video_specs

FOLDER = "unlabelled_faces"
TRUTH = "unlabelled_faces_truth.json"
GENERATOR = "tools.synthetic --unlabelled-faces"
UNLABELLED_KEY = 2000     # first rng key of the pool (videos use 0..11, the LSD set 1000)
JPEG_QUALITY = 95         # as render.render_video encodes the videos' crops
FRAME_SIZES = tuple(sorted({(s.width, s.height) for s in video_specs()}))  # the videos' frame sizes
ZOOM = 0.08               # the videos' slow zoom around the face scale of the frame height (plan_motion)
ROTATION_DEG = 8.0        # the videos' tilt (6° drift) plus some arousal jitter
VALENCE_MAX = 0.95        # the videos' valence curves stay within ±0.95 (labels.smooth_curve)
BACKGROUND_MAX_S = 20.0   # background drawn at a random time of a video this long


class UnlabelledRefused(RuntimeError):
    """DIR/unlabelled_faces or its truth file holds something this run did not make; the message names it."""


@dataclass(frozen=True)
class FaceTruth:
    """The hidden labels of one pool face."""

    expr: int         # 0..7 (Aff-Wild2 codes, Other = 7)
    valence: float    # [-0.95, 0.95], 3 decimals
    aus: tuple[int, ...]  # 0/1 over AU_NAMES_ALL
    identity: int     # 0 or 1

    def record(self) -> dict:
        return {"expr": self.expr, "valence": self.valence, "aus": list(self.aus), "identity": self.identity}


def style_meta() -> dict:
    """How the pool is drawn, as written to the truth file (a pool of another style is not this one)."""
    return {"rng_key": UNLABELLED_KEY, "jpeg_quality": JPEG_QUALITY, "frame_sizes": [list(s) for s in FRAME_SIZES],
            "expr_prior": list(EXPR_PRIOR), "valence": f"uniform in [-{VALENCE_MAX}, {VALENCE_MAX}], 3 decimals",
            "aus": "labels.draw_action_units given the class", "identity": "0 or 1 (1:1)",
            "pose": f"centre in the videos' motion box, zoom ±{ZOOM}, tilt ±{ROTATION_DEG}°",
            "background": f"the videos' moving background (render.Background) at a time in [0, {BACKGROUND_MAX_S}] s"}


def draw_truth(seed: int, index: int) -> tuple[FaceTruth, np.random.Generator]:
    """Face ``index``'s labels and its stream, positioned after them (the pose and background come next)."""
    rng = rng_for(seed, UNLABELLED_KEY, index)
    expr = int(rng.choice(len(EXPR_PRIOR), p=np.array(EXPR_PRIOR) / sum(EXPR_PRIOR)))
    valence = round(float(rng.uniform(-VALENCE_MAX, VALENCE_MAX)), 3)  # rendered as the files would say it
    identity = int(rng.integers(2))
    aus = draw_action_units(np.array([expr]), rng)[0]
    return FaceTruth(expr, valence, tuple(int(a) for a in aus), identity), rng


def random_pose(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """2x3 patch → frame similarity: the face where and as large as the one-person videos place it."""
    w, h = FACE_REGION_XYWH[2:]
    s = face_scale_for(height, False) * (1 + rng.uniform(-ZOOM, ZOOM))
    rad = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.4, 0.6) * height  # plan.motion_box
    a, b = s * np.cos(rad), s * np.sin(rad)
    px, py = (w - 1) / 2, (h - 1) / 2
    return np.array([[a, -b, cx - (a * px - b * py)], [b, a, cy - (b * px + a * py)]])


def unlabelled_face(seed: int, index: int) -> tuple[np.ndarray, FaceTruth]:
    """Pool face ``index`` before JPEG (112x112 RGB uint8) and its truth."""
    truth, rng = draw_truth(seed, index)
    width, height = FRAME_SIZES[int(rng.integers(len(FRAME_SIZES)))]
    m = random_pose(rng, width, height)
    frame = Background(width, height, rng).render(float(rng.uniform(0, BACKGROUND_MAX_S)))
    ident = identities()[truth.identity]
    composite(frame, render_face(ident, truth.expr, truth.valence, np.array(truth.aus)), ident.alpha, m)
    return align_crop(frame, apply_affine(m, ident.landmarks)), truth


def unlabelled_jpeg(seed: int, index: int) -> tuple[bytes, FaceTruth]:
    """``unlabelled_face`` encoded as the videos' crops are (the file's bytes) and its truth."""
    rgb, truth = unlabelled_face(seed, index)
    ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return jpg.tobytes(), truth


def file_name(index: int) -> str:
    return f"{index:05d}.jpg"


def state(out: Path, seed: int, quick: bool, n: int) -> str:
    """'absent' (neither path exists), 'complete' (a pool of these settings, exactly its files), or a reason
    why what is at those paths is not this generator's pool."""
    folder, truth = out / FOLDER, out / TRUTH
    if not folder.exists() and not truth.exists():
        return "absent"
    try:
        meta = json.loads(truth.read_text())
    except (OSError, ValueError):
        return f"{truth} missing or unreadable (not a complete pool made by --unlabelled-faces)"
    if not isinstance(meta, dict):
        return f"{truth} is not a truth file of --unlabelled-faces"
    want = {"generator": GENERATOR, "seed": seed, "quick": quick, "n": n}
    diff = [f"{k} {meta.get(k)!r} (asked: {v!r})" for k, v in want.items() if meta.get(k) != v]
    had = meta.get("style") if isinstance(meta.get("style"), dict) else {}
    diff += [f"style {k} {had.get(k)!r} (this generator: {v!r})" for k, v in style_meta().items() if had.get(k) != v]
    if diff:
        return "made with other settings: " + ", ".join(diff)
    names = {file_name(i) for i in range(n)}
    if not folder.is_dir():
        return f"{folder} is missing"
    present = {p.name for p in folder.iterdir()}
    if present != names or set(meta.get("faces", {})) != names:
        return f"{folder} does not hold exactly the {n} images its truth file lists"
    return "complete"


def truth_text(meta: dict) -> str:
    """The truth file, one line per entry (of ``style`` and ``faces`` too): a pool of thousands stays readable."""
    def entry(key: str, value: object, indent: str) -> str:
        if key in ("style", "faces"):
            inner = ",\n".join(entry(k, v, indent + " ") for k, v in value.items())
            return f"{indent}{json.dumps(key)}: {{\n{inner}\n{indent}}}"
        return f"{indent}{json.dumps(key)}: {json.dumps(value)}"

    return "{\n" + ",\n".join(entry(k, v, " ") for k, v in meta.items()) + "\n}\n"


def write_pool(tmp: Path, seed: int, quick: bool, n: int) -> dict:
    """Write the n faces under ``tmp/FOLDER`` and return the truth (not yet written)."""
    (tmp / FOLDER).mkdir()
    faces = {}
    for i in range(n):
        jpg, truth = unlabelled_jpeg(seed, i)
        (tmp / FOLDER / file_name(i)).write_bytes(jpg)
        faces[file_name(i)] = truth.record()
    counts = np.bincount([f["expr"] for f in faces.values()], minlength=len(EXPR_NAMES_8))
    return {"generator": GENERATOR, "seed": seed, "quick": quick, "n": n, "expr_names": list(EXPR_NAMES_8),
            "au_names": list(AU_NAMES_ALL), "expr_counts": dict(zip(EXPR_NAMES_8, counts.tolist())),
            "style": style_meta(), "faces": faces}


def generate_unlabelled(out: Path, seed: int = 0, quick: bool = False, n: int = 0) -> dict | None:
    """Add the pool of ``n`` faces to the mini dataset in ``out``; returns its truth, or None when a complete
    pool of these settings is already there (or n is 0). UnlabelledRefused when anything else is at those
    paths (nothing is touched)."""
    out = Path(out)
    if n < 1:
        return None
    found = state(out, seed, quick, n)
    if found == "complete":
        return None
    if found != "absent":
        raise UnlabelledRefused(refusal(out, seed, found))
    # built aside and renamed at the end: an interrupted run leaves no half pool under the final names
    tmp = out / f".{FOLDER}.tmp-{os.getpid()}"
    tmp.mkdir()  # fails if it exists: what the except below removes is this run's own
    try:
        meta = write_pool(tmp, seed, quick, n)
        (tmp / TRUTH).write_text(truth_text(meta))
        (tmp / FOLDER).rename(out / FOLDER)
        (tmp / TRUTH).rename(out / TRUTH)  # last: the truth file marks a complete pool
        tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def refusal(out: Path, seed: int, found: str) -> str:
    """The message of a refused pool: both paths, why, and what to do."""
    return (f"{out / FOLDER} / {out / TRUTH}: exists and is not a complete pool of unlabelled faces of seed "
            f"{seed}: {found}; remove it or choose another --out")


def read_truth(out: Path) -> dict[str, FaceTruth]:
    """{file name: truth} of the pool in ``out`` (for tests and pseudo-label precision; never for training)."""
    meta = json.loads((Path(out) / TRUTH).read_text())
    return {name: FaceTruth(r["expr"], r["valence"], tuple(r["aus"]), r["identity"])
            for name, r in meta["faces"].items()}
