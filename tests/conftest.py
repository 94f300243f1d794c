"""Shared fixtures.

``mini_quick``: the quick mini Aff-Wild2 (``data.synthetic.generate(..., seed=0, quick=True)``: 12 videos of
3 s, every special case) generated once per test session; the value is the dataset's root folder
(``meta.json`` in it describes every video and track). Treat it as read-only: copy or symlink what
a test needs to change.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mini_quick(tmp_path_factory) -> Path:
    from data import synthetic

    root = tmp_path_factory.mktemp("mini_quick")
    synthetic.generate(root, seed=0, quick=True)
    return root
