"""5-point similarity alignment of a face to the 112×112 crop used by TSAV / MTMT.

Framing. The official Aff-Wild2 ``cropped_aligned`` images are 112×112 with the face filling most
of the frame; TSAV's author describes his alignment as a 5-point similarity to insightface's
ArcFace 112×112 template, and MTMT aligned to a 5-point template too. We therefore use that
template as is: the eye centres sit at y ≈ 51.6 and 35 px apart, the mouth corners at y ≈ 92.3,
so brows-to-chin fills the crop and the forehead top and the ears are cut. A similarity (rotation,
uniform scale, translation, no shear, no reflection) keeps the face's proportions, so the crops
only differ from the official ones by how well our landmarks agree with theirs.

"Left"/"right" are image sides: the template's left eye is the subject's right eye, which is
iBUG-68 points 36–41 (the landmarker numbers points by image side, so mirrored faces need no
special case).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CROP_SIZE = 112

# insightface ArcFace template, pixels of the 112×112 crop.
TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],  # left eye centre (image left)
        [73.5318, 51.5014],  # right eye centre
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float64,
)

# iBUG-68 indices used to build the 5 points.
LEFT_EYE = slice(36, 42)
RIGHT_EYE = slice(42, 48)
NOSE_TIP = 30
MOUTH_LEFT = 48
MOUTH_RIGHT = 54


@dataclass(frozen=True)
class AlignedFace:
    image: np.ndarray  # (size, size, 3) uint8
    matrix: np.ndarray  # (2, 3) float64, frame → crop
    landmarks: np.ndarray  # (68, 2) float32 in crop coordinates


def template(size: int = CROP_SIZE) -> np.ndarray:
    """The 5-point template scaled to a ``size``×``size`` crop."""
    return TEMPLATE_112 * (size / CROP_SIZE)


def template_face_box(size: int = CROP_SIZE) -> tuple[float, float, float, float]:
    """Where dlib's HOG detector frames a face that is aligned to the template (x0, y0, x1, y1).

    Official crops are too tight for the detector to find the face again, so landmarks are fitted
    in this fixed box instead. Measured on the astronaut photo and its mirror image: box centre
    (55.2, 75.7) / (58.7, 76.0), side 76.8 / 77.2 px at 112; we use the symmetric mean.
    The bottom edge lies slightly below the crop, as the detector's box would.
    """
    cx, cy, side = 56.0, 75.8, 77.0
    k = size / CROP_SIZE
    return ((cx - side / 2) * k, (cy - side / 2) * k, (cx + side / 2) * k, (cy + side / 2) * k)


def five_points(lm68: np.ndarray) -> np.ndarray:
    """Eye centres, nose tip and mouth corners from iBUG-68 landmarks → (5, 2) float64."""
    lm = np.asarray(lm68, dtype=np.float64)
    if lm.shape != (68, 2):
        raise ValueError(f"expected (68, 2) landmarks, got {lm.shape}")
    return np.stack(
        [lm[LEFT_EYE].mean(0), lm[RIGHT_EYE].mean(0), lm[NOSE_TIP], lm[MOUTH_LEFT], lm[MOUTH_RIGHT]]
    )


def estimate_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity mapping ``src`` onto ``dst`` (Umeyama 1991) → (2, 3) float64.

    Minimises sum ||s·R·src_i + t − dst_i||² over rotations R (reflections excluded), s > 0, t.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching (N>=2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_src, mu_dst = src.mean(0), dst.mean(0)
    src_c, dst_c = src - mu_src, dst - mu_dst
    var_src = (src_c**2).sum() / len(src)
    if var_src <= 0:
        raise ValueError("source points are all identical")
    cov = dst_c.T @ src_c / len(src)
    u, sing, vt = np.linalg.svd(cov)
    # Flip the last axis if the best orthogonal map would be a reflection.
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ np.diag(d) @ vt
    scale = (sing * d).sum() / var_src
    trans = mu_dst - scale * rot @ mu_src
    return np.hstack([scale * rot, trans[:, None]])


def similarity_to_template(points5: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """The (2, 3) frame → crop matrix that best maps the 5 points onto the template."""
    return estimate_similarity(points5, template(size))


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine to (N, 2) points → (N, 2) float32."""
    pts = np.asarray(points, dtype=np.float64)
    m = np.asarray(matrix, dtype=np.float64)
    return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)


def warp_face(rgb: np.ndarray, matrix: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Warp a frame to the ``size``×``size`` crop: bicubic, constant black border (as TSAV)."""
    return cv2.warpAffine(
        rgb,
        np.asarray(matrix, dtype=np.float64),
        (size, size),
        flags=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )


def align_face(rgb: np.ndarray, lm68: np.ndarray, size: int = CROP_SIZE) -> AlignedFace:
    """Crop, matrix and crop-space landmarks of one face in one frame."""
    matrix = similarity_to_template(five_points(lm68), size)
    return AlignedFace(warp_face(rgb, matrix, size), matrix, transform_points(lm68, matrix))
