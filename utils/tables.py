"""Plain-text tables for the terminal: a header, a rule of dashes, one line per row, columns padded to fit."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def format_table(header: Sequence[object], rows: Iterable[Sequence[object]], right: bool = False) -> list[str]:
    """The table's lines. Cells are shown with ``str``; every column is as wide as its widest cell.

    ``right``: the columns after the first are right-aligned (tables of figures); else all are left-aligned.
    Trailing spaces are dropped.
    """
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(x) for x in col) for col in zip(*cells)]
    cells.insert(1, ["-" * w for w in widths])
    return ["  ".join(x.rjust(w) if right and i else x.ljust(w) for i, (x, w) in enumerate(zip(r, widths))).rstrip()
            for r in cells]


def print_table(header: Sequence[object], rows: Iterable[Sequence[object]], title: str | None = None,
                right: bool = False) -> None:
    """Print the table; a ``title`` goes on its own line after an empty one, above the header."""
    if title is not None:
        print(f"\n{title}")
    print("\n".join(format_table(header, rows, right)))
