"""dlib backend and FaceTracker on the real astronaut photo (public domain, ships with scikit-image)."""

import importlib.util

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from data import faces

H, W = 360, 640
BACKGROUND = 100


@pytest.fixture(scope="module")
def backend():
    return faces.DlibBackend()


@pytest.fixture(scope="module")
def face():
    """The astronaut's head and shoulders, 260×210."""
    return np.ascontiguousarray(astronaut()[40:300, 120:330])


def compose(*placed: tuple[np.ndarray, int, int]) -> np.ndarray:
    """A 640×360 frame with each (image, x, y) pasted on a flat grey background."""
    frame = np.full((H, W, 3), BACKGROUND, np.uint8)
    for img, x, y in placed:
        frame[y : y + img.shape[0], x : x + img.shape[1]] = img
    return frame


def centre_x(r: faces.FaceResult) -> float:
    return (r.box[0] + r.box[2]) / 2


def test_models_dir_has_the_files():
    folder = faces.models_dir()
    assert (folder / faces.LANDMARKS_68).is_file() and (folder / faces.MMOD_DETECTOR).is_file()


def test_clear_error_without_models_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == faces.MODELS_PACKAGE else real(name, *a))
    with pytest.raises(RuntimeError, match="face-recognition-models"):
        faces.models_dir()


def test_backend_satisfies_protocol(backend):
    assert isinstance(backend, faces.FaceBackend)


def test_astronaut_one_face_and_landmarks(backend):
    rgb = astronaut()
    dets = backend.detect(rgb)
    assert len(dets) == 1
    (det,) = dets
    assert 0.5 < det.score < 1.0
    lm = backend.landmarks(rgb, det.box)
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    x0, y0, x1, y1 = det.box
    margin = 0.15 * (x1 - x0)  # the jaw may poke slightly out of dlib's tight box
    assert (lm[:, 0] > x0 - margin).all() and (lm[:, 0] < x1 + margin).all()
    assert (lm[:, 1] > y0 - margin).all() and (lm[:, 1] < y1 + margin).all()
    eyes_y, mouth_y = lm[36:48, 1].mean(), lm[48:68, 1].mean()
    assert eyes_y < mouth_y - 0.2 * (y1 - y0)
    assert lm[36:42, 0].mean() < lm[42:48, 0].mean()  # iBUG 36–41 is the image-left eye


def test_big_frame_is_shrunk_and_boxes_mapped_back(backend):
    rgb = astronaut()
    (small,) = backend.detect(rgb)
    big = cv2.resize(rgb, None, fx=2, fy=2, interpolation=cv2.INTER_LINEAR)  # 1024 px, shrunk to 640
    (det,) = backend.detect(big)
    side = small.box[2] - small.box[0]
    np.testing.assert_allclose(det.box, np.array(small.box) * 2, atol=0.3 * side)


def test_no_face_in_noise(backend):
    noise = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert backend.detect(noise) == []
    tracker = faces.FaceTracker(backend)
    assert tracker.update(noise) == [None]
    assert tracker.n_detector_runs == 1


def test_detector_runs_every_k_frames_on_a_moving_face(backend, face):
    ref = backend.landmarks(compose((face, 100, 50)), backend.detect(compose((face, 100, 50)))[0].box)
    tracker = faces.FaceTracker(backend, n_people=1, detect_every=5)
    for t in range(20):
        dx, dy = 4 * t, t // 2
        (r,) = tracker.update(compose((face, 100 + dx, 50 + dy)))
        assert r is not None and 0 < r.confidence <= 1
        assert r.detected == (t % 5 == 0)
        # The landmarks move with the face (dlib's own jitter is a pixel or two).
        assert np.abs(r.landmarks - (ref + [dx, dy])).mean() < 3.0
    assert tracker.n_frames == 20 and tracker.n_detector_runs == 4 and tracker.n_crop_detector_runs == 0


def test_scene_cut_drops_the_face_at_once(backend, face):
    tracker = faces.FaceTracker(backend, detect_every=10)
    assert tracker.update(compose((face, 200, 50)))[0] is not None
    assert tracker.update(compose((face, 203, 50)))[0] is not None
    noise = np.random.default_rng(1).integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert tracker.update(noise) == [None]  # not a scheduled detection frame
    (back,) = tracker.update(compose((face, 300, 60)))
    assert back is not None and back.detected  # an empty slot triggers detection
    assert abs(centre_x(back) - (300 + 105)) < 30


def test_one_person_keeps_the_face_it_follows(backend, face):
    smaller = cv2.resize(face, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_AREA)
    tracker = faces.FaceTracker(backend, n_people=1, detect_every=2)
    (r,) = tracker.update(compose((smaller, 380, 60)))
    first = centre_x(r)
    for t in range(1, 6):  # a bigger face enters on the left: stay on the one we have
        (r,) = tracker.update(compose((face, 20, 50), (smaller, 380 + 2 * t, 60)))
        assert abs(centre_x(r) - first - 2 * t) < 12
    fresh = faces.FaceTracker(backend, n_people=1)
    (r,) = fresh.update(compose((face, 20, 50), (smaller, 400, 60)))
    assert centre_x(r) < W / 2  # a new track starts on the most prominent face


def test_two_people_stay_left_and_right(backend, face):
    flipped = np.ascontiguousarray(face[:, ::-1])
    tracker = faces.FaceTracker(backend, n_people=2, detect_every=3)
    for t in range(8):
        xa, xb = 40 + 6 * t, 390 - 5 * t  # they move towards each other
        left, right = tracker.update(compose((face, xa, 50 + t), (flipped, xb, 80 - 2 * t)))
        assert left is not None and right is not None
        assert abs(centre_x(left) - (xa + 105)) < 25 and abs(centre_x(right) - (xb + 105)) < 25
    assert tracker.n_detector_runs == 3


def test_two_people_single_face_goes_to_its_side(backend, face):
    tracker = faces.FaceTracker(backend, n_people=2, detect_every=5)
    left, right = tracker.update(compose((face, 400, 50)))
    assert left is None and right is not None
    # The missing left person appears: it fills the left slot, the right one is kept.
    left, right = tracker.update(compose((face, 20, 50), (face, 402, 50)))
    assert left is not None and right is not None and centre_x(left) < centre_x(right)
    assert abs(centre_x(right) - (402 + 105)) < 25


def test_sudden_jump_is_redetected_on_the_same_frame(backend, face):
    tracker = faces.FaceTracker(backend, detect_every=10)
    tracker.update(compose((face, 20, 50)))
    (r,) = tracker.update(compose((face, 400, 60)))  # teleports between scheduled detections
    assert r is not None and r.detected and abs(centre_x(r) - (400 + 105)) < 25
    assert tracker.n_crop_detector_runs == 1 and tracker.n_detector_runs == 2


def test_cnn_detector_option(face):
    cnn = faces.DlibBackend("cnn")
    (det,) = cnn.detect(face)
    lm = cnn.landmarks(face, det.box)
    assert lm[36:48, 1].mean() < lm[48:68, 1].mean()
    with pytest.raises(ValueError):
        faces.DlibBackend("retina")
