"""Fixed constants of the mini Aff-Wild2 and its label → signal mapping (see the package docstring).

Landmarks and AU points of the source photo, the ArcFace crop template, the face cut-out, the colour,
tone, gain and jitter each label drives, the expression/AU priors of the label drawing and the folders
each annotation edition is written to.
"""

from __future__ import annotations

import numpy as np

FPS = 30
AU_NAMES_ALL = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU20", "AU23", "AU24",
                "AU25", "AU26")

# 5 landmarks of the astronaut photo (skimage.data.astronaut(), 512x512), found once with dlib's frontal
# detector + the 68-point predictor of face_recognition_models: eye centres = mean of points 36-41 and
# 42-47, nose tip = point 30, mouth corners = points 48 and 54. Order: image-left eye, image-right eye,
# nose tip, image-left mouth corner, image-right mouth corner (the ArcFace template's order).
ASTRONAUT_LANDMARKS_5 = ((203.2, 101.5), (246.5, 104.2), (225.0, 127.0), (201.0, 139.0), (246.0, 141.0))
ARCFACE_TEMPLATE_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655),
                        (70.7299, 92.2041))
CROP_SIZE = 112

# Where each AU's dot goes in the astronaut photo, placed from the same dlib 68 points (brows 17-26,
# eyes 36-47, mouth 48-67, jaw 8): one point on the midline or one per side.
AU_POINTS = {
    "AU1": ((214, 86), (238, 87)),    # inner brow ends, raised
    "AU2": ((190, 87), (259, 86)),    # outer brow ends, raised
    "AU4": ((226, 93),),              # between the brows
    "AU6": ((195, 119), (257, 121)),  # cheeks below the outer eye corners
    "AU7": ((204, 109), (245, 111)),  # lower eyelids
    "AU10": ((224, 135),),            # above the upper lip
    "AU12": ((196, 135), (251, 136)),  # lip corners, pulled up and out
    "AU15": ((201, 147), (246, 149)),  # below the lip corners
    "AU20": ((189, 142), (258, 144)),  # beside the mouth, stretched sideways
    "AU23": ((213, 141), (235, 141)),  # upper lip
    "AU24": ((213, 153), (233, 153)),  # lower lip
    "AU25": ((223, 147),),            # between the lips
    "AU26": ((222, 162),),            # chin, just below the lower lip (the crop ends at the chin)
}
AU_DOT_RADIUS = 2.5
AU_DOT_RGB = (15, 15, 15)

# The cut-out: a region of the photo and a soft-edged ellipse in it (hair and collar mostly left out).
FACE_REGION_XYWH = (166, 48, 120, 146)
FACE_ELLIPSE_CENTER = (226.0, 120.0)
FACE_ELLIPSE_AXES = (50.0, 64.0)
FACE_EDGE_SIGMA = 3.0

# Expression → hue and pitch; valence → gain; arousal → jitter and loudness.
EXPR_HUES_DEG = tuple(45.0 * k for k in range(8))
TINT_CHROMA = 0.3         # chroma of the tint relative to luminance (YCbCr units)
TINT_KEEP_ORIGINAL = 0.3  # share of the photo's own colour kept under the tint, for a natural look
LUMA_MEAN, LUMA_STD = 120.0, 38.0  # the face's luminance is standardised to this before the gain
EXPR_TONE_HZ = tuple(round(220.0 * 2 ** (3 * k / 12), 2) for k in range(8))


def valence_gain(v: np.ndarray | float) -> np.ndarray:
    """Face luminance multiplier for valence v (0.45 at -1, 0.85 at +1)."""
    return 0.45 + 0.2 * (np.asarray(v, np.float64) + 1.0)


def arousal_amplitude(a: np.ndarray | float) -> np.ndarray:
    """Tone amplitude (full scale 1) for arousal a."""
    return 0.03 + 0.13 * (np.asarray(a, np.float64) + 1.0)


def arousal_jitter(a: np.ndarray | float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame jitter std of the face for arousal a: (translation px, rotation degrees)."""
    a = np.asarray(a, np.float64)
    return scale * (0.2 + 1.8 * (a + 1.0)), 0.5 * (a + 1.0)


def valence_harmonic(v: np.ndarray | float) -> np.ndarray:
    """Relative amplitude of the tone's 2nd harmonic for valence v."""
    return 0.125 * (np.asarray(v, np.float64) + 1.0)


# Loose FACS prototypes: an AU in the current expression's set is switched on more often.
EXPR_AU_AFFINITY = {
    0: (),
    1: ("AU4", "AU7", "AU23", "AU24"),
    2: ("AU4", "AU10", "AU15"),
    3: ("AU1", "AU2", "AU4", "AU20", "AU25"),
    4: ("AU6", "AU12", "AU25"),
    5: ("AU1", "AU4", "AU15"),
    6: ("AU1", "AU2", "AU25", "AU26"),
    7: ("AU25",),
}
EXPR_PRIOR = (0.2, 0.1, 0.08, 0.08, 0.18, 0.12, 0.12, 0.12)

EDITION_FOLDERS = {
    # edition written → (task folder index in TASK_DIRS, train folder name); its classes and AUs: tasks.EDITIONS
    "abaw2020": (0, "Training_Set"),
    "abaw2021": (0, "Train_Set"),
    "abaw3": (1, "Train_Set"),
}
MTL_EVERY = 3  # the s-Aff-Wild2 file lists every 3rd frame that has a face
