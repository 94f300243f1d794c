"""Models and what trains them: networks (each declaring the plug-in hooks of ``models.base``), their
device-side input steps, losses and semi-supervised methods. Built and loaded by name via
``models.registry``; the output layouts are data in tasks.py."""

from __future__ import annotations

from pathlib import Path


def load_published(path: str | Path):
    """A published checkpoint (TSAV, MTMT, EMMA, CoTEX's ``{'state_dicts': [...]}``) or one of ours → the model in
    eval mode, run as its authors ran it (``models.registry.load_model``; imported here on first use so that
    importing one model module does not import them all)."""
    from models.registry import load_model

    return load_model(path)
