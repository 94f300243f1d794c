"""What a person looks at after predicting one video: a per-frame CSV, a timeline plot, an overlay MP4.

Per-frame scores are plain arrays (the contract of the inference stage, ``app.inference``):
``{"va": (n, 2) floats in [-1, 1], "expr_prob": (n, C) class probabilities, "au_prob": (n, K) AU
probabilities}``, with the decisions made of them by the model's decision profile
(``utils.outputs.decide_layout``: ``{"EXPR": (n,) class index, "AU": (n, K) 0/1}``) and the class and AU
names. Nothing here decides anything again.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

from utils.atomic import atomic_path

CSV_LEAD = ("frame", "timestamp", "face_id", "success", "confidence", "audio")

# Expression colours for the plot band and the overlay (RGB, 0-255), one per class name.
EXPR_COLOURS = {
    "Neutral": (160, 160, 160), "Anger": (220, 40, 40), "Disgust": (120, 160, 40), "Fear": (140, 80, 200),
    "Happiness": (250, 200, 30), "Sadness": (40, 90, 220), "Surprise": (250, 130, 30), "Other": (90, 60, 40),
}


def csv_header(expr_names: tuple[str, ...], au_names: tuple[str, ...]) -> list[str]:
    return (list(CSV_LEAD) + ["valence", "arousal", "expression"] + [f"p_{n}" for n in expr_names]
            + [f"p_{n}" for n in au_names] + list(au_names))


def prediction_cells(preds: dict[str, np.ndarray] | None, decisions: dict[str, np.ndarray] | None, n: int,
                     width: int, expr_names: tuple[str, ...]) -> Iterator[list]:
    """Per frame, one row at a time: valence, arousal, expression, class probabilities, AU probabilities,
    AU 0/1; ``width`` empty cells per frame when ``preds`` is None."""
    if preds is None:
        yield from ([""] * width for _ in range(n))
        return
    va, expr, au_on = preds.get("va"), decisions.get("EXPR"), decisions.get("AU")  # a layout may lack a block
    for i in range(n):
        yield ([f"{v:.4f}" for v in va[i]] if va is not None else ["", ""]) \
            + [expr_names[expr[i]] if expr is not None else ""] \
            + ([f"{p:.4f}" for p in preds["expr_prob"][i]] if expr is not None else []) \
            + ([f"{p:.4f}" for p in preds["au_prob"][i]] + au_on[i].astype(int).tolist() if au_on is not None else [])


def write_frame_csv(path: str | Path, times: np.ndarray, has_face: np.ndarray, confidence: np.ndarray,
                    preds: dict[str, np.ndarray] | None, decisions: dict[str, np.ndarray] | None,
                    expr_names: tuple[str, ...], au_names: tuple[str, ...], face_id: int = 0,
                    has_audio: bool = True) -> Path:
    """One row per decoded frame, OpenFace-like lead columns, then VA, expression, AU probabilities and 0/1.

    ``audio`` is 1 on every row when the video has sound, 0 when the predictions come from the face alone.
    ``preds`` None (no face in the whole video): the prediction cells are left empty.
    """
    n = len(times)
    for key, arr in (preds or {}).items():
        if len(arr) != n:
            raise ValueError(f"{key} has {len(arr)} rows for {n} frames")
    path = Path(path)
    width = len(csv_header(expr_names, au_names)) - len(CSV_LEAD)
    cells = prediction_cells(preds, decisions, n, width, expr_names)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(csv_header(expr_names, au_names))
        for i, row in enumerate(cells):
            w.writerow([i, f"{times[i]:.3f}", face_id, int(has_face[i]), f"{confidence[i]:.3f}", int(has_audio)]
                       + row)
    return path


def plot_timeline(path: str | Path, times: np.ndarray, has_face: np.ndarray, preds: dict[str, np.ndarray],
                  decisions: dict[str, np.ndarray], expr_names: tuple[str, ...], au_names: tuple[str, ...],
                  title: str = "") -> Path:
    """PNG: valence/arousal curves, an expression colour band, an AU raster (when the layout has AUs), faceless
    frames shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t = np.asarray(times, float)
    heights = [3, 0.6] + ([0.25 * len(au_names) + 0.6] if au_names else [])
    fig, axes = plt.subplots(len(heights), 1, figsize=(12, 4.2 + 0.25 * len(au_names)), sharex=True,
                             gridspec_kw={"height_ratios": heights})
    ax_va, ax_ex = axes[:2]
    if "va" in preds:
        ax_va.plot(t, preds["va"][:, 0], label="valence", color="tab:blue", lw=1.2)
        ax_va.plot(t, preds["va"][:, 1], label="arousal", color="tab:red", lw=1.2)
        ax_va.legend(loc="upper right", fontsize=8)
    else:
        ax_va.text(0.5, 0.5, "no VA output in this model's layout", ha="center", va="center",
                   transform=ax_va.transAxes)
    ax_va.set_ylim(-1.05, 1.05)
    ax_va.axhline(0, color="k", lw=0.5)
    ax_va.set_ylabel("VA")
    for a, b in runs(~np.asarray(has_face, bool)):
        for ax in axes:
            ax.axvspan(t[a], t[min(b, len(t) - 1)], color="0.85", zorder=0)
    edges = np.append(t, t[-1] + (t[-1] - t[-2] if len(t) > 1 else 1 / 30))
    if "EXPR" in decisions:
        colours = np.array([EXPR_COLOURS.get(n, (0, 0, 0)) for n in expr_names], float) / 255
        ax_ex.pcolormesh(edges, [0, 1], colours[decisions["EXPR"]][None], shading="flat")
        below = bool(au_names)  # between the band and the AU raster; else above the band, clear of the time axis
        ax_ex.legend(handles=[Patch(color=colours[k], label=n) for k, n in enumerate(expr_names)],
                     loc="upper center" if below else "lower center", bbox_to_anchor=(0.5, -0.05 if below else 1.0),
                     ncol=len(expr_names), fontsize=7, frameon=False)
    ax_ex.set_yticks([])
    ax_ex.set_ylabel("EXPR")
    if au_names:
        ax_au = axes[2]
        if "AU" in decisions:
            on = decisions["AU"].T.astype(float)
            ax_au.pcolormesh(edges, np.arange(len(au_names) + 1), on, cmap="Greys", vmin=0, vmax=1, shading="flat")
        ax_au.set_yticks(np.arange(len(au_names)) + 0.5, au_names, fontsize=7)
        ax_au.invert_yaxis()
    axes[-1].set_xlabel("time (s)")
    if title:
        ax_va.set_title(title)
    return save_figure(fig, path, dpi=110)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Lay out, write atomically (a killed run leaves no half PNG) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index pairs of the True stretches of a boolean array."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.flatnonzero(np.diff(m.astype(np.int8)))
    return list(zip(d[::2], d[1::2]))


def draw_predictions(bgr: np.ndarray, box: np.ndarray | None, va: np.ndarray, expr_name: str,
                     au_on: list[str]) -> None:
    """Draw the face box and the current predictions on a frame, in place."""
    colour = EXPR_COLOURS.get(expr_name, (255, 255, 255))[::-1]
    if box is not None and np.all(np.isfinite(box)):
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(bgr, (x0, y0), (x1, y1), colour, 2)
    va_text = f"V {va[0]:+.2f}  A {va[1]:+.2f}" if np.isfinite(va).all() else ""  # a layout without VA: none
    lines = [expr_name, va_text, " ".join(au_on) or "no AU"]
    scale = max(0.4, bgr.shape[1] / 1200)
    y = int(22 * scale / 0.5)
    for text in lines:
        cv2.putText(bgr, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(bgr, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)
        y += int(20 * scale / 0.5)


def face_boxes(affines: np.ndarray, size: int = 112) -> np.ndarray:
    """(n, 4) boxes in frame pixels: the 112x112 crop square mapped back through each frame→crop affine."""
    boxes = np.full((len(affines), 4), np.nan)
    corners = np.array([[0, 0], [size, 0], [size, size], [0, size]], float)
    for i, m in enumerate(affines):
        if not np.all(np.isfinite(m)):
            continue
        inv = cv2.invertAffineTransform(np.asarray(m, np.float64))
        pts = corners @ inv[:, :2].T + inv[:, 2]
        boxes[i] = [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]
    return boxes


def write_overlay(src: str | Path, out: str | Path, boxes: np.ndarray, preds: dict[str, np.ndarray],
                  decisions: dict[str, np.ndarray], expr_names: tuple[str, ...], au_names: tuple[str, ...]) -> Path:
    """Re-encode the video (H.264) with boxes and predictions drawn on each frame; the audio is copied.

    Frames go to the encoder in presentation order with their presentation timestamps, made strictly
    increasing (``overlay_pts``): an AVI with B-frames hands decoded frames decode-order pts, which the
    muxer refuses. The copied audio keeps its own timestamps, so it stays in sync with the pictures.
    """
    from data.video import presentation_frames  # here: the report's other writers need no decoder

    out = Path(out)
    n = len(next(iter(decisions.values())))
    expr = decisions.get("EXPR")
    au_on = decisions["AU"].astype(bool) if "AU" in decisions else np.zeros((n, 0), bool)
    va = preds["va"] if "va" in preds else np.full((n, 2), np.nan)
    # closed in reverse: the MP4 is finished before atomic_path renames it into place
    with (atomic_path(out) as tmp, av.open(str(src)) as inp, av.open(str(src)) as sound,
          open_overlay(tmp, inp) as dst):
        vin = inp.streams.video[0]
        rate = Fraction(vin.average_rate or 30).limit_denominator(1001)
        vout = dst.add_stream("libx264", rate=rate)
        vout.width, vout.height = vin.codec_context.width // 2 * 2, vin.codec_context.height // 2 * 2
        vout.pix_fmt = "yuv420p"
        # the encoder's clock too: at 1/rate, variable-frame-rate pts would round onto each other
        vout.time_base = vout.codec_context.time_base = vin.time_base
        audio = AudioCopy(sound, dst)
        pts = overlay_pts(presentation_frames(inp, vin), frame_ticks(rate, vin.time_base))
        for i, (frame, frame_pts) in enumerate(pts):
            if i >= n:
                break
            audio.copy_until(float(frame_pts * vin.time_base))  # interleaved: the muxer buffers little
            bgr = frame.to_ndarray(format="bgr24")[: vout.height, : vout.width].copy()
            names = [n for n, on in zip(au_names, au_on[i]) if on]
            draw_predictions(bgr, boxes[i], va[i], expr_names[expr[i]] if expr is not None else "", names)
            new = av.VideoFrame.from_ndarray(bgr, format="bgr24")
            new.pts, new.time_base = frame_pts, vin.time_base
            dst.mux(vout.encode(new))
        dst.mux(vout.encode())
        audio.copy_until(None)
    return out


def open_overlay(path: Path, inp: av.container.InputContainer) -> av.container.OutputContainer:
    """The output MP4, its movie clock (ticks/s) a multiple of the input video's: a late first frame (an
    AVI with B-frames starts one frame in) is then stored exactly in the edit list, not to the 1 ms."""
    den = inp.streams.video[0].time_base.denominator
    timescale = den if den >= 1000 else den * -(-1000 // den)
    return av.open(str(path), "w", options={"movie_timescale": str(timescale)})


def frame_ticks(rate: Fraction, time_base: Fraction) -> int:
    """One frame's duration in ``time_base`` ticks (at least 1)."""
    return max(1, round(1 / (rate * time_base)))


def overlay_pts(frames: Iterator[tuple[av.VideoFrame, int | None]], step: int
                ) -> Iterator[tuple[av.VideoFrame, int]]:
    """Each frame with a strictly increasing pts: its own, or the previous one + ``step`` where it has
    none or would not increase (duplicated timestamps)."""
    last: int | None = None
    for frame, pts in frames:
        if pts is None or (last is not None and pts <= last):
            pts = 0 if last is None else last + step
        last = pts
        yield frame, pts


class AudioCopy:
    """The first audio stream of an input, copied packet by packet (no re-encoding) into ``dst``."""

    def __init__(self, src: av.container.InputContainer, dst: av.container.OutputContainer):
        stream = src.streams.audio[0] if src.streams.audio else None
        self.out = dst.add_stream_from_template(stream) if stream is not None else None
        self.dst = dst
        # packets without dts (e.g. a demuxer's flush packet) cannot be muxed
        self.packets = (p for p in src.demux(stream) if p.dts is not None) if stream is not None else iter(())
        self.next = next(self.packets, None)

    def copy_until(self, seconds: float | None) -> None:
        """Mux the packets that start at or before ``seconds`` (None: all that are left)."""
        while self.next is not None and (seconds is None or self.next.dts * self.next.time_base <= seconds):
            self.next.stream = self.out
            self.dst.mux(self.next)
            self.next = next(self.packets, None)
