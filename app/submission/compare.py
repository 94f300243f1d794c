"""Agreement of two prediction sets (``evaluate.py --compare A B``): a reproduction against files one has.

A side is a submission (a per-video folder, a 2023+ per-task file or an MTL file, read with the edition's
reader) or raw outputs (a ``raw/`` folder of test_val_aff2.py ``.npz`` files, one per track, or one such
file). Both sides must be of one kind: a submission holds decisions rounded for the organisers, raw files
hold the scores before them, so comparing one with the other would mix two different questions.

Per task, over the frames both sides give: EXPR equal fraction; AU fraction of frames with every AU equal
and the per-AU equal fractions (AUs matched by name); VA max and mean |Δ| per dimension; for raw outputs
also the max |Δ| of the raw outputs (``logits``) of the task's block of the layout. Tracks and frames that
only one side gives are counted and named (the first few), never dropped silently. Raw outputs are
decided here as ours does by default (EXPR = argmax over the classes the layout and the edition share,
AU = stored score ≥ 0.5, VA = the stored value clipped to [−1, 1]); a profile's own AU score (e.g.
tsav2020's clipped raw value) is already what the file stores.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.submission.formats import set_dirs
from app.submission.read import read_predictions, submission_kind
from tasks import BLOCK_OF_TASK, TASKS, VA_NAMES, Edition, get_edition, get_layout
from utils.tables import print_table

SHOWN = 5  # names listed per "only in one side" list, and tracks in the "disagree most" table
RAW_KEYS = {"VA": "va", "EXPR": "expr_prob", "AU": "au_prob"}  # save_npz's score keys per task


class CompareError(ValueError):
    """Unusable input for a comparison (one line naming the path or paths)."""


@dataclass
class Track:
    """One task of one track on one side."""

    values: np.ndarray  # decisions: VA (n, 2) floats; EXPR (n,) class codes; AU (n, k) 0/1
    present: np.ndarray  # (n,) bool: frames this side gives (a single file lists only some)
    names: tuple[str, ...] = ()  # AU: the column names
    logits: np.ndarray | None = None  # raw sides: (n, w) the task's block of the raw outputs
    block: str = ""  # which block ``logits`` is ('all' when the layout is not registered)


@dataclass
class Side:
    path: str
    kind: str  # 'submission' | 'raw'
    what: str  # for messages: 'per-video submission folder', 'raw/ folder (12 .npz)', ...
    tasks: dict[str, dict[str, Track]]


# ---------------------------------------------------------------------------------------------------
# Reading

def side_kind(path: Path) -> tuple[str, str]:
    """('submission' | 'raw', a description) of a path; FileNotFoundError or CompareError when neither."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix == ".npz":
            return "raw", "raw output file (.npz)"
        return "submission", f"{submission_kind(path)} submission file"  # SubmissionError when unreadable
    npz = sorted(path.glob("*.npz"))
    sets = set_dirs(path)
    if npz and sets:
        raise CompareError(f"{path}: holds both .npz raw outputs and submission task folders; "
                           "pass a folder of one kind")
    if sets:
        return "submission", "per-video submission folder"
    if npz:
        return "raw", f"raw/ folder ({len(npz)} .npz)"
    if (path / "submission").is_dir() or (path / "raw").is_dir():  # the --out of test_val_aff2.py
        raise CompareError(f"{path}: a test_val_aff2.py output folder? pass its submission/ or raw/ folder")
    raise CompareError(f"{path}: neither a submission (VA_Set/ EXPR_Set/ AU_Set/ or a single file) nor a "
                       "folder of .npz raw outputs")


def read_submission_side(path: Path, edition: Edition) -> dict[str, dict[str, Track]]:
    out: dict[str, dict[str, Track]] = {}
    for task, tracks in read_predictions(path, edition).items():
        out[task] = {}
        for name, lab in tracks.items():
            # the reader refuses invalid values, so an invalid row is one a single file does not list
            present = lab.valid if lab.valid.ndim == 1 else lab.valid.all(axis=1)
            values = lab.values.astype(np.float64) if task == "VA" else lab.values
            out[task][name] = Track(values, present, lab.names if task == "AU" else ())
    return out


def load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CompareError(f"{path}: cannot read as .npz: {e}") from None


def layout_blocks(name: str, width: int) -> dict[str, slice] | None:
    """The raw-output columns of each block of a registered layout of this width; None when unknown."""
    try:
        layout = get_layout(name)
    except ValueError:  # a layout this process does not know (a plugin's): compare whole rows
        return None
    return layout.slices if layout.num_outputs == width else None


def read_npz_track(path: Path, edition: Edition) -> dict[str, Track]:
    """{task: Track} of one raw output file: decisions from the stored scores, the task's logit block."""
    data = load_npz(path)
    if "logits" not in data:
        raise CompareError(f"{path}: no 'logits' array (not a test_val_aff2.py raw output)")
    logits = np.asarray(data["logits"], np.float64)
    if logits.ndim != 2:
        raise CompareError(f"{path}: 'logits' has shape {logits.shape}, expected (frames, outputs)")
    n = len(logits)
    blocks = layout_blocks(str(data.get("layout", "")), logits.shape[1])
    out = {}
    for task, key in RAW_KEYS.items():
        if key not in data:
            continue
        scores = np.asarray(data[key], np.float64)
        if scores.ndim != 2 or len(scores) != n:
            raise CompareError(f"{path}: '{key}' has shape {scores.shape}, expected ({n}, columns)")
        names: tuple[str, ...] = ()
        if task == "VA":
            values = np.clip(scores, -1, 1)
        elif task == "EXPR":
            values = scores[:, :min(scores.shape[1], len(edition.expr_names))].argmax(1)
        else:
            names = tuple(str(a) for a in data.get("au_names", ()))
            if len(names) != scores.shape[1]:
                raise CompareError(f"{path}: {len(names)} au_names for {scores.shape[1]} AU columns")
            values = (scores >= 0.5).astype(np.int64)
        block = BLOCK_OF_TASK[task]
        if blocks is None or block not in blocks:
            block = "all"
        columns = blocks[block] if block != "all" else slice(None)
        out[task] = Track(values, np.ones(n, bool), names, logits[:, columns], block)
    return out


def read_raw_side(path: Path, edition: Edition) -> dict[str, dict[str, Track]]:
    files = [path] if path.is_file() else sorted(path.glob("*.npz"))
    out: dict[str, dict[str, Track]] = {}
    for f in files:
        for task, track in read_npz_track(f, edition).items():
            out.setdefault(task, {})[f.stem] = track
    return out


def read_side(path: str | Path, edition: Edition) -> Side:
    path = Path(path)
    kind, what = side_kind(path)
    tasks = read_submission_side(path, edition) if kind == "submission" else read_raw_side(path, edition)
    return Side(str(path), kind, what, tasks)


# ---------------------------------------------------------------------------------------------------
# Comparing

def frame_masks(a: Track, b: Track) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(both, only in a, only in b) over the longer of the two tracks."""
    n = max(len(a.present), len(b.present))
    pa, pb = np.zeros(n, bool), np.zeros(n, bool)
    pa[:len(a.present)], pb[:len(b.present)] = a.present, b.present
    return pa & pb, pa & ~pb, pb & ~pa


def track_counts(task: str, a: Track, b: Track) -> dict:
    """Sums over one track's shared frames (aggregated per task by ``task_summary``)."""
    both, only_a, only_b = frame_masks(a, b)
    idx = np.flatnonzero(both)
    c: dict = {"frames": len(idx), "only_a": np.flatnonzero(only_a), "only_b": np.flatnonzero(only_b)}
    va, vb = a.values[idx], b.values[idx]
    if task == "EXPR":
        c["equal"] = int((va == vb).sum())
        c["disagreement"] = (len(idx) - c["equal"]) / len(idx) if len(idx) else 0.0
    elif task == "AU":
        names = [n for n in a.names if n in b.names]
        eq = va[:, [a.names.index(n) for n in names]] == vb[:, [b.names.index(n) for n in names]]
        c["equal"] = int(eq.all(axis=1).sum())
        c["per_au"] = dict(zip(names, eq.sum(axis=0).tolist()))
        c["disagreement"] = (len(idx) - c["equal"]) / len(idx) if len(idx) else 0.0
    else:
        d = np.abs(va - vb)
        c["max"] = d.max(axis=0) if len(idx) else np.zeros(2)
        c["sum"] = d.sum(axis=0)
        c["disagreement"] = float(d.mean()) if len(idx) else 0.0
    if a.logits is not None and b.logits is not None and a.logits.shape[1] == b.logits.shape[1]:
        c["logits"] = float(np.abs(a.logits[idx] - b.logits[idx]).max()) if len(idx) else 0.0
    return c


def first_frames(counts: dict[str, dict], key: str) -> list[str]:
    names = [f"{t}/{i + 1:05d}" for t, c in counts.items() for i in c[key][:SHOWN]]
    return names[:SHOWN]


def one_side(tracks: dict[str, Track], missing: list[str], counts: dict[str, dict], key: str) -> dict:
    """What only one side gives for a task: its tracks the other lacks, and frames of the shared tracks."""
    in_shared = sum(len(c[key]) for c in counts.values())
    return {"tracks": missing, "frames": sum(int(tracks[t].present.sum()) for t in missing) + in_shared,
            "frames_of_shared_tracks": in_shared, "first_frames": first_frames(counts, key)}


def fraction(n: int, d: int) -> float | None:
    return n / d if d else None


def task_summary(task: str, a: dict[str, Track], b: dict[str, Track]) -> dict:
    shared = sorted(set(a) & set(b))
    counts = {t: track_counts(task, a[t], b[t]) for t in shared}
    frames = sum(c["frames"] for c in counts.values())
    out: dict = {"tracks": len(shared), "frames": frames,
                 "only_a": one_side(a, sorted(set(a) - set(b)), counts, "only_a"),
                 "only_b": one_side(b, sorted(set(b) - set(a)), counts, "only_b")}
    if task == "EXPR":
        out["equal_fraction"] = fraction(sum(c["equal"] for c in counts.values()), frames)
    elif task == "AU":
        out["all_equal_fraction"] = fraction(sum(c["equal"] for c in counts.values()), frames)
        per_au: dict[str, list[int]] = {}  # AU → [equal, frames]
        for c in counts.values():
            for name, eq in c["per_au"].items():
                per_au.setdefault(name, [0, 0])
                per_au[name][0] += eq
                per_au[name][1] += c["frames"]
        out["per_au_equal_fraction"] = {n: fraction(e, f) for n, (e, f) in per_au.items()}
        known = [v for v in out["per_au_equal_fraction"].values() if v is not None]
        out["mean_au_equal_fraction"] = float(np.mean(known)) if known else None
    else:
        live = [c for c in counts.values() if c["frames"]]
        out["max_abs_diff"] = {n: (max(float(c["max"][i]) for c in live) if live else None)
                               for i, n in enumerate(VA_NAMES)}
        out["mean_abs_diff"] = {n: fraction(sum(float(c["sum"][i]) for c in live), frames)
                                for i, n in enumerate(VA_NAMES)}
    logit_max = [c["logits"] for c in counts.values() if "logits" in c and c["frames"]]
    if any(a[t].logits is not None for t in shared):
        out["logits_block"] = next(a[t].block for t in shared)
        out["logits_max_abs_diff"] = max(logit_max) if logit_max else None
        out["logits_incomparable_tracks"] = [t for t in shared if "logits" not in counts[t]]
    out["worst_tracks"] = worst_tracks(counts)
    return out


def worst_tracks(counts: dict[str, dict]) -> list[dict]:
    """The SHOWN tracks that disagree most (decisions first, then raw outputs); agreeing ones are left out."""
    key = {t: (c["disagreement"], c.get("logits", 0.0)) for t, c in counts.items() if c["frames"]}
    ranked = sorted((t for t in key if key[t] > (0.0, 0.0)), key=lambda t: (-key[t][0], -key[t][1], t))
    return [{"track": t, "frames": counts[t]["frames"], "disagreement": key[t][0],
             "logits_max_abs_diff": counts[t].get("logits")} for t in ranked[:SHOWN]]


def compare_sets(path_a: str | Path, path_b: str | Path, edition: str | Edition) -> dict:
    """Compare two prediction sets of one kind; the result is what ``--json`` writes (see module docstring).

    Raises FileNotFoundError, SubmissionError or CompareError (ValueErrors) on unusable input.
    """
    edition = get_edition(edition)
    a, b = read_side(path_a, edition), read_side(path_b, edition)
    if a.kind != b.kind:
        raise CompareError(f"cannot compare {a.path} ({a.what}) with {b.path} ({b.what}): give two "
                           "submissions or two raw/ folders")
    tasks = [t for t in TASKS if t in a.tasks or t in b.tasks]
    return {"kind": a.kind, "edition": edition.name, "a": {"path": a.path, "what": a.what},
            "b": {"path": b.path, "what": b.what},
            "tasks": {t: task_summary(t, a.tasks.get(t, {}), b.tasks.get(t, {})) for t in tasks}}


# ---------------------------------------------------------------------------------------------------
# Printing

def num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def delta(x: float | None) -> str:
    """|Δ| values span 1e-7 (numerics) to 2 (VA): three significant digits."""
    return "-" if x is None else "0" if x == 0 else f"{x:.3g}"


def pair(d: dict[str, float | None] | None, show=delta) -> str:
    return "-" if d is None else " / ".join(show(v) for v in d.values())


def only_cell(side: dict) -> str:
    return f"{len(side['tracks'])} tr, {side['frames']} fr" if side["frames"] or side["tracks"] else "0"


def only_lines(side: dict, label: str) -> list[str]:
    lines = []
    if side["tracks"]:
        more = f" and {len(side['tracks']) - SHOWN} more" if len(side["tracks"]) > SHOWN else ""
        lines.append(f"{len(side['tracks'])} track(s) only in {label}: {', '.join(side['tracks'][:SHOWN])}{more}")
    if side["frames_of_shared_tracks"]:
        lines.append(f"{side['frames_of_shared_tracks']} frame(s) of shared tracks only in {label}, "
                     f"first {', '.join(side['first_frames'])}")
    return lines


def print_comparison(result: dict) -> None:
    """The per-task table, what only one side gives, and the tracks that disagree most."""
    print(f"A: {result['a']['path']} ({result['a']['what']})\nB: {result['b']['path']} ({result['b']['what']})")
    raw = result["kind"] == "raw"
    header = ["task", "tracks", "frames", "only A", "only B", "equal", "per-AU equal", "max |Δ| V / A",
              "mean |Δ| V / A"] + (["logits max |Δ|"] if raw else [])
    rows, worst = [], []
    notes: dict[str, list[str]] = {}  # note → tasks (raw outputs give the same tracks to every task)
    for task, s in result["tasks"].items():
        equal = s.get("equal_fraction", s.get("all_equal_fraction"))
        row = [task, s["tracks"], s["frames"], only_cell(s["only_a"]), only_cell(s["only_b"]), num(equal),
               num(s.get("mean_au_equal_fraction")), pair(s.get("max_abs_diff")), pair(s.get("mean_abs_diff"))]
        if raw:
            block = s.get("logits_block", "")
            row.append(f"{delta(s.get('logits_max_abs_diff'))} ({block})" if block else "-")
            if s.get("logits_incomparable_tracks"):
                notes.setdefault(f"raw outputs of {len(s['logits_incomparable_tracks'])} track(s) have different "
                                 "widths (layouts differ): not compared", []).append(task)
        rows.append(row)
        for note in only_lines(s["only_a"], "A") + only_lines(s["only_b"], "B"):
            notes.setdefault(note, []).append(task)
        measure = "mean |Δ|" if task == "VA" else "frames differing"
        for w in s["worst_tracks"]:
            shown = delta(w["disagreement"]) if task == "VA" else f"{w['disagreement']:.2%}"
            worst.append([task, w["track"], w["frames"], f"{measure} {shown}"]
                         + ([delta(w["logits_max_abs_diff"])] if raw else []))
    title = ("Agreement per task (only A/B: tracks (tr) and frames (fr) one side lacks; equal: fraction of "
             "shared frames, for AU with every AU equal)")
    print_table(header, rows, title=title, right=True)
    for note, tasks in notes.items():
        print(f"{', '.join(tasks)}: {note}")
    if worst:
        print_table(["task", "track", "frames", "disagreement"] + (["logits max |Δ|"] if raw else []), worst,
                    title=f"Tracks that disagree most (up to {SHOWN} per task)")
    else:
        print("\nEvery shared frame agrees.")
