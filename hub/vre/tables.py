"""Plain-text tables for the command-line tools."""

from __future__ import annotations


def print_table(rows: list[list], header: list[str]) -> None:
    """Print ``rows`` under ``header`` in aligned columns (None prints as empty)."""
    cells = [header] + [[("" if v is None else str(v)) for v in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for i, r in enumerate(cells):
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
