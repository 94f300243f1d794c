"""Device-side input steps the models' ``prepare`` hooks are made of.

The data layer serves uint8 pixels and dB audio windows (``utils.inputs``); turning them into network
inputs happens on the model's device — scaling, per-sample colour jitter, normalisation, the audio floor —
so 4× (pixels) and 2× (audio) fewer bytes travel between processes and to the GPU, and the per-pixel
arithmetic leaves the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchvision.transforms.functional as TF

from utils.inputs import IDENTITY_JITTER, JITTER, NORM_MEAN, NORM_STD, TEACHER_JITTER, TOP_DB

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_unit(pixels: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 → float32 in [0, 1] on ``device``."""
    return pixels.to(device, non_blocking=True).float().div_(255)


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], channel_dim: int) -> torch.Tensor:
    """Per-channel (x − mean) / std along ``channel_dim`` (counted from the start), on x's device."""
    shape = [1] * x.dim()
    shape[channel_dim] = len(mean)
    m = torch.tensor(mean, device=x.device, dtype=x.dtype).reshape(shape)
    s = torch.tensor(std, device=x.device, dtype=x.dtype).reshape(shape)
    return (x - m) / s


def color_jitter(rgb: torch.Tensor, factors: Sequence[float]) -> torch.Tensor:
    """N×3×H×W in [0, 1] → jittered copy (contrast uses each image's mean); identity factors are skipped."""
    b, c, s, h = factors
    if b != 1:
        rgb = TF.adjust_brightness(rgb, b)
    if c != 1:
        rgb = TF.adjust_contrast(rgb, c)
    if s != 1:
        rgb = TF.adjust_saturation(rgb, s)
    if h != 0:
        rgb = TF.adjust_hue(rgb, h)
    return rgb


def jitter_rgb(images: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Per-sample colour jitter of B×N×C×H×W images in [0, 1] (C ≥ 3: channels after the RGB ones, e.g. a
    mask, are untouched) with factors (B, 4) or (B, 2) (brightness, contrast)."""
    factors = factors.cpu().double()
    if factors.shape[1] == 2:
        factors = torch.cat([factors, torch.tensor([[1.0, 0.0]], dtype=factors.dtype).expand(len(factors), 2)], 1)
    identity = torch.tensor(IDENTITY_JITTER, dtype=factors.dtype)
    todo = (factors != identity).any(dim=1).nonzero().flatten().tolist()
    if not todo:
        return images
    out = images.clone()
    for b in todo:
        out[b, :, :3] = color_jitter(images[b, :, :3], factors[b].tolist())
    return out


def view_jitter(image: torch.Tensor, raw, view: str) -> torch.Tensor:
    """B×3×S×S floats with the colour-jitter factors drawn for ``view`` (the teacher's or the student's),
    unchanged when the batch carries none."""
    key = TEACHER_JITTER if view == "teacher" else JITTER
    return jitter_rgb(image.unsqueeze(1), raw[key]).squeeze(1) if key in raw else image


def imagenet_input(image: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """B×3×S×S floats in [0, 1] → ImageNet-normalised (channels-last memory when asked)."""
    image = normalise(image, IMAGENET_MEAN, IMAGENET_STD, channel_dim=1)
    return image.contiguous(memory_format=torch.channels_last) if channels_last else image


def finish_audio(db: torch.Tensor) -> torch.Tensor:
    """(B, …) dB windows → network input: floored TOP_DB under each window's maximum and normalised, float32
    (``data.audio.finish_window`` for a batch, on the batch's device)."""
    db = db.float()
    db = torch.maximum(db, db.amax(dim=tuple(range(1, db.dim())), keepdim=True) - TOP_DB)
    return (db - NORM_MEAN) / NORM_STD
