"""The audit trail over HTTP: the global log, one project's events, and a live SSE feed."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import msgspec
from litestar import Request, Response, Router, get
from litestar.params import FromPath
from litestar.response import ServerSentEvent, ServerSentEventMessage

from kroma import auth
from kroma.domain.errors import NotFound
from kroma.domain.handling import current_request
from kroma.events import verification
from kroma.events.envelope import Event
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row
from kroma.http.params import int_param, limit_param
from kroma.http.streams import acquire_stream
from kroma.projections.event_index import project_positions

MAX_PAGE = 1000


# Fields that are safe in the log (ciphertext, hashes, key ids) but have no business in an API
# answer: the HTTP views of the log show that they are there, not what they hold.
REDACTED_FIELDS = frozenset({"ciphertext", "token_hash", "key_id", "previous_key_id", "wrapped"})
REDACTED = "[redacted]"


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: REDACTED if k in REDACTED_FIELDS else _redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def event_view(event: Event) -> dict[str, Any]:
    view = msgspec.to_builtins(event)
    view["data"] = _redact(view["data"])
    return view


def _types(request: Request) -> list[str] | None:
    raw = request.query_params.getall("type", [])
    types = [t.strip() for value in raw for t in value.split(",") if t.strip()]
    return types or None


def _page(events: list[Event], after: int) -> dict[str, Any]:
    return {
        "count": len(events),
        "events": [event_view(e) for e in events],
        "next_after": events[-1].position if events else after,
    }


@get("/api/events")
async def list_events(services: ServicesDep, request: Request) -> Response[bytes]:
    """The global log from `after` (exclusive), oldest first; `type` filters (repeat or comma-list)."""
    after = max(0, int_param(request, "after", 0))
    events = await services.store.read_all(after, limit_param(request, 100, MAX_PAGE), _types(request))
    return responses.ok(**_page(events, after))


@get("/api/events/verify")
async def verify_log(services: ServicesDep) -> Response[bytes]:
    """The hash chain's verdict, as `kroma events verify --json` gives it: `intact`, `head`,
    `verified_through`, and for a broken chain the first bad `position` and the `reason`."""
    verdict = await verification.verify_store(services.store)
    return responses.ok(**msgspec.to_builtins(verdict))


@get("/api/events/{ref:str}")
async def show_event(ref: FromPath[str], services: ServicesDep) -> Response[bytes]:
    """One event by id or position."""
    event = None
    if ref.isdigit():
        found = await services.store.read_positions([int(ref)])
        event = found[0] if found else None
    else:
        event = await services.store.read_event(ref)
    if event is None:
        raise NotFound("Event not found")
    return responses.ok(event=event_view(event))


@get("/api/projects/{slug:str}/events")
async def project_events(slug: FromPath[str], services: ServicesDep, request: Request) -> Response[bytes]:
    row = await project_row(services, slug)
    after = max(0, int_param(request, "after", 0))
    positions = await project_positions(
        services.reader, row["id"], after, limit_param(request, 100, MAX_PAGE), _types(request)
    )
    events = await services.store.read_positions(positions)
    return responses.ok(project_id=row["id"], **_page(events, after))


@get("/api/events/stream")
async def stream_events(services: ServicesDep, request: Request) -> ServerSentEvent:
    """Server-Sent Events from `after` (or the Last-Event-ID header, which wins), then live.
    A stream opened with a token ends once that token is revoked or expired: each page is sent
    only after the read models show it and the token is still active then."""
    resume = request.headers.get("last-event-id", "").strip()
    after = int(resume) if resume.isdigit() else max(0, int_param(request, "after", 0))
    types = set(_types(request) or ())
    token_id = current_request.get().actor.token_id
    lease = acquire_stream(request)  # a bounded number per token: 429 past it

    async def feed() -> AsyncGenerator[ServerSentEventMessage, None]:
        position = after
        while not services.stopping:  # a stopping server ends its streams within a poll
            page = await services.store.read_all(position, 500)
            if token_id is not None:
                if page:
                    await services.settle(page[-1].position)
                if not await auth.still_active(services, token_id):
                    return
            if not page:
                await services.store.wait_for_append(position, 0.5)
                continue
            position = page[-1].position
            for event in page:
                if types and event.type not in types:
                    continue
                yield ServerSentEventMessage(
                    data=responses.encode(event_view(event)).decode(),
                    id=str(event.position),
                    event=event.type,
                )

    return ServerSentEvent(lease.hold(feed()), background=lease.background())


router = Router(
    "/", route_handlers=[list_events, stream_events, verify_log, show_event, project_events], tags=["events"]
)
