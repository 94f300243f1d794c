"""Names that come from data (track names, image names of a list) before they become parts of a path.

A database, a test list or an annotation file is input we did not write: a track called ``../../x``
must not make a writer leave its output folder, and a list line ``../../secret/00001.jpg`` must not
make a checker open a file outside the submission. Every such name goes through ``safe_component``
(one path component) or ``safe_image_name`` (``<track>/<frame>.jpg``) first.
"""

from __future__ import annotations

import re

# Letters, digits and the punctuation Aff-Wild2 names use (``video_left``, ``1-30-1280x720``, ``a.b``).
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-+ ()]*")
_IMAGE = re.compile(r"([^/\\]+)/(\d+)\.(jpg|png)")


class UnsafeNameError(ValueError):
    """A name that would not be one harmless path component (one line: where it came from and why)."""


def safe_component(name: str, where: str = "") -> str:
    """``name`` unchanged if it is one plain path component, else ``UnsafeNameError`` naming ``where``.

    Refused: empty names, ``.``/``..``, anything with a slash or backslash, a leading dot or dash, NUL
    and other control characters, and names over 255 bytes.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(name, str) or not name:
        raise UnsafeNameError(f"{prefix}empty name")
    if len(name.encode("utf-8", "surrogatepass")) > 255 or not _COMPONENT.fullmatch(name) or name.endswith(" "):
        raise UnsafeNameError(f"{prefix}{name!r} is not a plain file name (letters, digits, '_', '-', '.', '+', "
                              f"spaces or parentheses, not starting with '.' or '-')")
    return name


def safe_image_name(name: str, where: str = "") -> tuple[str, int]:
    """``'<track>/<digits>.jpg'`` → (track, frame number); ``UnsafeNameError`` for anything else."""
    m = _IMAGE.fullmatch(name)
    if m is None:
        prefix = f"{where}: " if where else ""
        raise UnsafeNameError(f"{prefix}{name!r} is not '<track>/<number>.jpg'")
    return safe_component(m.group(1), where), int(m.group(2))
