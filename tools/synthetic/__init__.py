"""A mini Aff-Wild2, generated offline: videos, audio, labels in every layout, crops and ground truth.

``python -m tools.synthetic --out DIR --seed 0`` writes (≈ 12 videos, < 1 min on 2 CPU cores)::

    DIR/videos/batch1/*.mp4|*.avi, DIR/videos/batch2/...
    DIR/annotations/abaw2020/{VA_Set,EXPR_Set,AU_Set}/{Training_Set,Validation_Set}/<track>.txt  (7 EXPR, 8 AU)
    DIR/annotations/abaw2021/{VA_Set,EXPR_Set,AU_Set}/{Train_Set,Validation_Set}/<track>.txt     (7 EXPR, 12 AU)
    DIR/annotations/abaw3/{VA_Estimation_Challenge,EXPR_Classification_Challenge,AU_Detection_Challenge}/
        {Train_Set,Validation_Set}/<track>.txt                                                  (8 EXPR, 12 AU)
    DIR/annotations/mtl/{training,validation}_set_annotations.txt     (s-Aff-Wild2, every 3rd face frame)
    DIR/test_sets/{VA,EXPR,AU,MTL}_test_set.txt                       (test track names, one per line)
    DIR/cropped_aligned/<track>/%05d.jpg       112x112 ArcFace-template crops, 1-based, no file when no face
    DIR/truth/<track>.npy                      float32 (n_frames, 5, 2): true 5 landmarks in frame pixels
                                               (x, y; eyes, nose tip, mouth corners; NaN when no face)
    DIR/meta.json                              seed, mapping constants, per-video facts (``video_meta``)

With ``--lsd`` (opt-in; without it the output is byte for byte the same) it also writes an LSD set in the
layout of the ABAW4 learning-from-synthetic-data track (read by ``data.lsd``; module ``lsd``)::

    DIR/lsd/train/<CLASS>/%05d.jpg             "synthetic": identity 0 only, plain/gradient backgrounds, a
                                               magenta cast, blur (sigma 1 px), JPEG quality 30; --lsd-per-class
    DIR/lsd/val/<CLASS>/<track>_<frame5>.jpg   "real": byte copies of crops labelled 1-6 (abaw2021 EXPR) of
                                               the validation tracks (training tracks top up a short class)
    DIR/lsd/meta.json                          seed, counts per class and split, style parameters

<CLASS> is ANGRE, DISGUST, FEAR, HAPPINESS, SADNESS, SURPRISE: upper case, and the anger folder misspelt
(first three letters kept) as in the official release, so readers must match folders by prefix. On a DIR
that already holds the dataset of the same seed and ``--quick``, ``--lsd`` renders no video and only adds
DIR/lsd; an existing DIR/lsd is left alone (a complete one of these settings: nothing to do; else refused).

With ``--unlabelled-faces N`` (opt-in, default 0; without it the output is byte for byte the same) it also
writes a pool of faces without labels, for semi-supervised learning (module ``unlabelled``)::

    DIR/unlabelled_faces/%05d.jpg              N aligned 112x112 faces (00000.jpg …) like the videos' crops:
                                               both identities, class from the EXPR prior, AUs drawn given
                                               it, video backgrounds, random pose, JPEG quality 95
    DIR/unlabelled_faces_truth.json            hidden truth, outside the image folder: per file its class
                                               (0-7, Other = 7), valence, AUs, identity; seed, n, generator

Face i comes from its own stream ``rng_for(seed, 2000, i)``. Like ``--lsd``, on a DIR that holds the dataset
of the same seed and ``--quick`` it renders no video and only adds the pool; a complete pool of these settings
is kept, anything else at those paths is refused. The two options combine in one command.

The face is the public-domain astronaut photograph shipped with scikit-image (identity 0); identity 1 is
its mirror image with cooler colours. An elliptical, soft-edged cut-out of the face is composited on a
moving background with a per-frame similarity transform, so the true landmarks are known exactly.

Label → signal mapping (what a model can learn; constants in ``mapping`` and in ``meta.json["mapping"]``):

- EXPR class k (0..7, Other included) → hue of the face: every face pixel keeps its normalised luminance
  but takes the chroma of ``EXPR_HUES_DEG[k]`` (YCbCr angle, 45° apart); and the pitch of a tone in the
  audio, ``EXPR_TONE_HZ[k]``.
- valence v → face brightness: the face's luminance is scaled by ``0.45 + 0.2 (v + 1)`` (0.45–0.85), and
  the share of the tone's 2nd harmonic, ``0.125 (v + 1)``.
- arousal a → frame-to-frame jitter of the face (translation std ``scale·(0.2 + 1.8 (a + 1))`` px,
  rotation std ``0.5 (a + 1)``°) and the tone's amplitude, ``0.03 + 0.13 (a + 1)`` (full scale 1).
- AU on → a dark dot (radius ``AU_DOT_RADIUS`` source pixels) at each point of ``AU_POINTS`` (the AU's
  facial location: brows, cheeks, lids, lips, chin), drawn on the face before it is warped.

Frame k's pixels and the audio at frame k's timestamp encode frame k's true labels, also on frames whose
annotation is invalid. Audio between frame timestamps: pitch holds, amplitude and harmonic interpolate.
A two-person video's audio is the sum of both persons' tones. Ground truth is drawn for the union of 13
AUs and each edition gets its subset; in 7-class layouts the class Other is written as -1.

Special cases (fixed per video; see ``video_specs``): a two-person video (``_left``/``_right`` tracks), one
without audio, a variable-frame-rate one (frame durations of 33/40 ms, pts in ms; ``frame_times_s`` in
meta), one whose audio starts 0.5 s after the first frame (mp4 only: AVI cannot store a start offset; the
decoded audio starts one AAC priming frame earlier, ``audio_first_pts_s``, and its content is aligned by
pts), one whose face slides out of the frame for ~1 s, label files 1–3 lines longer or shorter than the
video in three videos, audio at 16–48 kHz, AAC (mp4), MP3 and PCM (avi). Video is H.264 in mp4 and
MPEG-4 part 2 in avi, except three videos with B-frames (frames stored in decode order, ``b_frames`` in
meta): H.264 in an mp4, MPEG-4 part 2 in an avi, and H.264 in an avi, whose decoded frames get their
timestamps in decode order (see ``video_codecs``). Both B-frame AVIs show their first frame one
frame after the container's zero (``video_first_pts_s``; 0 elsewhere) and their audio is delayed by as
much. In every video, decoded audio at t seconds after the first frame's container time carries the
signal of time t (the MP3 encoder delay is compensated too, see ``audio.AudioFeeder``).
Frame ranges in meta are 1-based and inclusive, like ``%05d.jpg`` and label line k+1.

Public API (re-exported here): ``generate(out, seed, quick, workers) -> meta``, ``generate_timed`` (also returns render
seconds), ``video_specs``, ``plan_video`` (labels and motion without rendering), ``reference_audio``
(the audio before encoding), ``background`` and ``render_frame`` (a frame before encoding),
``identities``, ``similarity_lstsq``, ``align_crop``, ``generate_lsd`` (the LSD set), ``LSD_FOLDERS``,
``generate_unlabelled`` and ``read_unlabelled_truth`` (the pool of unlabelled faces and its truth) and the
constants.

Modules: ``mapping`` (constants, label → signal functions), ``specs`` (the videos), ``labels`` (drawing
a track's labels), ``faces`` (identities, motion, compositing, crops), ``audio`` (synthesis, encoding),
``video_codecs`` (video encoder settings, first-frame time), ``plan`` (one video's plan), ``render``
(one video's frames, file, crops and truth), ``writers`` (label files), ``dataset`` (``generate``,
meta), ``lsd`` (the opt-in LSD set), ``unlabelled`` (the opt-in pool of unlabelled faces), ``cli`` (the
command line, run by ``__main__``).
"""

from tools.synthetic.cli import build_parser, main
from tools.synthetic.dataset import generate, generate_timed, mapping_meta, video_meta
from tools.synthetic.faces import align_crop, apply_affine, identities, similarity_lstsq
from tools.synthetic.lsd import LSD_FOLDERS, generate_lsd
from tools.synthetic.mapping import (
    ARCFACE_TEMPLATE_112,
    ASTRONAUT_LANDMARKS_5,
    AU_DOT_RADIUS,
    AU_DOT_RGB,
    AU_NAMES_ALL,
    AU_POINTS,
    CROP_SIZE,
    EDITION_FOLDERS,
    EXPR_AU_AFFINITY,
    EXPR_HUES_DEG,
    EXPR_PRIOR,
    EXPR_TONE_HZ,
    FACE_EDGE_SIGMA,
    FACE_ELLIPSE_AXES,
    FACE_ELLIPSE_CENTER,
    FACE_REGION_XYWH,
    FPS,
    LUMA_MEAN,
    LUMA_STD,
    MTL_EVERY,
    TINT_CHROMA,
    TINT_KEEP_ORIGINAL,
    arousal_amplitude,
    arousal_jitter,
    valence_gain,
    valence_harmonic,
)
from tools.synthetic.plan import VideoJob, plan_video, reference_audio
from tools.synthetic.render import Background, VideoResult, background, render_frame
from tools.synthetic.specs import VideoSpec, video_specs
from tools.synthetic.unlabelled import generate_unlabelled
from tools.synthetic.unlabelled import read_truth as read_unlabelled_truth

__all__ = [
    "ARCFACE_TEMPLATE_112", "ASTRONAUT_LANDMARKS_5", "AU_DOT_RADIUS", "AU_DOT_RGB", "AU_NAMES_ALL", "AU_POINTS",
    "CROP_SIZE", "EDITION_FOLDERS", "EXPR_AU_AFFINITY", "EXPR_HUES_DEG", "EXPR_PRIOR", "EXPR_TONE_HZ",
    "FACE_EDGE_SIGMA", "FACE_ELLIPSE_AXES", "FACE_ELLIPSE_CENTER", "FACE_REGION_XYWH", "FPS", "LUMA_MEAN",
    "LSD_FOLDERS", "LUMA_STD", "MTL_EVERY", "TINT_CHROMA", "TINT_KEEP_ORIGINAL",
    "Background", "VideoJob", "VideoResult", "VideoSpec",
    "align_crop", "apply_affine", "arousal_amplitude", "arousal_jitter", "background", "build_parser",
    "generate", "generate_lsd", "generate_timed", "generate_unlabelled", "identities", "main", "mapping_meta",
    "plan_video", "read_unlabelled_truth", "reference_audio", "render_frame", "similarity_lstsq", "valence_gain",
    "valence_harmonic", "video_meta", "video_specs",
]
