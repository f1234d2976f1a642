"""API tokens (contract §3.14, §5): format, hashing, expiry, create/revoke decisions (pure).

Each token is its own stream `token:<id>`: `token.created` {token_id, user_id, project_id?,
token_hash, token_prefix, label, expires_at} and at most one `token.revoked` {token_id,
project_id?}. The plaintext token exists only in the create response: the log keeps its SHA-256
hash and its 12-character prefix.

First-token bootstrap: the unauthenticated create reserves the stream
`auth:bootstrap-generation:<n>` with NO_STREAM in the same atomic append as its token, where `n`
is the number of generations reserved before (the bootstrap re-opens each time every token is
revoked or expired). Two racing bootstrap creates pick the same `n`, so the store lets exactly one
of them commit; the other answers 400 "Bootstrap token already initialized".
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec

from kroma.domain.errors import NotFound, ValidationError
from kroma.events.envelope import Event, Metadata, NewEvent

TOKEN_PREFIX = "kroma_"
PREFIX_LEN = 12
LABEL_MAX = 200
NOT_FOUND = "Auth token not found"
BOOTSTRAP_TAKEN = "Bootstrap token already initialized"
BOOTSTRAP_PRINCIPAL = "bootstrap_first_token"


class CreateToken(msgspec.Struct, omit_defaults=True):
    label: str | None = None
    project_slug: str | None = None
    expires_at: str | None = None


def token_stream(token_id: str) -> str:
    return f"token:{token_id}"


def bootstrap_stream(generation: int) -> str:
    return f"auth:bootstrap-generation:{generation}"


def generate_token() -> str:
    """`kroma_` + two UUIDv4 in simple (32-hex) form: 70 characters."""
    return TOKEN_PREFIX + uuid.uuid4().hex + uuid.uuid4().hex


def hash_token(token: str) -> str:
    """Lower-case hex SHA-256 of the token text (no salt: tokens are 244 random bits)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_prefix(token: str) -> str:
    return token[:PREFIX_LEN]


def clean_label(label: str | None) -> str:
    return (label or "").strip()[:LABEL_MAX]


# -- expires_at ----------------------------------------------------------------------------------

# ASCII digits only, matched in full (`fullmatch`: `$` would let a trailing newline through).
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
_DATE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)


def _invalid_expiry(raw: str) -> ValidationError:
    return ValidationError(
        f"Invalid expires_at format: '{raw}'. Expected ISO8601 (YYYY-MM-DDTHH:MM:SSZ) or date (YYYY-MM-DD)"
    )


def _fraction(nanos: int) -> str:
    """chrono's `to_rfc3339` (SecondsFormat::AutoSi): none, 3, 6 or 9 digits."""
    if nanos == 0:
        return ""
    if nanos % 1_000_000 == 0:
        return f".{nanos // 1_000_000:03d}"
    if nanos % 1_000 == 0:
        return f".{nanos // 1_000:06d}"
    return f".{nanos:09d}"


def parse_expires_at(raw: str | None) -> str | None:
    """None for no expiry (absent or exactly ""); else the UTC RFC 3339 text with a `+00:00`
    offset. A date alone means 23:59:59 UTC that day. Anything else (whitespace included) is 400."""
    if raw is None or raw == "":
        return None
    try:
        m = _RFC3339.fullmatch(raw)
        if m:
            y, mo, d, h, mi, s = (int(g) for g in m.groups()[:6])
            digits, offset = m.group(7), m.group(8)
            nanos = int(digits[:9].ljust(9, "0")) if digits else 0
            if offset in ("Z", "z"):
                tz = UTC
            else:
                sign = -1 if offset[0] == "-" else 1
                oh, om = int(offset[1:3]), int(offset[4:6])
                if oh > 23 or om > 59:
                    raise ValueError(offset)
                tz = timezone(sign * timedelta(hours=oh, minutes=om))
            at = datetime(y, mo, d, h, mi, s, tzinfo=tz).astimezone(UTC)
            return at.strftime("%Y-%m-%dT%H:%M:%S") + _fraction(nanos) + "+00:00"
        m = _DATE.fullmatch(raw)
        if m:
            at = datetime(int(m[1]), int(m[2]), int(m[3]), 23, 59, 59, tzinfo=UTC)
            return at.strftime("%Y-%m-%dT%H:%M:%S") + "+00:00"
    except (ValueError, OverflowError):
        pass
    raise _invalid_expiry(raw)


def is_active(expires_at: str | None, revoked_at: str | None, now_seconds: str) -> bool:
    """Not revoked, and no expiry or `expires_at > now` compared as text (as the contract does:
    `+00:00` text against a `Z` now, so a token expiring this very second is already inactive)."""
    return revoked_at is None and (expires_at is None or expires_at > now_seconds)


# -- decisions -----------------------------------------------------------------------------------


def decide_create(
    *,
    token_id: str,
    user_id: str,
    project_id: str | None,
    token: str,
    label: str,
    expires_at: str | None,
    meta: Metadata,
) -> NewEvent:
    data: dict[str, Any] = {
        "token_id": token_id,
        "user_id": user_id,
        "token_hash": hash_token(token),
        "token_prefix": token_prefix(token),
        "label": label,
        "expires_at": expires_at,
    }
    if project_id is not None:
        data["project_id"] = project_id
    return NewEvent(token_stream(token_id), "token.created", data, meta)


def decide_bootstrap_reservation(generation: int, token_id: str, meta: Metadata) -> NewEvent:
    return NewEvent(
        bootstrap_stream(generation),
        "token.bootstrap_reserved",
        {"generation": generation, "token_id": token_id},
        meta,
    )


def decide_revoke(history: list[Event], meta: Metadata) -> NewEvent | None:
    """The revoke event, or None when the token is already revoked (revoke is idempotent and
    keeps the first timestamp). Raises 404 for an unknown token."""
    if not history or history[0].type != "token.created":
        raise NotFound(NOT_FOUND)
    if any(e.type == "token.revoked" for e in history):
        return None
    created = history[0].data
    data: dict[str, Any] = {"token_id": created["token_id"]}
    if created.get("project_id") is not None:
        data["project_id"] = created["project_id"]
    return NewEvent(history[0].stream_id, "token.revoked", data, meta)
