"""Shared fixtures.

``mini_quick``: the quick mini Aff-Wild2 (``tools.synthetic.generate(..., seed=0, quick=True)``: 12 videos of
3 s, every special case) generated once per test session; the value is the dataset's root folder
(``meta.json`` in it describes every video and track). Treat it as read-only: copy or symlink what
a test needs to change.

``toy``: the small hand-made database of ``tests/toy_db.py`` (once per session; read-only too) and
``model``: a randomly initialised TSAV model (abaw2021 layout, seed 0, eval mode; one per module).

``mini_db``: the quick mini dataset's database (every video: val tracks, the two-person video, the faceless
stretch; with the PCM that --audio-window reference needs), built once per session; read-only.

``demo_db``: (database, abaw2021 annotation folder) of the full mini dataset that ``bash shs/demo.sh`` trains on:
``demo_out/`` when a demo has made it with this code's schema, else generated and built once per session (as
on CI). The learning checks of the systems share it; read-only.
``demo_lsd``: the LSD set of that mini dataset (``python -m tools.synthetic --lsd``): ``demo_out``'s when the demo
made it with this generator, else made once per session beside a link to the mini dataset's crops (the test never
writes into ``demo_out``).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from toy_db import make_toy_db

from data import store
from models.registry import build_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mini_quick(tmp_path_factory) -> Path:
    from tools import synthetic

    root = tmp_path_factory.mktemp("mini_quick")
    synthetic.generate(root, seed=0, quick=True)
    return root


@pytest.fixture(scope="session")
def mini_quick_extras(tmp_path_factory) -> Path:
    """A quick mini dataset generated from nothing with both opt-in sets in one command (``--lsd --lsd-per-class 20
    --unlabelled-faces 60``), shared by the tests of the two options."""
    import contextlib
    import io

    from tools.synthetic.cli import main

    out = tmp_path_factory.mktemp("mini_quick_extras")
    with contextlib.redirect_stdout(io.StringIO()):
        main(["--out", str(out), "--seed", "0", "--quick", "--lsd", "--lsd-per-class", "20",
              "--unlabelled-faces", "60"])
    return out


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


def current_schema(db: Path) -> bool:
    """Whether a database (e.g. the demo's, from an earlier checkout) has this code's schema."""
    with store.Store(db) as d:
        return (d.schema() or {}).get("version") == store.SCHEMA_VERSION


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory) -> tuple[Path, Path]:
    db = ROOT / "demo_out" / "db"
    annotations = ROOT / "demo_out" / "mini_affwild2" / "annotations" / "abaw2021"
    if (db / "data.mdb").is_file() and annotations.is_dir() and current_schema(db):
        return db, annotations
    from tools import synthetic

    root = tmp_path_factory.mktemp("demo")
    data = root / "mini"
    synthetic.generate(data, seed=0)
    db, annotations = root / "db", data / "annotations" / "abaw2021"
    subprocess.run([sys.executable, "create_database.py", "--videos", str(data / "videos"), "--annotations",
                    str(annotations), "--test-lists", *map(str, sorted((data / "test_sets").glob("*.txt"))),
                    "--out", str(db), "--workers", "2"], cwd=ROOT, check=True)
    return db, annotations


@pytest.fixture(scope="session")
def demo_lsd(demo_db, tmp_path_factory) -> Path:
    from tools.synthetic.lsd import PER_CLASS, generate_lsd, state

    data = demo_db[1].parents[1]  # .../mini_affwild2/annotations/abaw2021 → the mini dataset
    if state(data, 0, False, PER_CLASS) == "complete":
        return data / "lsd"
    if data.is_relative_to(ROOT / "demo_out"):  # the user's demo folder: read it, write elsewhere
        linked = tmp_path_factory.mktemp("demo_lsd")
        for name in ("meta.json", "annotations", "cropped_aligned"):
            (linked / name).symlink_to(data / name)
        data = linked
    generate_lsd(data, 0, False, PER_CLASS)
    return data / "lsd"
