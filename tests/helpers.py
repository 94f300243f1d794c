"""Small helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

# The published checkpoints' key lists (../shared/reference, or ABAW_REFERENCE_DIR).
REFERENCE = Path(os.environ.get("ABAW_REFERENCE_DIR", Path(__file__).resolve().parents[2] / "shared" / "reference"))


def read_key_list(path: Path) -> dict[str, tuple[str, str]]:
    """{key: (shape, dtype)} of a checkpoint_keys_*.txt file, in file order."""
    entries = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, shape, dtype = line.split()
            entries[key] = (shape, dtype)
    return entries


def describe(state: dict[str, torch.Tensor]) -> dict[str, tuple[str, str]]:
    """A state dict in the key lists' terms: {key: (shape 'AxB' or 'scalar', dtype)}."""
    return {k: ("scalar" if v.dim() == 0 else "x".join(map(str, v.shape)), str(v.dtype).removeprefix("torch."))
            for k, v in state.items()}


def subset(root: Path, names: list[str], dst: Path) -> Path:
    """A videos folder holding symlinks to some of the generator's videos."""
    meta = json.loads((root / "meta.json").read_text())
    dst.mkdir(parents=True)
    for v in meta["videos"]:
        if v["name"] in names:
            (dst / Path(v["path"]).name).symlink_to(root / v["path"])
    return dst
