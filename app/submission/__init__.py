"""ABAW submission files: writers, a reader, a checker, and scoring a submission against annotations.

Layouts (SPEC §5):
- per-video files (2020–2022): ``<out>/<VA_Set|EXPR_Set|AU_Set>/<track>.txt``, header as the edition's
  annotations, then one line per video frame (VA with 3 decimals, EXPR a class code, AU 0/1 columns).
- one file per task (2023+): header ``image_location,<columns>``, rows ``<track>/00001.jpg,<values>``
  (EXPR rows hold one class code under the eight class names).
- multi-task (MTL): header ``image,valence,arousal,expression,aus``, rows
  ``<track>/00001.jpg,V,A,EXPR,<12 AUs>``.

Modules: ``formats`` (names, headers, parsing and the scans shared by reader and checker), ``read``,
``write``, ``check``, ``expected`` (what a submission must cover) and ``score``. The reader and the
checker share one parser: the checker reports every problem, the reader refuses a file with any problem
(naming the first), so what gets scored is what the checker accepts.
"""

from app.submission.check import check_submission
from app.submission.expected import expected_for_check, listed_images, read_test_list, video_frame_counts
from app.submission.formats import Problem, SubmissionError, per_video_names
from app.submission.lsd import check_lsd, read_lsd, score_lsd, write_lsd
from app.submission.read import read_per_video_folder, read_predictions, submission_kind
from app.submission.score import score_submission
from app.submission.write import write_atomic, write_mtl, write_per_video, write_single_file

# Annotation names the submission tests reach through this package (they live in data.annotations).
from data.annotations import TrackLabels, labels_from_array, task_of_list

__all__ = [
    "Problem",
    "SubmissionError",
    "TrackLabels",
    "check_lsd",
    "check_submission",
    "expected_for_check",
    "labels_from_array",
    "listed_images",
    "per_video_names",
    "read_per_video_folder",
    "read_lsd",
    "read_predictions",
    "read_test_list",
    "score_lsd",
    "score_submission",
    "submission_kind",
    "task_of_list",
    "video_frame_counts",
    "write_atomic",
    "write_lsd",
    "write_mtl",
    "write_per_video",
    "write_single_file",
]
