"""Face-part masks (the 4th input channel) rendered from 68 landmarks in crop coordinates.

- ``tsav_mask``: TSAV's line drawing (1-px polylines, LINE_8, points rounded to int).
- ``mtmt_mask``: MTMT's filled segmentation (regions painted in a fixed order, later over earlier).

Both are single-channel uint8 with a small fixed set of grey levels, so they must be stored
losslessly (``encode_png``); TSAV's JPEG masks lost the levels. ``render`` draws them from landmarks
at the precision the database keeps (float16), so a mask drawn when a clip is read equals the one
``create_database.py --masks`` stores.
"""

from __future__ import annotations

import cv2
import numpy as np

from data.align import CROP_SIZE

# TSAV line mask grey levels (SPEC §2).
TSAV_MOUTH = 255
TSAV_LEFT_BROW = 223
TSAV_RIGHT_BROW = 191
TSAV_LEFT_EYE = 159
TSAV_RIGHT_EYE = 127
TSAV_NOSE = 63
TSAV_JAW = 31

# (iBUG-68 indices, closed, grey level) in drawing order.
TSAV_PARTS = (
    (range(48, 60), True, TSAV_MOUTH),
    (range(17, 22), False, TSAV_LEFT_BROW),
    (range(22, 27), False, TSAV_RIGHT_BROW),
    (range(36, 42), True, TSAV_LEFT_EYE),
    (range(42, 48), True, TSAV_RIGHT_EYE),
    (range(28, 31), False, TSAV_NOSE),  # 27 excluded, as in TSAV
    (range(6, 11), False, TSAV_JAW),
)

# MTMT filled mask grey levels (read off the paper's figure, SPEC §2).
MTMT_SKIN = 31
MTMT_BROWS = 63
MTMT_NOSE = 93
MTMT_EYES = 191
MTMT_UPPER_LIP = 159
MTMT_LOWER_LIP = 127

# Geometry of the parts that 68 landmarks only outline, as fractions of the inter-ocular distance.
FOREHEAD_LIFT = 0.45  # how far above the brows the skin region reaches
BROW_THICKNESS = 0.12  # brow landmarks trace the brow's upper edge; the band reaches down this far

# fillPoly works in fixed point with this many fractional bits: sub-pixel polygons, still no AA.
_SHIFT = 4


def _check_landmarks(lm: np.ndarray) -> np.ndarray:
    lm = np.asarray(lm, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {lm.shape}")
    return lm


def tsav_mask(lm: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """TSAV's line mask: black canvas, 1-px LINE_8 polylines of the parts in ``TSAV_PARTS``."""
    pts = np.round(_check_landmarks(lm)).astype(np.int32)  # rounded once: this runs per frame when clips are read
    mask = np.zeros((size, size), np.uint8)
    for idx, closed, grey in TSAV_PARTS:
        cv2.polylines(mask, [pts[idx.start:idx.stop]], closed, grey, thickness=1, lineType=cv2.LINE_8)
    return mask


def _fill(mask: np.ndarray, polygon: np.ndarray, grey: int) -> None:
    pts = np.round(polygon * (1 << _SHIFT)).astype(np.int32)
    cv2.fillPoly(mask, [pts], int(grey), lineType=cv2.LINE_8, shift=_SHIFT)


def _up_direction(lm: np.ndarray) -> np.ndarray:
    """Unit vector from the mouth towards the eyes: "up" in the face's own frame."""
    eyes = lm[36:48].mean(0)
    mouth = lm[48:60].mean(0)
    v = eyes - mouth
    n = np.linalg.norm(v)
    return v / n if n > 0 else np.array([0.0, -1.0])


def _interocular(lm: np.ndarray) -> float:
    return float(np.linalg.norm(lm[42:48].mean(0) - lm[36:42].mean(0)))


def skin_polygon(lm: np.ndarray) -> np.ndarray:
    """Jaw line closed over the brows lifted upwards (a bit of forehead), as a convex hull."""
    lift = _up_direction(lm) * FOREHEAD_LIFT * _interocular(lm)
    pts = np.concatenate([lm[0:17], lm[17:27] + lift])
    return cv2.convexHull(pts.astype(np.float32))[:, 0].astype(np.float64)


def brow_polygon(brow: np.ndarray, down: np.ndarray) -> np.ndarray:
    """A band under the brow's landmark line: the line, then the line shifted ``down``, reversed."""
    return np.concatenate([brow, (brow + down)[::-1]])


def mtmt_mask(lm: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """MTMT-style filled mask: skin, nose, brows, eyes, upper lip, lower lip (later over earlier).

    The mouth opening between the inner lips is left as skin.
    """
    lm = _check_landmarks(lm)
    mask = np.zeros((size, size), np.uint8)
    down = -_up_direction(lm) * max(BROW_THICKNESS * _interocular(lm), 1.5)
    _fill(mask, skin_polygon(lm), MTMT_SKIN)
    _fill(mask, cv2.convexHull(lm[27:36].astype(np.float32))[:, 0].astype(np.float64), MTMT_NOSE)
    _fill(mask, brow_polygon(lm[17:22], down), MTMT_BROWS)
    _fill(mask, brow_polygon(lm[22:27], down), MTMT_BROWS)
    _fill(mask, lm[36:42], MTMT_EYES)
    _fill(mask, lm[42:48], MTMT_EYES)
    _fill(mask, lm[[48, 49, 50, 51, 52, 53, 54, 64, 63, 62, 61, 60]], MTMT_UPPER_LIP)
    _fill(mask, lm[[54, 55, 56, 57, 58, 59, 48, 60, 67, 66, 65, 64]], MTMT_LOWER_LIP)
    return mask


def blank_mask(size: int = CROP_SIZE) -> np.ndarray:
    """The mask of a frame without a face."""
    return np.zeros((size, size), np.uint8)


RENDERERS = {"tsav": tsav_mask, "mtmt": mtmt_mask}


def stored_precision(lm: np.ndarray) -> np.ndarray:
    """Landmarks rounded as the database stores them (float16: 1/32 px or better inside the crop)."""
    return np.asarray(lm, np.float16).astype(np.float32)


def render(kind: str, lm: np.ndarray | None) -> np.ndarray:
    """The ``kind`` mask of one face from its crop landmarks at stored precision; None/NaN → blank."""
    if lm is None:
        return blank_mask()
    lm = stored_precision(lm)
    if not np.isfinite(lm).all():
        return blank_mask()
    return RENDERERS[kind](lm)


def encode_png(mask: np.ndarray) -> bytes:
    """Lossless PNG bytes of a single-channel uint8 mask."""
    if mask.dtype != np.uint8 or mask.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 mask, got {mask.dtype} {mask.shape}")
    ok, buf = cv2.imencode(".png", mask)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes) -> np.ndarray:
    """Inverse of ``encode_png``."""
    mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if mask is None or mask.ndim != 2:
        raise ValueError("not a single-channel PNG mask")
    return mask
