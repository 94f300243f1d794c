"""The task vocabulary every layer shares: tasks, class and AU names, editions, output layouts, splits.

This module is the bottom of the code base: it imports nothing of the project, and nothing else defines
these names. Everything here is plain data plus small look-ups:

- tasks: ``TASKS`` as the annotations and submissions spell them (VA, EXPR, AU) and ``BLOCKS``, the
  names of the output blocks of a model (va, expr, au); ``BLOCK_OF_TASK`` maps one to the other.
- class and AU lists: EXPR with 7 classes (2020, 2021), 8 (2022+, with Other) and the 6 basic classes of
  the ABAW4 synthetic-data track (no Neutral; their Aff-Wild2 codes are 1–6, ``EXPR_CODES_6``); AU with 8
  (2020) and 12 (2021+).
- editions: what a challenge edition scores (its classes, AUs and metric weights) and the submission
  format it takes (per-video files, one file, the MTL file, or the LSD track's image rows). A new track is
  one more ``Edition`` in ``EDITIONS``; the command lines offer every registered edition.
- output layouts: which output column of a model means what. A layout has some or all of the three
  blocks, in its own order, a VA activation ("tanh", or "identity" = the raw value, clipped to [−1, 1]
  for predictions) and the edition its validation scores by default.
- the AU column mapping between two AU lists (a layout's and an edition's, a database's and a layout's).
- split names: the canonical annotated splits, the name test-list tracks get, and every spelling accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

# ---------------------------------------------------------------------------------------------------
# Tasks, classes, AUs

TASKS = ("VA", "EXPR", "AU")  # annotation / submission spelling
BLOCKS = ("expr", "va", "au")  # output-block spelling (model outputs, losses, batches)
BLOCK_OF_TASK = {"VA": "va", "EXPR": "expr", "AU": "au"}

VA_NAMES = ("valence", "arousal")
EXPR_NAMES_7 = ("Neutral", "Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
EXPR_NAMES_8 = EXPR_NAMES_7 + ("Other",)
# ABAW4 learning-from-synthetic-data track: the six basic expressions, labelled with their Aff-Wild2 codes.
EXPR_NAMES_6 = ("Anger", "Disgust", "Fear", "Happiness", "Sadness", "Surprise")
EXPR_CODES_6 = tuple(EXPR_NAMES_8.index(name) for name in EXPR_NAMES_6)  # (1, ..., 6)
AU_NAMES_8 = ("AU1", "AU2", "AU4", "AU6", "AU12", "AU15", "AU20", "AU25")
AU_NAMES_12 = ("AU1", "AU2", "AU4", "AU6", "AU7", "AU10", "AU12", "AU15", "AU23", "AU24", "AU25", "AU26")

VA_ACTIVATIONS = ("tanh", "identity")


# ---------------------------------------------------------------------------------------------------
# Editions


@dataclass(frozen=True)
class Edition:
    """What an edition scores: its class and AU sets and the (F1, accuracy) weights of each score.

    ``submission``: the file format its challenge takes (one of ``SUBMISSION_FORMATS``): per-video files
    (2020–2022 uni-task tracks) or one multi-task file ("mtl", s-Aff-Wild2: one row per listed image).
    """

    name: str
    expr_names: tuple[str, ...]
    au_names: tuple[str, ...]
    expr_weights: tuple[float, float]
    au_weights: tuple[float, float]
    submission: str = "per-video"


SUBMISSION_FORMATS = ("per-video", "single-file", "mtl", "lsd")
EDITIONS: dict[str, Edition] = {
    "abaw2020": Edition("abaw2020", EXPR_NAMES_7, AU_NAMES_8, (0.67, 0.33), (0.5, 0.5)),
    "abaw2021": Edition("abaw2021", EXPR_NAMES_7, AU_NAMES_12, (0.67, 0.33), (0.5, 0.5)),
    "abaw3": Edition("abaw3", EXPR_NAMES_8, AU_NAMES_12, (1.0, 0.0), (1.0, 0.0)),
    # ABAW4 multi-task track on s-Aff-Wild2: P = mean CCC(V, A) + EXPR macro-F1 (8) + AU mean F1 (12).
    "abaw4": Edition("abaw4", EXPR_NAMES_8, AU_NAMES_12, (1.0, 0.0), (1.0, 0.0), submission="mtl"),
    # ABAW5 (2023) and later uni-task tracks: the ABAW3 metrics, one submission file per task (image rows).
    "abaw5": Edition("abaw5", EXPR_NAMES_8, AU_NAMES_12, (1.0, 0.0), (1.0, 0.0), submission="single-file"),
    # ABAW4 learning-from-synthetic-data track: macro-F1 over the 6 basic classes on real images (accuracy
    # reported beside it); its predictions are one file of image rows ("lsd", README).
    "lsd": Edition("lsd", EXPR_NAMES_6, (), (1.0, 0.0), (1.0, 0.0), submission="lsd"),
}


def registered(table: Mapping[str, object], name: str, what: str) -> object:
    """``table[name]``; ValueError "unknown <what> 'name' (known: ...)" when it is not there."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r} (known: {', '.join(table)})")
    return table[name]


def get_edition(edition: str | Edition) -> Edition:
    return edition if isinstance(edition, Edition) else registered(EDITIONS, edition, "edition")


# ---------------------------------------------------------------------------------------------------
# Output layouts


@dataclass(frozen=True)
class OutputLayout:
    """Which output column means what.

    ``order`` lists the output blocks the layout has, in output order (any non-empty subset of
    ``BLOCKS``). The EXPR block has ``expr_slots`` logits of which the first ``len(expr_names)`` are
    classes (MTMT reserves an 8th slot that 7-class editions leave unused). The VA block is two raw values
    (valence, arousal) that ``va_activation`` turns into VA: "tanh", or "identity" (clipped to [−1, 1]
    when predicting). ``edition`` is the edition that scores validation unless the run names another
    ('' for a layout that no registered edition fits: the run must name one).
    """

    name: str
    order: tuple[str, ...]
    expr_slots: int = 0
    expr_names: tuple[str, ...] = ()
    au_names: tuple[str, ...] = ()
    va_activation: str = "tanh"
    edition: str = ""

    def __post_init__(self) -> None:
        problem = layout_problem(self)
        if problem:
            raise ValueError(f"output layout {self.name!r}: {problem}")

    def has(self, block: str) -> bool:
        return block in self.order

    @property
    def num_expr_classes(self) -> int:
        return len(self.expr_names)

    @property
    def num_au(self) -> int:
        return len(self.au_names)

    @property
    def sizes(self) -> dict[str, int]:
        """{block: number of output columns} of the blocks the layout has."""
        every = {"expr": self.expr_slots, "va": len(VA_NAMES), "au": self.num_au}
        return {block: every[block] for block in BLOCKS if block in self.order}

    @property
    def num_outputs(self) -> int:
        return sum(self.sizes.values())

    @property
    def slices(self) -> dict[str, slice]:
        out, start, sizes = {}, 0, self.sizes
        for block in self.order:
            out[block] = slice(start, start + sizes[block])
            start += sizes[block]
        return out


def layout_problem(layout: OutputLayout) -> str:
    """What makes a layout unusable ('' when nothing does)."""
    order = layout.order
    if not order or len(set(order)) != len(order) or not set(order) <= set(BLOCKS):
        return f"order {order} must list some of {', '.join(BLOCKS)}, each once"
    if layout.va_activation not in VA_ACTIVATIONS:
        return f"VA activation {layout.va_activation!r} is not one of {', '.join(VA_ACTIVATIONS)}"
    if "expr" in order and not 0 < len(layout.expr_names) <= layout.expr_slots:
        return f"{layout.expr_slots} EXPR slots for {len(layout.expr_names)} classes"
    if "expr" not in order and (layout.expr_slots or layout.expr_names):
        return "EXPR classes without an EXPR block"
    if ("au" in order) != bool(layout.au_names):
        return "an AU block needs AU names, and AU names need an AU block"
    return ""


_ABAW2021 = OutputLayout("abaw2021", ("au", "expr", "va"), 8, EXPR_NAMES_7, AU_NAMES_12, edition="abaw2021")
LAYOUTS: dict[str, OutputLayout] = {
    "abaw2020": OutputLayout("abaw2020", ("expr", "va", "au"), 7, EXPR_NAMES_7, AU_NAMES_8, edition="abaw2020"),
    "abaw2021": _ABAW2021,
    "mtmt": replace(_ABAW2021, name="mtmt"),
    "abaw3": OutputLayout("abaw3", ("au", "expr", "va"), 8, EXPR_NAMES_8, AU_NAMES_12, edition="abaw3"),
    # EMMA's published order: V, A (raw, no tanh), 8 EXPR logits, 12 AU logits.
    "emma": OutputLayout("emma", ("va", "expr", "au"), 8, EXPR_NAMES_8, AU_NAMES_12, va_activation="identity",
                         edition="abaw4"),
    # Expression only, 8 classes (ABAW5+ EXPR track: e.g. DTM's frame models).
    "expr8": OutputLayout("expr8", ("expr",), 8, EXPR_NAMES_8, edition="abaw5"),
    # CoTEX (ABAW4 LSD): 6 class logits, Anger ... Surprise.
    "lsd": OutputLayout("lsd", ("expr",), 6, EXPR_NAMES_6, edition="lsd"),
    # CNU_ADL (ABAW 2020): 7 EXPR logits then valence, arousal (tanh); its face network alone: expression only.
    "cnu": OutputLayout("cnu", ("expr", "va"), 7, EXPR_NAMES_7, edition="abaw2020"),
    "expr7": OutputLayout("expr7", ("expr",), 7, EXPR_NAMES_7, edition="abaw2020"),
}


def get_layout(layout: str | OutputLayout) -> OutputLayout:
    return layout if isinstance(layout, OutputLayout) else registered(LAYOUTS, layout, "output layout")


def layout_for_sizes(sizes: Mapping[str, int]) -> OutputLayout | None:
    """The registered layout with these block sizes; the first registered wins (AU 12 / EXPR 8 / VA 2 reads
    as abaw2021 rather than abaw3)."""
    return next((layout for layout in LAYOUTS.values() if layout.sizes == dict(sizes)), None)


def layout_for_num_outputs(num_outputs: int) -> OutputLayout | None:
    """The first registered layout with ``num_outputs`` columns in all."""
    return next((layout for layout in LAYOUTS.values() if layout.num_outputs == num_outputs), None)


# ---------------------------------------------------------------------------------------------------
# AU columns


class MissingAUError(ValueError):
    """An AU list lacks AUs another one needs; ``missing`` names them (in the needed order)."""

    def __init__(self, message: str, missing: tuple[str, ...]) -> None:
        super().__init__(message)
        self.missing = missing


def au_columns(have: Sequence[str], want: Sequence[str], where: str = "AU list") -> list[int]:
    """Index in ``have`` of every AU of ``want``, in ``want``'s order.

    MissingAUError (one line: ``where``, the missing AUs and what ``have`` holds) when ``have`` lacks any.
    """
    have = tuple(have)
    missing = tuple(a for a in want if a not in have)
    if missing:
        raise MissingAUError(f"{where}: no {','.join(missing)} (its AUs: {','.join(have) or 'none'})", missing)
    return [have.index(a) for a in want]


def layout_au_columns(layout: OutputLayout, edition: Edition) -> list[int]:
    """Columns of the layout's AU block that the edition scores, in the edition's order.

    MissingAUError "layout 'x' has no output for AU7,... of abaw2021" when the layout cannot serve them.
    """
    try:
        return au_columns(layout.au_names, edition.au_names)
    except MissingAUError as e:
        raise MissingAUError(f"layout {layout.name!r} has no output for {','.join(e.missing)} of {edition.name}",
                             e.missing) from None


# ---------------------------------------------------------------------------------------------------
# Labels


@dataclass
class TrackLabels:
    """Labels of one task for one track.

    values: VA float32 (n, 2); EXPR int64 (n,); AU int8 (n, k). Invalid entries keep their sentinel.
    valid:  VA/EXPR bool (n,); AU bool (n, k) (AU validity is per entry).
    names:  the column names from the header (EXPR: the class names, whose count says 7 or 8).
    """

    track: str
    task: str
    split: str
    names: tuple[str, ...]
    values: np.ndarray
    valid: np.ndarray
    source: str

    def __len__(self) -> int:
        return len(self.values)


# ---------------------------------------------------------------------------------------------------
# Splits

TRAIN_SPLIT = "Train_Set"
VAL_SPLIT = "Validation_Set"
TEST_SPLIT = "test"  # the split stored for the tracks a test-set list names (they have no labels)
SPLITS = (TRAIN_SPLIT, VAL_SPLIT)  # the annotated splits
SPLIT_SPELLINGS = {
    TRAIN_SPLIT: ("train_set", "training_set", "train", "training"),
    VAL_SPLIT: ("validation_set", "val", "valid", "validation"),
}


def canonical_split(name: str) -> str:
    """Any spelling of an annotated split (``Training_Set``, ``train``, ``val``...) → Train_Set / Validation_Set."""
    key = name.lower().replace("-", "_")
    for split, spellings in SPLIT_SPELLINGS.items():
        if key in spellings:
            return split
    raise ValueError(f"unknown split {name!r}: use {' or '.join(SPLITS)} (or train, val)")


def parse_task_weights(text: str) -> dict[str, float]:
    """'expr=3,au=1,va=1' → {'expr': 3.0, 'au': 1.0, 'va': 1.0}; ValueError unless known tasks and weights >= 0."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = (s.strip() for s in part.partition("="))
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if name not in BLOCKS or not 0 <= weight < float("inf"):
            raise ValueError(f"--task-weights: expected expr=W,au=W,va=W with weights >= 0, got {text!r}")
        out[name] = weight
    return out
