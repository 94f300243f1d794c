"""What a person looks at after predicting one video: a per-frame CSV, a timeline plot, an overlay MP4.

Per-frame predictions are plain arrays (the contract of the inference stage):
``{"va": (n, 2) floats in [-1, 1], "expr_prob": (n, C) class probabilities, "au_prob": (n, K) AU
probabilities}`` plus the class and AU names and the AU decision threshold.
"""

from __future__ import annotations

import csv
import os
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np

CSV_LEAD = ("frame", "timestamp", "face_id", "success", "confidence")

# Expression colours for the plot band and the overlay (RGB, 0-255), one per class name.
EXPR_COLOURS = {
    "Neutral": (160, 160, 160), "Anger": (220, 40, 40), "Disgust": (120, 160, 40), "Fear": (140, 80, 200),
    "Happiness": (250, 200, 30), "Sadness": (40, 90, 220), "Surprise": (250, 130, 30), "Other": (90, 60, 40),
}


def csv_header(expr_names: tuple[str, ...], au_names: tuple[str, ...]) -> list[str]:
    return (list(CSV_LEAD) + ["valence", "arousal", "expression"] + [f"p_{n}" for n in expr_names]
            + [f"p_{n}" for n in au_names] + list(au_names))


def write_frame_csv(path: str | Path, times: np.ndarray, has_face: np.ndarray, confidence: np.ndarray,
                    preds: dict[str, np.ndarray], expr_names: tuple[str, ...], au_names: tuple[str, ...],
                    au_threshold: float = 0.5, face_id: int = 0) -> Path:
    """One row per decoded frame, OpenFace-like lead columns, then VA, expression, AU probabilities and 0/1."""
    n = len(times)
    for key, arr in preds.items():
        if len(arr) != n:
            raise ValueError(f"{key} has {len(arr)} rows for {n} frames")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    expr = preds["expr_prob"].argmax(1)
    au_on = (preds["au_prob"] >= au_threshold).astype(int)
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(csv_header(expr_names, au_names))
        for i in range(n):
            w.writerow([i, f"{times[i]:.3f}", face_id, int(has_face[i]), f"{confidence[i]:.3f}",
                        f"{preds['va'][i, 0]:.4f}", f"{preds['va'][i, 1]:.4f}", expr_names[expr[i]]]
                       + [f"{p:.4f}" for p in preds["expr_prob"][i]] + [f"{p:.4f}" for p in preds["au_prob"][i]]
                       + au_on[i].tolist())
    os.replace(tmp, path)
    return path


def plot_timeline(path: str | Path, times: np.ndarray, has_face: np.ndarray, preds: dict[str, np.ndarray],
                  expr_names: tuple[str, ...], au_names: tuple[str, ...], au_threshold: float = 0.5,
                  title: str = "") -> Path:
    """PNG: valence/arousal curves, an expression colour band, an AU raster, faceless frames shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    t = np.asarray(times, float)
    fig, (ax_va, ax_ex, ax_au) = plt.subplots(
        3, 1, figsize=(12, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 0.6, 0.25 * len(au_names) + 0.6]})
    ax_va.plot(t, preds["va"][:, 0], label="valence", color="tab:blue", lw=1.2)
    ax_va.plot(t, preds["va"][:, 1], label="arousal", color="tab:red", lw=1.2)
    ax_va.set_ylim(-1.05, 1.05)
    ax_va.axhline(0, color="k", lw=0.5)
    ax_va.legend(loc="upper right", fontsize=8)
    ax_va.set_ylabel("VA")
    for a, b in runs(~np.asarray(has_face, bool)):
        for ax in (ax_va, ax_ex, ax_au):
            ax.axvspan(t[a], t[min(b, len(t) - 1)], color="0.85", zorder=0)
    expr = preds["expr_prob"].argmax(1)
    colours = np.array([EXPR_COLOURS.get(n, (0, 0, 0)) for n in expr_names], float) / 255
    edges = np.append(t, t[-1] + (t[-1] - t[-2] if len(t) > 1 else 1 / 30))
    ax_ex.pcolormesh(edges, [0, 1], colours[expr][None], shading="flat")
    ax_ex.set_yticks([])
    ax_ex.set_ylabel("EXPR")
    ax_ex.legend(handles=[Patch(color=colours[k], label=n) for k, n in enumerate(expr_names)],
                 loc="upper center", bbox_to_anchor=(0.5, -0.05), ncol=len(expr_names), fontsize=7, frameon=False)
    on = (preds["au_prob"] >= au_threshold).T.astype(float)
    ax_au.pcolormesh(edges, np.arange(len(au_names) + 1), on, cmap="Greys", vmin=0, vmax=1, shading="flat")
    ax_au.set_yticks(np.arange(len(au_names)) + 0.5, au_names, fontsize=7)
    ax_au.invert_yaxis()
    ax_au.set_xlabel("time (s)")
    if title:
        ax_va.set_title(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
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
    lines = [f"{expr_name}", f"V {va[0]:+.2f}  A {va[1]:+.2f}", " ".join(au_on) or "no AU"]
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
                  expr_names: tuple[str, ...], au_names: tuple[str, ...], au_threshold: float = 0.5) -> Path:
    """Re-encode the video (H.264) with boxes and predictions drawn on each frame; the audio is copied."""
    out = Path(out)
    tmp = out.with_name(f".{out.stem}.partial.mp4")
    expr = preds["expr_prob"].argmax(1)
    au_on = preds["au_prob"] >= au_threshold
    with av.open(str(src)) as inp, av.open(str(tmp), "w") as dst:
        vin = inp.streams.video[0]
        rate = Fraction(vin.average_rate or 30).limit_denominator(1001)
        vout = dst.add_stream("libx264", rate=rate)
        vout.width, vout.height = vin.codec_context.width // 2 * 2, vin.codec_context.height // 2 * 2
        vout.pix_fmt = "yuv420p"
        vout.time_base = vin.time_base
        ain = inp.streams.audio[0] if inp.streams.audio else None
        aout = dst.add_stream_from_template(ain) if ain is not None else None
        streams = [vin] + ([ain] if ain is not None else [])
        i = 0
        for packet in inp.demux(*streams):
            if packet.stream is ain:
                if packet.dts is not None:
                    packet.stream = aout
                    dst.mux(packet)
                continue
            for frame in packet.decode():
                if i >= len(expr):
                    break
                bgr = frame.to_ndarray(format="bgr24")[: vout.height, : vout.width].copy()
                names = [n for n, on in zip(au_names, au_on[i]) if on]
                draw_predictions(bgr, boxes[i], preds["va"][i], expr_names[expr[i]], names)
                new = av.VideoFrame.from_ndarray(bgr, format="bgr24")
                new.pts = frame.pts  # original timestamps keep the copied audio in sync
                new.time_base = vin.time_base
                for p in vout.encode(new):
                    dst.mux(p)
                i += 1
        for p in vout.encode():
            dst.mux(p)
    os.replace(tmp, out)
    return out
