"""Benchmarks of every costly step against re-creations of TSAV's way (``python -m tools.bench --help``).

Re-exports the names the tests use. The command line (``main``, ``RUNNERS``, ``build_parser``, ``goals``)
lives in ``__main__.py`` and is imported on first use only: importing it here would make
``python -m tools.bench`` find ``tools.bench.__main__`` already imported and warn.
"""

from __future__ import annotations

import importlib

from tools.bench.common import FS_BLOCK, TsavStyleClips, bench_device, blocks, summary, write_wav

CLI_NAMES = ("main", "RUNNERS", "build_parser", "goals")

__all__ = ["FS_BLOCK", "TsavStyleClips", "bench_device", "blocks", "summary", "write_wav", *CLI_NAMES]


def __getattr__(name: str) -> object:
    if name in CLI_NAMES:
        return getattr(importlib.import_module("tools.bench.__main__"), name)
    raise AttributeError(f"module 'tools.bench' has no attribute {name!r}")
