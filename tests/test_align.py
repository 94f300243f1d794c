"""5-point similarity alignment: the estimator itself, then on the real astronaut photo."""

import cv2
import numpy as np
import pytest

from data import align


def random_similarity(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(-np.pi, np.pi)
    scale = rng.uniform(0.3, 3.0)
    c, s = np.cos(angle), np.sin(angle)
    tx, ty = rng.uniform(-50, 50, 2)
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])


def test_template_constants():
    assert align.TEMPLATE_112.shape == (5, 2)
    # "left" is the image left: the left eye and mouth corner have the smaller x.
    assert align.TEMPLATE_112[0, 0] < align.TEMPLATE_112[1, 0]
    assert align.TEMPLATE_112[3, 0] < align.TEMPLATE_112[4, 0]
    np.testing.assert_allclose(align.template(224), align.TEMPLATE_112 * 2)


def test_five_points_from_68():
    lm = np.zeros((68, 2), np.float32)
    lm[36:42] = [10, 20]
    lm[42:48] = [30, 20]
    lm[30] = [20, 30]
    lm[48] = [12, 40]
    lm[54] = [28, 40]
    np.testing.assert_allclose(align.five_points(lm), [[10, 20], [30, 20], [20, 30], [12, 40], [28, 40]])
    with pytest.raises(ValueError):
        align.five_points(np.zeros((5, 2)))


@pytest.mark.parametrize("seed", range(5))
def test_recovers_known_similarity_exactly(seed):
    rng = np.random.default_rng(seed)
    m = random_similarity(rng)
    src = rng.uniform(0, 200, (5, 2))
    dst = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(align.estimate_similarity(src, dst), m, atol=1e-9)


def test_never_returns_a_reflection():
    src = np.array([[0, 0], [10, 0], [0, 10], [7, 7]], float)
    mirrored = src * [-1, 1]
    m = align.estimate_similarity(src, mirrored)
    assert np.linalg.det(m[:, :2]) > 0


@pytest.mark.parametrize("seed", range(5))
def test_matches_opencv_on_noisy_points(seed):
    rng = np.random.default_rng(100 + seed)
    m = random_similarity(rng)
    src = rng.uniform(0, 200, (5, 2))
    dst = src @ m[:, :2].T + m[:, 2] + rng.normal(0, 2.0, (5, 2))
    ours = align.estimate_similarity(src, dst)
    # A huge RANSAC threshold keeps every point an inlier; OpenCV then refines by least squares.
    cv, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=1e6,
                                              refineIters=100)
    assert inliers.all()
    pts = rng.uniform(0, 200, (20, 2))
    np.testing.assert_allclose(align.transform_points(pts, ours), align.transform_points(pts, cv), atol=0.05)


def test_transform_points_and_warp_agree():
    """A bright dot at a transformed position is where the warp puts it."""
    img = np.zeros((200, 300, 3), np.uint8)
    img[120:123, 80:83] = 255
    m = align.similarity_to_template(align.TEMPLATE_112 * 1.7 + [40, 20])
    crop = align.warp_face(img, m)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    x, y = align.transform_points([[81, 121]], m)[0]
    ys, xs = np.nonzero(crop[..., 0] > 60)
    assert abs(xs.mean() - x) < 1 and abs(ys.mean() - y) < 1


def test_border_is_black():
    img = np.full((100, 100, 3), 200, np.uint8)
    m = np.array([[1.0, 0, 60], [0, 1.0, 60]])  # the image fills only the crop's lower right corner
    crop = align.warp_face(img, m)
    assert (crop[:50, :50] == 0).all() and (crop[70:, 70:] == 200).all()


@pytest.fixture(scope="module")
def backend():
    from data.faces import DlibBackend

    return DlibBackend()


@pytest.mark.parametrize("flip", [False, True])
def test_astronaut_aligns_to_template(backend, flip):
    from skimage.data import astronaut

    rgb = astronaut()
    if flip:
        rgb = np.ascontiguousarray(rgb[:, ::-1])
    (det,) = backend.detect(rgb)
    lm = backend.landmarks(rgb, det.box)
    face = align.align_face(rgb, lm)
    assert face.image.shape == (112, 112, 3) and face.landmarks.dtype == np.float32
    err = np.linalg.norm(align.five_points(face.landmarks) - align.TEMPLATE_112, axis=1)
    # A similarity cannot absorb this face's own proportions (her mouth is wider than the
    # template's): eyes and nose land within ~4 px, mouth corners within ~7 px.
    assert err[:3].max() < 4.5 and err.max() < 7.5
    # The crop holds the face where the matrix says: landmarks refitted on it agree.
    refit = backend.landmarks(face.image, align.template_face_box())
    assert np.abs(refit - face.landmarks).mean() < 1.5
