"""Shared fixtures.

``mini_quick``: the quick mini Aff-Wild2 (``tools.synthetic.generate(..., seed=0, quick=True)``: 12 videos of
3 s, every special case) generated once per test session; the value is the dataset's root folder
(``meta.json`` in it describes every video and track). Treat it as read-only: copy or symlink what
a test needs to change.

``toy``: the small hand-made database of ``tests/toy_db.py`` (once per session; read-only too) and
``model``: a randomly initialised TSAV model (abaw2021 layout, seed 0, eval mode; one per module).

``mini_db``: the quick mini dataset's database (every video: val tracks, the two-person video, the faceless
stretch; with the PCM that --audio-window reference needs), built once per session; read-only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from toy_db import make_toy_db

from models.registry import build_model


@pytest.fixture(scope="session")
def mini_quick(tmp_path_factory) -> Path:
    from tools import synthetic

    root = tmp_path_factory.mktemp("mini_quick")
    synthetic.generate(root, seed=0, quick=True)
    return root


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    return make_toy_db(tmp_path_factory.mktemp("toy") / "db")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("tsav", "abaw2021").eval()


@pytest.fixture(scope="session")
def mini_db(mini_quick, tmp_path_factory) -> Path:
    import create_database

    out = tmp_path_factory.mktemp("infer_db") / "db"
    rc = create_database.main(["--videos", str(mini_quick / "videos"), "--annotations",
                               str(mini_quick / "annotations" / "abaw2021"), "--test-lists",
                               *map(str, sorted((mini_quick / "test_sets").glob("*.txt"))),
                               "--out", str(out), "--workers", "2", "--store-pcm"])
    assert rc == 0
    return out
