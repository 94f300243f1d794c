"""Cached inference for a model whose sample is a block of *selected* frames (``InputSpec.block == 'selected'``,
CNU_ADL): the face network runs once per face frame and the heads slide over its cached outputs.

At inference the selected frames are the frames with a face (``data.blocks``, the test selection): a frame's
block is the last T face frames up to and including it, gaps skipped, the first face frame repeated at the
track's start, so a sample reaches back an unbounded number of source frames and T face-network passes per
frame would cost T times the work. Instead a track is fed chunk by chunk (``BlockStream.push_chunk``): each
face frame of a chunk goes through the model's ``frame_outputs`` once; the chunk's blocks are cut by
``data.blocks.block_indices`` from the carry (the features and probabilities of the last T − 1 face frames
before the chunk) followed by the chunk's face frames, and ``block_head`` turns them into outputs, the numbers
``model(prepare(block pixels))`` gives. Memory holds one chunk of pixels, its per-frame outputs and the carry;
only the scores grow with the track.

Frames without a face have no block of their own: they get the scores of the last face frame before them
(CNU_ADL held its prediction from the last face frame), frames before the first face frame those of the first
face frame, and a track without any face the model's output on a black block, so every frame has scores.
The database path (``predict_block_sources``, which ``app.inference.predict_sources`` routes to) and the video
path (``app.video_stream.RollingClips``) both feed a ``BlockStream``, so they give the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from app.inference import Chunk, ChunkFrames, TrackSource, autocast, empty_scores, progress_bar, run_model
from data.blocks import block_indices
from data.reader import flip_frames
from models.base import model_input, prepare_inputs, unwrap_model
from utils.inputs import PIXELS
from utils.outputs import output_scores


def is_block_model(model: nn.Module) -> bool:
    """True for a model whose blocks are made of the track's selected frames (served by this module)."""
    return model_input(model).block == "selected"


class BlockStream:
    """One track's frames, chunk by chunk, in order → the scores of its target frames (module docstring).

    The caller puts the model in eval mode. ``push_chunk`` reads only the pixels of face frames; ``finish``
    returns the scores of every target pushed, in order (the ``app.inference`` contract).
    """

    def __init__(self, model: nn.Module, batch_size: int = 64, device: torch.device | str = "cpu",
                 amp: str = "none", channels_last: bool = False, flip_tta: bool = False):
        self.model, self.bare, self.spec = model, unwrap_model(model), model_input(model)
        if self.spec.block != "selected":
            raise ValueError(f"cached block inference serves 'selected' frame blocks, not {self.spec}")
        self.length = self.spec.clip_len
        self.batch_size, self.device, self.amp = batch_size, torch.device(device), amp
        self.channels_last, self.flip_tta = channels_last, flip_tta
        self.decision = getattr(self.bare, "decision", "default")
        # per view (plain, flipped): (features, probabilities) of the last T − 1 face frames, on the device
        self.carry: list[tuple[Tensor, Tensor] | None] = [None] * (2 if flip_tta else 1)
        self.last: dict[str, Tensor] | None = None  # the scores (one row, CPU) of the last face frame so far
        self.pending = 0  # targets before the first face frame: they wait for its scores
        self.outputs: dict[str, list[Tensor]] = {}

    @torch.no_grad()
    def push_chunk(self, frames: np.ndarray | Tensor, face: np.ndarray, targets: np.ndarray | None = None) -> None:
        """The track's next C source frames: ``frames`` uint8 (C, S, S, 3) at the model's size (rows without a
        face are never read), ``face`` (C,) bool; ``targets``: the sorted chunk-local frames to score (None:
        all C). Every face frame feeds the carry, target or not."""
        face = np.asarray(face, bool)
        if len(frames) != len(face):
            raise ValueError(f"{len(frames)} frames but {len(face)} face flags")
        targets = np.arange(len(face)) if targets is None else np.asarray(targets, np.int64)
        faces = np.flatnonzero(face)
        if not len(faces):
            if self.last is None:
                self.pending += len(targets)
            else:
                self._append({k: v.expand(len(targets), -1) for k, v in self.last.items()})
            return
        scores = self._face_scores(torch.as_tensor(frames)[torch.as_tensor(faces)])
        # each target's row: the last face frame at or before it in this chunk (−1: none) ...
        rows = np.searchsorted(faces, targets, side="right") - 1
        if self.last is None:  # ... before the track's first face frame: the first face frame's scores
            if self.pending:
                self._append({k: v[:1].expand(self.pending, -1) for k, v in scores.items()})
                self.pending = 0
            table, rows = scores, np.maximum(rows, 0)
        else:  # ... else the last face frame of the earlier chunks (row 0)
            table, rows = {k: torch.cat([self.last[k], v]) for k, v in scores.items()}, rows + 1
        self._append({k: v[torch.as_tensor(rows)] for k, v in table.items()})
        self.last = {k: v[-1:] for k, v in scores.items()}

    @torch.no_grad()
    def finish(self) -> dict[str, np.ndarray]:
        """The scores of every target pushed, in order; a track without any face: the model on a black block."""
        if self.pending:
            s = self.spec
            black = torch.zeros((1, self.length, 3, s.size, s.size), dtype=torch.uint8)
            scores = run_model(self.model, {PIXELS: black}, self.device, self.amp, self.channels_last)
            self._append({k: v.cpu().float().expand(self.pending, -1) for k, v in scores.items()})
            self.pending = 0
        if not self.outputs:
            return empty_scores(self.model)
        return {k: torch.cat(v).numpy() for k, v in self.outputs.items()}

    def _append(self, scores: dict[str, Tensor]) -> None:
        for k, v in scores.items():
            self.outputs.setdefault(k, []).append(v.contiguous())

    def _face_scores(self, pixels: Tensor) -> dict[str, Tensor]:
        """uint8 (N, S, S, 3) face frames → the scores (CPU) of their N blocks; the carry moves on by N."""
        views = [pixels]
        if self.flip_tta:
            views.append(torch.from_numpy(flip_frames(pixels.numpy(), self.spec.mask)))
        out: dict[str, Tensor] = {}
        for v, view in enumerate(views):
            feats, probs = self._frame_outputs(view)
            old = 0
            if self.carry[v] is not None:
                old = len(self.carry[v][0])
                feats, probs = torch.cat([self.carry[v][0], feats]), torch.cat([self.carry[v][1], probs])
            # the carry's frames are the earlier selected frames; at the track's start block_indices pads
            blocks = torch.as_tensor(block_indices(np.ones(len(feats), bool), self.length)[old:], device=self.device)
            with autocast(self.device, self.amp):
                outputs = self.bare.block_head(feats, probs, blocks)
            scores = {k: s.cpu() for k, s in output_scores(outputs, self.bare.layout, self.decision).items()}
            keep = len(feats) - (self.length - 1)
            self.carry[v] = (feats[keep:], probs[keep:]) if keep > 0 else (feats, probs)
            out = scores if not out else {k: (out[k] + scores[k]) / 2 for k in out}
        return out

    def _frame_outputs(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        """uint8 (N, S, S, 3) → (features, probabilities) on the device, ``batch_size`` frames per pass."""
        feats, probs = [], []
        for b0 in range(0, len(pixels), self.batch_size):
            raw = {PIXELS: pixels[b0:b0 + self.batch_size].permute(0, 3, 1, 2)[:, None]}  # B×1×3×S×S
            x = prepare_inputs(self.model, raw, self.device, channels_last=self.channels_last)["frames"][:, 0]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.amp):
                f, p = self.bare.frame_outputs(x)
            feats.append(f)
            probs.append(p)
        return torch.cat(feats), torch.cat(probs)


def plan_block_chunks(sources: list[TrackSource], targets: list[np.ndarray | None], chunk: int) -> list[Chunk]:
    """Chunks of at most ``chunk`` source frames from every source's first frame to its last target (None: every
    frame), or to its first face frame if that comes later (targets before it take its scores): each face frame
    up to there feeds the carry, so chunks without targets are there too."""
    out = []
    for s, (src, want) in enumerate(zip(sources, targets, strict=True)):
        want = np.arange(len(src)) if want is None else np.unique(np.asarray(want, np.int64))
        if not len(want):
            continue
        if want[0] < 0 or want[-1] >= len(src):
            raise IndexError(f"track {src.name}: frames to predict outside 0..{len(src) - 1}")
        faces = np.flatnonzero(src.face)
        end = max(int(want[-1]), int(faces[0]) if len(faces) else 0) + 1
        for c0 in range(0, end, chunk):
            c1 = min(c0 + chunk, end)
            out.append(Chunk(s, c0, c1, want[(want >= c0) & (want < c1)] - c0))
    return out


@torch.no_grad()
def predict_block_sources(model: nn.Module, sources: list[TrackSource], targets: list[np.ndarray | None] | None = None,
                          batch_size: int = 64, chunk: int = 512, workers: int = 0, device: torch.device | str = "cpu",
                          amp: str = "none", channels_last: bool = False, flip_tta: bool = False,
                          progress: bool = False) -> list[dict[str, np.ndarray]]:
    """``app.inference.predict_sources`` for a 'selected' block model: per-frame scores of the ``targets`` frames
    (None: all) of every source, one dict per source; each face frame decoded and through the face network once."""
    device = torch.device(device)
    targets = targets if targets is not None else [None] * len(sources)
    chunks = plan_block_chunks(sources, targets, chunk)
    data = ChunkFrames(sources, model_input(model), chunks)  # every face frame of a chunk, nothing else
    loader = DataLoader(data, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=2 if workers else None)
    results: list[dict[str, np.ndarray] | None] = [None] * len(sources)
    stream: BlockStream | None = None
    current = -1
    was_training = model.training
    model.eval()
    try:
        for c, host in zip(chunks, progress_bar(loader, progress, "predict", "chunk"), strict=True):
            if c.source != current:  # sources come in order: one track's stream at a time
                if stream is not None:
                    results[current] = stream.finish()
                stream, current = BlockStream(model, batch_size, device, amp, channels_last, flip_tta), c.source
            stream.push_chunk(host, sources[c.source].face[c.start:c.stop], c.targets)
        if stream is not None:
            results[current] = stream.finish()
    finally:
        model.train(was_training)
    return [r if r is not None else empty_scores(model) for r in results]
