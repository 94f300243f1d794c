"""TSAV line mask and MTMT filled mask: exact grey levels, placement, lossless storage."""

import numpy as np
import pytest

from data import masks
from data.align import TEMPLATE_112

TSAV_LEVELS = {0, 31, 63, 127, 159, 191, 223, 255}
MTMT_LEVELS = {0, 31, 63, 93, 127, 159, 191}


def ellipse(cx: float, cy: float, rx: float, ry: float, degrees: list[float]) -> np.ndarray:
    t = np.radians(degrees)
    return np.stack([cx + rx * np.cos(t), cy - ry * np.sin(t)], 1)  # image y points down


def synthetic_landmarks() -> np.ndarray:
    """A plausible iBUG-68 face in 112×112 crop coordinates, eyes/mouth on the ArcFace template."""
    (lex, ley), (rex, rey) = TEMPLATE_112[0], TEMPLATE_112[1]
    jaw = ellipse(56, 58, 42, 50, list(np.linspace(180, 360, 17)))
    left_brow = np.stack([np.linspace(26, 50, 5), [42, 39, 38, 39, 41]], 1)
    right_brow = np.stack([np.linspace(62, 86, 5), [41, 39, 38, 39, 42]], 1)
    bridge = np.stack([np.full(4, 56.0), [50, 57, 64, 71]], 1)
    base = np.stack([np.linspace(49, 63, 5), [76, 77, 78, 77, 76]], 1)
    eye_angles = [180, 120, 60, 0, -60, -120]  # outer/inner corner, top, corner, bottom
    left_eye = ellipse(lex, ley, 7, 3, eye_angles)
    right_eye = ellipse(rex, rey, 7, 3, eye_angles)
    outer = ellipse(56, 92, 14.6, 7, [180, 150, 120, 90, 60, 30, 0, -30, -60, -90, -120, -150])
    inner = ellipse(56, 92, 10, 3, [180, 135, 90, 45, 0, -45, -90, -135])
    lm = np.concatenate([jaw, left_brow, right_brow, bridge, base, left_eye, right_eye, outer, inner])
    assert lm.shape == (68, 2)
    return lm.astype(np.float32)


@pytest.fixture(scope="module")
def lm():
    return synthetic_landmarks()


def centroid(mask: np.ndarray, level: int) -> np.ndarray:
    ys, xs = np.nonzero(mask == level)
    assert len(xs), f"level {level} absent"
    return np.array([xs.mean(), ys.mean()])


def test_tsav_exact_levels_and_no_antialiasing(lm):
    m = masks.tsav_mask(lm)
    assert m.shape == (112, 112) and m.dtype == np.uint8
    assert set(np.unique(m).tolist()) == TSAV_LEVELS


def test_tsav_parts_in_place(lm):
    m = masks.tsav_mask(lm)
    mouth, left_eye, right_eye = centroid(m, 255), centroid(m, 159), centroid(m, 127)
    assert mouth[1] > left_eye[1] + 20 and mouth[1] > right_eye[1] + 20
    assert left_eye[0] < right_eye[0]
    assert centroid(m, 223)[0] < centroid(m, 191)[0]  # left brow on the image left
    assert centroid(m, 31)[1] > mouth[1]  # chin below the mouth
    # Lines are 1 px: the nose bridge 28–30 (14 px tall, vertical) is one pixel wide.
    ys, xs = np.nonzero(m == 63)
    assert set(xs.tolist()) == {56} and ys.min() == 57 and ys.max() == 71
    # Closed contours: the eye's outline ends where it starts, its interior stays black.
    assert m[int(round(TEMPLATE_112[0, 1])), int(round(TEMPLATE_112[0, 0]))] == 0


def test_tsav_points_rounded_to_int(lm):
    whole = np.round(lm)
    np.testing.assert_array_equal(masks.tsav_mask(whole + 0.3), masks.tsav_mask(whole))
    np.testing.assert_array_equal(masks.tsav_mask(whole - 0.4), masks.tsav_mask(whole))


def test_mtmt_exact_levels(lm):
    m = masks.mtmt_mask(lm)
    assert m.shape == (112, 112) and m.dtype == np.uint8
    assert set(np.unique(m).tolist()) == MTMT_LEVELS


def test_mtmt_regions_and_order(lm):
    m = masks.mtmt_mask(lm)

    def at(x: float, y: float) -> int:
        return int(m[int(round(y)), int(round(x))])

    # Parts painted after the skin win inside the face.
    assert at(*TEMPLATE_112[0]) == masks.MTMT_EYES and at(*TEMPLATE_112[1]) == masks.MTMT_EYES
    assert at(56, 73) == masks.MTMT_NOSE
    assert at(38, 40) == masks.MTMT_BROWS and at(74, 40) == masks.MTMT_BROWS
    assert at(56, 87) == masks.MTMT_UPPER_LIP and at(56, 97) == masks.MTMT_LOWER_LIP
    assert at(56, 92) == masks.MTMT_SKIN  # the mouth opening between the inner lips
    assert at(25, 75) == masks.MTMT_SKIN  # cheek
    assert at(56, 30) == masks.MTMT_SKIN  # forehead above the brows
    assert at(1, 1) == 0 and at(110, 110) == 0 and at(56, 2) == 0  # background
    # Order: upper lip over skin, lower lip below the upper lip, eyes above the mouth.
    assert centroid(m, masks.MTMT_LOWER_LIP)[1] > centroid(m, masks.MTMT_UPPER_LIP)[1]
    assert centroid(m, masks.MTMT_EYES)[1] < centroid(m, masks.MTMT_UPPER_LIP)[1] - 20
    assert centroid(m, masks.MTMT_BROWS)[1] < centroid(m, masks.MTMT_EYES)[1]


def test_png_round_trip_is_lossless(lm):
    for m in (masks.tsav_mask(lm), masks.mtmt_mask(lm), masks.blank_mask()):
        data = masks.encode_png(m)
        assert isinstance(data, bytes) and data[:4] == b"\x89PNG"
        np.testing.assert_array_equal(masks.decode_png(data), m)
    with pytest.raises(ValueError):
        masks.encode_png(np.zeros((112, 112, 3), np.uint8))


def test_rejects_bad_landmarks():
    with pytest.raises(ValueError):
        masks.tsav_mask(np.zeros((5, 2)))
    with pytest.raises(ValueError):
        masks.mtmt_mask(np.zeros((68, 3)))


def test_masks_on_real_landmarks():
    """The astronaut photo, aligned: both masks keep their exact levels and sensible layout."""
    from skimage.data import astronaut

    from data.align import align_face
    from data.faces import DlibBackend

    rgb = astronaut()
    backend = DlibBackend()
    (det,) = backend.detect(rgb)
    lm = align_face(rgb, backend.landmarks(rgb, det.box)).landmarks
    tsav, mtmt = masks.tsav_mask(lm), masks.mtmt_mask(lm)
    # The template crop cuts this face's chin (jaw 6–10 at y ≈ 113–120), so no jaw line here.
    assert set(np.unique(tsav).tolist()) == TSAV_LEVELS - {masks.TSAV_JAW}
    assert set(np.unique(mtmt).tolist()) == MTMT_LEVELS
    assert centroid(tsav, 255)[1] > centroid(tsav, 159)[1]
    assert centroid(mtmt, masks.MTMT_UPPER_LIP)[1] > centroid(mtmt, masks.MTMT_EYES)[1]
