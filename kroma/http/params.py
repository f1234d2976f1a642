"""Query-string and body parsing with the contract's rules and error shape."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec
from litestar import Request

from kroma.domain.errors import ValidationError
from kroma.http.errors import describe_decode_error

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


T = TypeVar("T")


async def strict_body(request: Request, kind: type[T]) -> T:
    """The JSON body decoded with no type coercion (`"2"` is not an integer, `"true"` not a
    boolean), as the reference's typed extractor refused them; the contract's 400 otherwise."""
    body = await request.body()
    try:
        return msgspec.json.decode(body or b"null", type=kind)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValidationError(describe_decode_error(str(exc))) from None
