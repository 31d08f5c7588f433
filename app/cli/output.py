"""What the command line prints for people: rounded numbers, one null marker, plain aligned
tables on stdout. Machines get full precision with ``--json`` (and ``--out`` files)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import Any

import typer

NULL = "—"  # the one marker for "no value", in every table
SIGNIFICANT = 4  # digits of a float shown to people


def human(value: Any) -> str:
    """A value as people read it: floats to 4 significant digits (no exponent below 10^6),
    non-finite floats as NaN/Infinity, None as the null marker."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        if value != 0 and 1000 <= abs(value) < 1e6:
            return f"{value:.0f}" if abs(value) >= 10**SIGNIFICANT else f"{value:.1f}"
        return f"{value:.{SIGNIFICANT}g}"
    return str(value)


def table(title: str | None, rows: Iterable[tuple[str, Any]]) -> str:
    """Key/value rows, keys aligned; each key appears once (the first value wins)."""
    seen: dict[str, str] = {}
    for key, value in rows:
        seen.setdefault(key, human(value))
    width = max((len(k) for k in seen), default=0)
    lines = [title] if title else []
    lines += [f"{key.ljust(width)}  {value}" for key, value in seen.items()]
    return "\n".join(lines)


def columns(header: list[str], rows: list[list[Any]]) -> str:
    """A table with a header row; every column left-aligned to its widest cell."""
    cells = [header, *[[human(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )


def emit(text: str) -> None:
    """A result, on stdout (progress and problems go to stderr)."""
    typer.echo(text)


def emit_json(payload: Any) -> None:
    """Full precision, non-finite values as the API writes them ("NaN", "Infinity")."""
    typer.echo(json.dumps(payload, indent=2, allow_nan=False))
