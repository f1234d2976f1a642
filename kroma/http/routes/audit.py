"""The audit API: the mutations recorded in the event log, one entry per command.

`GET /api/audit` (every project, tokens included) and `GET /api/projects/{slug}/audit` (one
project). Entries come from the `audit` read model (`kroma.projections.audit`): actor (user and
token id), time, type, the affected entity and a summary built from safe fields only.

Query: `type` (repeat or comma-list), `actor` (a user id, a token id or a username; repeat or
comma-list), `since` / `until` (inclusive bounds on the time: RFC 3339, or a date meaning that
whole day), `after` (position, exclusive) and `limit` (default 100, clamped to 1..1000). The page
is in log order; `next_after` is the last entry's position (or `after` when empty).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

from litestar import Request, Response, Router, get
from litestar.params import FromPath

from kroma.clock import iso_micro
from kroma.domain.errors import ValidationError
from kroma.domain.slugs import normalize_slug
from kroma.domain.users import user_id_for
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row
from kroma.http.params import int_param, limit_param
from kroma.projections.audit import query_entries
from kroma.services import Services

MAX_PAGE = 1000


def _list_param(request: Request, name: str) -> list[str]:
    return [v.strip() for raw in request.query_params.getall(name, []) for v in raw.split(",") if v.strip()]


def _time_param(request: Request, name: str, end_of_day: bool) -> str | None:
    raw = (request.query_params.get(name) or "").strip()
    if not raw:
        return None
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            at = datetime.combine(day, time.max if end_of_day else time.min, UTC)
        else:
            at = datetime.fromisoformat(raw.replace("z", "Z"))
            at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    except ValueError:
        raise ValidationError(
            f"Query parameter '{name}' must be an ISO8601 timestamp (YYYY-MM-DDTHH:MM:SSZ) or date (YYYY-MM-DD)"
        ) from None
    return iso_micro(at)


def _actors(request: Request) -> list[str]:
    """Ids as given, plus the user id of each value read as a username."""
    out: list[str] = []
    for value in _list_param(request, "actor"):
        out.append(value)
        username = normalize_slug(value)
        if username is not None:
            out.append(user_id_for(username))
    return list(dict.fromkeys(out))


def _filters(request: Request) -> dict[str, Any]:
    """Every query parameter, checked before any lookup."""
    return {
        "after": max(0, int_param(request, "after", 0)),
        "limit": limit_param(request, 100, MAX_PAGE),
        "types": _list_param(request, "type") or None,
        "actors": _actors(request) or None,
        "since": _time_param(request, "since", end_of_day=False),
        "until": _time_param(request, "until", end_of_day=True),
    }


async def _page(services: Services, filters: dict[str, Any], project_id: str | None) -> dict[str, Any]:
    entries = await query_entries(services.reader, project_id=project_id, **filters)
    next_after = entries[-1]["position"] if entries else filters["after"]
    return {"count": len(entries), "audit_events": entries, "next_after": next_after}


@get("/api/audit")
async def audit(services: ServicesDep, request: Request) -> Response[bytes]:
    return responses.ok(**await _page(services, _filters(request), None))


@get("/api/projects/{slug:str}/audit")
async def project_audit(slug: FromPath[str], services: ServicesDep, request: Request) -> Response[bytes]:
    filters = _filters(request)
    project = await project_row(services, slug)
    return responses.ok(project_id=project["id"], **await _page(services, filters, project["id"]))


router = Router("/", route_handlers=[audit, project_audit], tags=["audit"])
