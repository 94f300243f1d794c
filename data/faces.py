"""Face detection, 68-point landmarks, and a tracker that follows faces through a video.

A backend is anything with ``detect(rgb) -> list[Detection]`` and
``landmarks(rgb, box) -> (68, 2) float32`` (iBUG-68 order, frame pixels). The only backend shipped
is dlib's: the HOG frontal detector (default) or the CNN/MMOD detector, and the 68-point shape
predictor. Their model files come inside the pip package ``face_recognition_models``; nothing is
downloaded.

Tracker design (``FaceTracker``):
- The full-frame detector runs every ``detect_every`` frames, and on any frame where a person slot
  is empty (track lost or never found). Detections are matched to live tracks by overlap with the
  box each track predicts, so the chosen face stays the same over time.
- In between, each face is *followed*: the shape predictor is fitted inside a box derived from the
  previous frame's landmarks, moved on by the last frame's motion. The box keeps the offset and
  scale relative to the 5 alignment points that the last detector box had, so the predictor always
  sees boxes framed like the detector's (the box convention it was trained on).
- A followed face is checked twice: geometry (the landmark frame may not jump by more than half a
  face or change scale by more than 30 % between frames) and appearance (normalised
  cross-correlation of a 32×32 grey aligned patch with the previous frame's patch; a scene cut or
  the face leaving drops it). When either check fails, the detector is run on a small crop around
  the face; if it finds nothing the track is lost, and a full-frame detection runs on the same frame.
- A live track the scheduled detector misses (profile, blur) is kept on the follower alone, its
  confidence decayed by ``miss_decay`` per miss, and dropped at the first scheduled detection after
  ``max_unconfirmed`` frames without a detector confirming it.
- ``n_people=1``: a new track starts on the most prominent face (area, discounted by distance from
  the image centre). ``n_people=2`` (``_left``/``_right`` videos): slot 0 is the left person, slot
  1 the right one; new faces fill an empty slot only on its side of the other person (or of the
  image centre when both are empty), live slots keep their face by overlap.
- Confidence in [0, 1]: the detector score squashed by a logistic (on detection frames), times the
  appearance similarity on followed frames.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from data.align import estimate_similarity, five_points, template

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in frame pixels

MODELS_PACKAGE = "face_recognition_models"
LANDMARKS_68 = "shape_predictor_68_face_landmarks.dat"
MMOD_DETECTOR = "mmod_human_face_detector.dat"


@dataclass(frozen=True)
class Detection:
    box: Box
    score: float  # in [0, 1], higher = more face-like
    raw_score: float = 0.0  # the detector's own score (dlib: SVM margin / MMOD confidence)


@dataclass(frozen=True)
class FaceResult:
    landmarks: np.ndarray  # (68, 2) float32, frame pixels, iBUG-68 order
    box: Box
    confidence: float  # in [0, 1]
    detected: bool  # True when a detector produced this frame's box (not only the follower)


@runtime_checkable
class FaceBackend(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 frame, best score first."""
        ...

    def landmarks(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        """(68, 2) float32 iBUG-68 landmarks of the face framed by ``box``."""
        ...


# ------------------------------------------------------------------------------------------------
# dlib backend


def models_dir() -> Path:
    """Folder of the dlib model files shipped by the ``face_recognition_models`` pip package."""
    # find_spec, not import: the package's __init__ needs pkg_resources, which may be absent.
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"the pip package '{MODELS_PACKAGE}' (dlib face models) is not installed: "
            "pip install face-recognition-models"
        )
    folder = Path(spec.submodule_search_locations[0]) / "models"
    if not (folder / LANDMARKS_68).is_file():
        raise RuntimeError(f"{LANDMARKS_68} not found in {folder}; reinstall {MODELS_PACKAGE}")
    return folder


def squash_score(raw: float, gain: float = 2.0) -> float:
    """Detector margin → (0, 1). dlib margins are ~0 at the threshold and ~1–3 for clear faces."""
    return 1.0 / (1.0 + math.exp(-gain * raw))


def downscale_factor(shape: tuple[int, ...], max_side: int | None) -> float:
    """Factor (≤ 1) that brings the long side of a frame down to ``max_side``."""
    if not max_side:
        return 1.0
    return min(1.0, max_side / max(shape[0], shape[1]))


class DlibBackend:
    """dlib HOG (default) or CNN/MMOD face detector + 68-point shape predictor, on the CPU.

    Frames whose long side exceeds ``max_side`` are shrunk before detection (boxes are mapped
    back); ``upsample`` > 0 runs dlib's pyramid upsampling to find faces under ~80 px.
    """

    def __init__(
        self,
        detector: str = "hog",
        upsample: int = 0,
        max_side: int | None = 640,
        threshold: float = 0.0,
        model_dir: str | Path | None = None,
    ) -> None:
        import dlib  # local import: only this backend needs it

        folder = Path(model_dir) if model_dir else models_dir()
        if detector == "hog":
            self._hog = dlib.get_frontal_face_detector()
            self._cnn = None
        elif detector == "cnn":
            self._hog = None
            self._cnn = dlib.cnn_face_detection_model_v1(str(folder / MMOD_DETECTOR))
        else:
            raise ValueError(f"detector must be 'hog' or 'cnn', got {detector!r}")
        self._predictor = dlib.shape_predictor(str(folder / LANDMARKS_68))
        self._rectangle = dlib.rectangle
        self.detector = detector
        self.upsample = upsample
        self.max_side = max_side
        self.threshold = threshold

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        scale = downscale_factor(rgb.shape, self.max_side)
        small = rgb
        if scale < 1.0:
            small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        found = self._run_hog(small) if self._hog is not None else self._run_cnn(small)
        dets = [
            Detection((r.left() / scale, r.top() / scale, (r.right() + 1) / scale, (r.bottom() + 1) / scale),
                      squash_score(s), s)
            for r, s in found
        ]
        return sorted(dets, key=lambda d: -d.raw_score)

    def _run_hog(self, rgb: np.ndarray) -> list:
        # HOG on grey: ~25 % faster than on RGB, same boxes in our checks.
        grey = np.ascontiguousarray(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        rects, scores, _ = self._hog.run(grey, self.upsample, self.threshold)
        return list(zip(rects, scores))

    def _run_cnn(self, rgb: np.ndarray) -> list:
        found = self._cnn(np.ascontiguousarray(rgb), self.upsample)
        return [(m.rect, m.confidence) for m in found if m.confidence >= self.threshold]

    def landmarks(self, rgb: np.ndarray, box: Box) -> np.ndarray:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        # dlib rectangles are inclusive on the right/bottom edge.
        shape = self._predictor(np.ascontiguousarray(rgb), self._rectangle(x0, y0, x1 - 1, y1 - 1))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


# ------------------------------------------------------------------------------------------------
# box helpers


def box_area(b: Box) -> float:
    return max(0.0, b[2] - b[0]) * max(0.0, b[3] - b[1])


def box_iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def box_centre(b: Box) -> tuple[float, float]:
    return (b[0] + b[2]) / 2, (b[1] + b[3]) / 2


def visible_fraction(b: Box, shape: tuple[int, ...]) -> float:
    """Share of the box that lies inside the frame."""
    h, w = shape[:2]
    inside = box_area((max(b[0], 0), max(b[1], 0), min(b[2], w), min(b[3], h)))
    return inside / box_area(b) if box_area(b) > 0 else 0.0


def prominence(b: Box, shape: tuple[int, ...]) -> float:
    """Area discounted by distance from the image centre: picks the main face of a video."""
    h, w = shape[:2]
    cx, cy = box_centre(b)
    off = math.hypot(cx - w / 2, cy - h / 2) / math.hypot(w / 2, h / 2)
    return box_area(b) * (1.0 - 0.5 * min(off, 1.0))


def landmark_frame(lm: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and RMS radius of the 5 alignment points: a reference frame insensitive to the jaw."""
    p5 = five_points(lm)
    centre = p5.mean(0)
    radius = float(np.sqrt(((p5 - centre) ** 2).sum(1).mean()))
    return centre, max(radius, 1e-6)


def box_in_frame(box: Box, lm: np.ndarray) -> np.ndarray:
    """``box`` expressed relative to the landmark frame of ``lm`` (4 numbers)."""
    (cx, cy), r = landmark_frame(lm)
    return np.array([(box[0] - cx) / r, (box[1] - cy) / r, (box[2] - cx) / r, (box[3] - cy) / r])


def box_from_frame(rel: np.ndarray, lm: np.ndarray) -> Box:
    """Inverse of ``box_in_frame``: the box with the same relative framing around ``lm``."""
    (cx, cy), r = landmark_frame(lm)
    return (cx + rel[0] * r, cy + rel[1] * r, cx + rel[2] * r, cy + rel[3] * r)


# ------------------------------------------------------------------------------------------------
# appearance check

PATCH_SIZE = 32


def appearance_patch(rgb: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """A 32×32 grey aligned face, zero-mean and unit-norm, for normalised cross-correlation."""
    m = estimate_similarity(five_points(lm), template(PATCH_SIZE))
    patch = cv2.warpAffine(rgb, m, (PATCH_SIZE, PATCH_SIZE), flags=cv2.INTER_LINEAR)
    grey = patch.astype(np.float32).mean(2)
    grey -= grey.mean()
    norm = float(np.linalg.norm(grey))
    return grey / norm if norm > 0 else grey


def patch_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """NCC of two ``appearance_patch`` outputs, clipped to [0, 1]."""
    return float(np.clip((a * b).sum(), 0.0, 1.0))


# ------------------------------------------------------------------------------------------------
# tracker


@dataclass(frozen=True)
class _Track:
    landmarks: np.ndarray
    box: Box
    rel_box: np.ndarray  # detector box framing relative to the landmarks, see box_in_frame
    patch: np.ndarray
    velocity: np.ndarray  # landmark-frame centre motion over the last frame, px
    det_score: float  # score of the last detection, decayed on missed re-detections
    confidence: float
    detected: bool
    unconfirmed: int  # frames since a detector last confirmed this face

    def result(self) -> FaceResult:
        return FaceResult(self.landmarks, self.box, self.confidence, self.detected)


class FaceTracker:
    """Follows ``n_people`` faces through consecutive frames of one video (see module docstring).

    ``update(rgb)`` returns one ``FaceResult | None`` per person slot (left, right for 2).
    Counters: ``n_frames``, ``n_detector_runs`` (full frame), ``n_crop_detector_runs``, and
    ``detector_runs`` (both). One tracker per video: call ``reset()`` before reusing it.
    """

    def __init__(
        self,
        backend: FaceBackend,
        n_people: int = 1,
        detect_every: int = 5,
        max_unconfirmed: int = 15,
        min_iou: float = 0.3,
        min_similarity: float = 0.5,
        miss_decay: float = 0.8,
    ) -> None:
        if n_people not in (1, 2):
            raise ValueError(f"n_people must be 1 or 2, got {n_people}")
        if detect_every < 1:
            raise ValueError("detect_every must be >= 1")
        self.backend = backend
        self.n_people = n_people
        self.detect_every = detect_every
        self.max_unconfirmed = max_unconfirmed
        self.min_iou = min_iou
        self.min_similarity = min_similarity
        self.miss_decay = miss_decay
        self.reset()

    def reset(self) -> None:
        """Forget all tracks and counters (call between videos)."""
        self._tracks: list[_Track | None] = [None] * self.n_people
        self.n_frames = 0
        self.n_detector_runs = 0
        self.n_crop_detector_runs = 0

    @property
    def detector_runs(self) -> int:
        """All detector calls, full frame and crop."""
        return self.n_detector_runs + self.n_crop_detector_runs

    def update(self, rgb: np.ndarray) -> list[FaceResult | None]:
        rgb = np.ascontiguousarray(rgb)
        scheduled = self.n_frames % self.detect_every == 0
        self.n_frames += 1
        if scheduled:
            self._tracks = self._refresh(rgb)
        else:
            self._tracks = [self._follow(rgb, t) if t is not None else None for t in self._tracks]
            if any(t is None for t in self._tracks):
                self._tracks = self._fill_empty(rgb)
        self._tracks = self._drop_duplicates(self._tracks)
        return [t.result() if t is not None else None for t in self._tracks]

    def _drop_duplicates(self, tracks: list[_Track | None]) -> list[_Track | None]:
        """Two slots that converged onto one face keep it in the more confident slot only."""
        if self.n_people == 2 and tracks[0] is not None and tracks[1] is not None:
            if box_iou(tracks[0].box, tracks[1].box) >= 0.5:
                weaker = 0 if tracks[0].confidence < tracks[1].confidence else 1
                tracks = list(tracks)
                tracks[weaker] = None
        return tracks

    # -- per-track steps -------------------------------------------------------------------------

    def _start(self, rgb: np.ndarray, det: Detection, prev: _Track | None = None) -> _Track:
        """A track anchored on a detection; ``prev`` (same face, last frame) supplies the velocity."""
        lm = self.backend.landmarks(rgb, det.box)
        velocity = np.zeros(2)
        if prev is not None:
            velocity = landmark_frame(lm)[0] - landmark_frame(prev.landmarks)[0]
        return _Track(lm, det.box, box_in_frame(det.box, lm), appearance_patch(rgb, lm), velocity,
                      det.score, det.score, True, 0)

    def _predicted_box(self, track: _Track) -> Box:
        """The last frame's box framing, moved on at constant velocity."""
        x0, y0, x1, y1 = box_from_frame(track.rel_box, track.landmarks)
        dx, dy = track.velocity
        return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)

    def _follow(self, rgb: np.ndarray, track: _Track) -> _Track | None:
        """Refit landmarks in the box the previous landmarks predict; re-detect locally if in doubt."""
        box = self._predicted_box(track)
        if visible_fraction(box, rgb.shape) < 0.5:
            return None  # left the frame
        lm = self.backend.landmarks(rgb, box)
        patch = appearance_patch(rgb, lm)
        similarity = patch_similarity(patch, track.patch)
        if self._plausible_motion(track.landmarks, lm) and similarity >= self.min_similarity:
            velocity = landmark_frame(lm)[0] - landmark_frame(track.landmarks)[0]
            return replace(track, landmarks=lm, box=box_from_frame(track.rel_box, lm), patch=patch,
                           velocity=velocity, confidence=track.det_score * similarity, detected=False,
                           unconfirmed=track.unconfirmed + 1)
        det = self._detect_near(rgb, box)
        return self._start(rgb, det, track) if det is not None else None

    @staticmethod
    def _plausible_motion(prev: np.ndarray, cur: np.ndarray) -> bool:
        (c0, r0), (c1, r1) = landmark_frame(prev), landmark_frame(cur)
        # r0 is ~40 % of the face width, so this allows a jump of about half a face per frame.
        return float(np.linalg.norm(c1 - c0)) <= 1.2 * r0 and 1 / 1.3 <= r1 / r0 <= 1.3

    def _detect_near(self, rgb: np.ndarray, box: Box, target_side: float = 100.0) -> Detection | None:
        """Run the detector on a crop of twice the box, scaled so the face is ~100 px."""
        self.n_crop_detector_runs += 1
        h, w = rgb.shape[:2]
        cx, cy = box_centre(box)
        side = max(box[2] - box[0], box[3] - box[1])
        x0, y0 = max(int(cx - side), 0), max(int(cy - side), 0)
        x1, y1 = min(int(cx + side) + 1, w), min(int(cy + side) + 1, h)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        scale = target_side / side
        crop = cv2.resize(rgb[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        dets = [
            replace(d, box=(d.box[0] / scale + x0, d.box[1] / scale + y0,
                            d.box[2] / scale + x0, d.box[3] / scale + y0))
            for d in self.backend.detect(crop)
        ]
        best = max(dets, key=lambda d: box_iou(d.box, box), default=None)
        return best if best is not None and box_iou(best.box, box) >= self.min_iou else None

    # -- full-frame detection and slot assignment --------------------------------------------------

    def _detect(self, rgb: np.ndarray) -> list[Detection]:
        self.n_detector_runs += 1
        return self.backend.detect(rgb)

    def _refresh(self, rgb: np.ndarray) -> list[_Track | None]:
        """Scheduled detection: re-anchor every live track, start tracks in empty slots."""
        dets = self._detect(rgb)
        predicted = [self._predicted_box(t) if t is not None else None for t in self._tracks]
        matched = self._match(dets, predicted)
        tracks: list[_Track | None] = []
        for slot, track in enumerate(self._tracks):
            if matched[slot] is not None:
                tracks.append(self._start(rgb, matched[slot], track))
            elif track is not None and track.unconfirmed < self.max_unconfirmed:
                kept = self._follow(rgb, replace(track, det_score=track.det_score * self.miss_decay))
                tracks.append(kept)
            else:
                tracks.append(None)
        used = {id(d) for d in matched if d is not None}
        return self._assign_new(rgb, [d for d in dets if id(d) not in used], tracks)

    def _fill_empty(self, rgb: np.ndarray) -> list[_Track | None]:
        """Unscheduled detection because a slot is empty; live tracks are left as they are."""
        return self._assign_new(rgb, self._detect(rgb), list(self._tracks))

    def _match(self, dets: list[Detection], predicted: list[Box | None]) -> list[Detection | None]:
        """Greedy highest-overlap matching of detections to the slots' predicted boxes."""
        pairs = sorted(
            ((box_iou(d.box, p), slot, i) for slot, p in enumerate(predicted) if p is not None
             for i, d in enumerate(dets)),
            reverse=True,
        )
        matched: list[Detection | None] = [None] * len(predicted)
        taken: set[int] = set()
        for iou, slot, i in pairs:
            if iou < self.min_iou:
                break
            if matched[slot] is None and i not in taken:
                matched[slot] = dets[i]
                taken.add(i)
        return matched

    def _assign_new(self, rgb: np.ndarray, dets: list[Detection], tracks: list[_Track | None]) -> list:
        """Start tracks in the empty slots from unclaimed detections (most prominent first)."""
        live = [t.box for t in tracks if t is not None]
        dets = [d for d in dets if all(box_iou(d.box, b) < self.min_iou for b in live)]
        if len(live) == len(tracks) or not dets:
            return tracks
        dets = sorted(dets, key=lambda d: -prominence(d.box, rgb.shape))
        if self.n_people == 1:
            return [self._start(rgb, dets[0])]
        left, right = tracks
        if left is None and right is None:
            if len(dets) >= 2:
                a, b = sorted(dets[:2], key=lambda d: box_centre(d.box)[0])
                return [self._start(rgb, a), self._start(rgb, b)]
            # One face for two empty slots: the image half decides whose it is.
            det = dets[0]
            on_left = box_centre(det.box)[0] < rgb.shape[1] / 2
            return [self._start(rgb, det), None] if on_left else [None, self._start(rgb, det)]
        # One slot live: the new face must lie on the empty slot's side of the live one.
        anchor = box_centre((left or right).box)[0]
        sign = -1.0 if left is None else 1.0
        det = next((d for d in dets if sign * (box_centre(d.box)[0] - anchor) > 0), None)
        if det is None:
            return tracks
        return [self._start(rgb, det), right] if left is None else [left, self._start(rgb, det)]
