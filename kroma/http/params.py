"""Query-string parsing with the contract's clamping rules and error shape."""

from __future__ import annotations

from litestar import Request

from kroma.domain.errors import ValidationError


def int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise ValidationError(f"Query parameter '{name}' must be an integer") from None


def limit_param(request: Request, default: int, maximum: int) -> int:
    """`limit` is clamped to 1..maximum, never rejected (a non-number is a 400)."""
    return max(1, min(maximum, int_param(request, "limit", default)))


def str_param(request: Request, name: str) -> str | None:
    return request.query_params.get(name)
