"""Looking at what runs made: an asset's file, a run's contact sheet, and a run's live progress."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from litestar import Request, Response, Router, get
from litestar.datastructures import ETag
from litestar.params import FromPath
from litestar.response import File, ServerSentEvent, ServerSentEventMessage

from kroma.domain import runs as ev
from kroma.domain.errors import NotFound
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row
from kroma.http.routes.events import event_view
from kroma.http.routes.pipeline import RUN_NOT_FOUND, project_root_of
from kroma.http.streams import acquire_stream
from kroma.projections import runs as read
from kroma.run_files import asset_file, contact_sheet_png
from kroma.services import Services

ASSET_NOT_FOUND = "Asset not found"


@get("/{slug:str}/assets/{asset_id:str}/content")
async def asset_content(slug: FromPath[str], asset_id: FromPath[str], services: ServicesDep, request: Request) -> Response:
    """The asset's bytes; ETag is its sha256, so `If-None-Match` answers 304 without a body."""
    row = await project_row(services, slug, ASSET_NOT_FOUND)
    asset = await read.find_row(services.reader, "assets", row["id"], asset_id)
    if asset is None:
        raise NotFound(ASSET_NOT_FOUND)
    storage = await services.reader.one("SELECT * FROM project_storage WHERE project_id = ?", (row["id"],))
    path = asset_file(services, project_root_of(services, storage or {}, row["slug"]), asset)
    if path is None:
        raise NotFound("Asset file not found")
    etag = asset["sha256"]
    if etag and request.headers.get("if-none-match", "").strip().strip('"') == etag:
        return Response(b"", status_code=304, headers={"ETag": f'"{etag}"'})
    return File(
        path,
        media_type=asset["mime_type"] or "application/octet-stream",
        content_disposition_type="inline",
        filename=path.name,
        etag=ETag(value=etag) if etag else None,
    )


async def _run_row(services: Services, slug: str, run_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    row = await project_row(services, slug, RUN_NOT_FOUND)
    run = await read.find_row(services.reader, "runs", row["id"], run_id)
    if run is None:
        raise NotFound(RUN_NOT_FOUND)
    return row, run


@get("/{slug:str}/runs/{run_id:str}/contact-sheet.png")
async def run_contact_sheet(slug: FromPath[str], run_id: FromPath[str], services: ServicesDep) -> Response[bytes]:
    """Every candidate of every job in a grid: labelled, the winner marked, rejects crossed out."""
    row, run = await _run_row(services, slug, run_id)
    storage = await services.reader.one("SELECT * FROM project_storage WHERE project_id = ?", (row["id"],))
    png = await contact_sheet_png(services, project_root_of(services, storage or {}, row["slug"]), run["id"])
    return Response(png, media_type="image/png")


@get("/{slug:str}/runs/{run_id:str}/events")
async def run_events(slug: FromPath[str], run_id: FromPath[str], services: ServicesDep, request: Request) -> ServerSentEvent:
    """The run's events as Server-Sent Events (id = log position), from the start or after
    `Last-Event-ID`; the stream ends after the run's final event (a dry run's last job)."""
    await _run_row(services, slug, run_id)
    resume = request.headers.get("last-event-id", "").strip()
    after = int(resume) if resume.isdigit() else 0
    stream = ev.run_stream(run_id)
    lease = acquire_stream(request)  # a bounded number per token: 429 past it

    async def feed() -> AsyncGenerator[ServerSentEventMessage, None]:
        sent = 0  # the stream version sent last
        while not services.stopping:
            events = await services.store.read_stream(stream, after_version=sent)
            if not events:
                await services.store.wait_for_append(await services.store.head(), 0.5)
                continue
            sent = events[-1].stream_version
            for event in events:
                if event.position > after:
                    yield ServerSentEventMessage(
                        data=responses.encode(event_view(event)).decode(), id=str(event.position), event=event.type
                    )
                if event.type in ev.RUN_ENDS or _dry_run_done(events, event):
                    return

    return ServerSentEvent(lease.hold(feed()), background=lease.background())


def _dry_run_done(events: list[Any], event: Any) -> bool:
    """A dry run is complete once its planned jobs are in: the batch's last event ends it."""
    first = events[0]
    if first.type != ev.RUN_REQUESTED or first.data.get("mode") != "dry":
        return False
    return event.stream_version == first.data.get("jobs", 0) + 1


router = Router(
    "/api/projects",
    route_handlers=[asset_content, run_contact_sheet, run_events],
    tags=["runs"],
)
