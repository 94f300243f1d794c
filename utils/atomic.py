"""Write-then-rename: a file appears complete or not at all, whatever kills the writer.

Every writer goes through ``atomic_path``: it writes a hidden temporary file in the destination's folder
(same file system, so the rename is atomic) and, once the writer is done, renames it over the destination.
Readers see the old file or the new one, never half of one; a failed writer leaves the destination as it
was and no temporary file behind. The temporary name keeps the destination's suffix, so writers that pick
the format from it (``fig.savefig``, ``np.savez``, PyAV) write the right one.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def temp_name(path: Path) -> Path:
    """A fresh hidden name next to ``path`` with the same suffix: ``.<stem>.partial-<pid>-<random><suffix>``."""
    return path.with_name(f".{path.stem}.partial-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


@contextmanager
def atomic_path(path: str | Path, temp: str | Path | None = None, fsync: bool = False) -> Iterator[Path]:
    """Yield the temporary path to write ``path`` through; on a normal exit rename it over ``path``.

    The folder is created when missing. ``temp``: the temporary path to use (it must be in the same folder),
    e.g. a name that tells later runs who wrote it; default ``temp_name(path)``. ``fsync``: flush the file
    to the disk before the rename (checkpoints: a power cut must not leave a renamed but empty file).
    On any exception, KeyboardInterrupt included, the temporary file is removed and the exception raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(temp) if temp is not None else temp_name(path)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    """UTF-8 text, written as given (no newline translation)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, obj: object, indent: int | None = 2) -> Path:
    """``obj`` as JSON plus a final newline."""
    return write_text(path, json.dumps(obj, indent=indent) + "\n")
