"""SQL filters over the embedding table, built in one place: every literal is quoted or cast here,
so no caller pastes a value into a LanceDB `where` (a region or encoder id with a quote in it is a
value, never SQL)."""

from __future__ import annotations

import math
from collections.abc import Iterable


def literal(value: str | int | float) -> str:
    """A SQL literal: strings quoted with inner quotes doubled, numbers as finite numbers."""
    if isinstance(value, bool):
        raise TypeError("no boolean columns are filtered")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"a filter number must be finite, not {value}")
        return repr(int(value)) if isinstance(value, int) else repr(float(value))
    return "'" + str(value).replace("'", "''") + "'"


def equals(column: str, value: str | int | float) -> str:
    return f"{column} = {literal(value)}"


def not_equals(column: str, value: str | int | float) -> str:
    return f"{column} != {literal(value)}"


def is_in(column: str, values: Iterable[str | int | float]) -> str:
    return f"{column} IN ({', '.join(literal(v) for v in values)})"


def between(column: str, low: float, high: float) -> str:
    return f"{column} >= {literal(float(low))} AND {column} <= {literal(float(high))}"


def all_of(*parts: str | None) -> str | None:
    """The conjunction of the parts given, or None when there are none."""
    kept = [p for p in parts if p]
    return " AND ".join(kept) or None


def partition_filter(year: int, region: str) -> str:
    """The rows of one partition."""
    return all_of(equals("year", int(year)), equals("region", region))
