"""Query-string parsing with the contract's clamping rules and error shape."""

from __future__ import annotations

import re

from litestar import Request

from kroma.domain.errors import ValidationError

# What the reference's query parser reads as an integer (Rust's i64 FromStr): ASCII digits with an
# optional sign. Python's int() would also take "1_000" and non-ASCII digits.
_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)


def int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw.strip() == "":
        return default
    if not _INTEGER.fullmatch(raw.strip()):
        raise ValidationError(f"Query parameter '{name}' must be an integer")
    return int(raw.strip())


def limit_param(request: Request, default: int, maximum: int) -> int:
    """`limit` is clamped to 1..maximum, never rejected (a non-number is a 400)."""
    return max(1, min(maximum, int_param(request, "limit", default)))


def str_param(request: Request, name: str) -> str | None:
    return request.query_params.get(name)
