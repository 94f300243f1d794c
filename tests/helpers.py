"""Small helpers shared by several test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
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


def run_synthetic(out: Path, *args: str) -> str:
    """``python -m tools.synthetic --out OUT ARGS`` in this process; what it printed."""
    from tools.synthetic.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["--out", str(out), *args])
    return buf.getvalue()


def digests(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Relative path → sha256 of every file under root (``skip``: top-level entries left out)."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] not in skip}


def mtimes(root: Path) -> dict[str, int]:
    """Relative path → modification time (ns) of every file under root."""
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def added_to_copy(dataset: Path, out: Path, *args: str) -> tuple[Path, dict[str, int], str]:
    """A copy of a generated dataset (mtimes kept) at ``out`` that the generator was then run on with ``args``:
    (out, its videos' mtimes before the run, what the run printed)."""
    shutil.copytree(dataset, out)
    before = mtimes(out / "videos")
    return out, before, run_synthetic(out, *args)
