"""Looking at what runs made: an asset's file, a run's contact sheet, and a run's live progress."""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import anyio
from litestar import Request, Response, Router, get
from litestar.datastructures import ETag
from litestar.params import FromPath
from litestar.response import File, ServerSentEvent, ServerSentEventMessage

from kroma.domain import runs as ev
from kroma.domain.errors import NotFound
from kroma.engine.paths import is_within
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row
from kroma.http.routes.events import event_view
from kroma.http.routes.pipeline import RUN_NOT_FOUND, project_root_of
from kroma.imaging.contact_sheet import contact_sheet
from kroma.projections import runs as read
from kroma.services import Services

ASSET_NOT_FOUND = "Asset not found"


def asset_file(services: Services, project_root: Path, asset: dict[str, Any]) -> Path | None:
    """The asset's file on disk, only when it lies inside the project root or a root the server
    may write to (an imported asset row cannot make the server read elsewhere)."""
    uri = asset["storage_uri"] or asset["rel_path"]
    if not uri or "://" in uri:
        return None
    path = Path(uri) if os.path.isabs(uri) else services.settings.app_root / uri
    resolved = path.resolve()
    roots = (project_root.resolve(), *(r.resolve() for r in services.settings.write_roots))
    if not any(is_within(resolved, root) for root in roots) or not resolved.is_file():
        return None
    return resolved


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
    project_root = project_root_of(services, storage or {}, row["slug"])
    assets = {
        a["id"]: a
        for a in await services.reader.all("SELECT * FROM assets WHERE run_id = ?", (run["id"],))
    }
    jobs = []
    for job in await read.jobs_of_run(services.reader, run["id"]):
        candidates = []
        for c in job["candidates"]:
            asset = assets.get(c["final_asset_id"]) or assets.get(c["output_asset_id"])  # after the passes
            path = asset_file(services, project_root, read.asset_view(asset)) if asset else None
            candidates.append(
                {
                    "label": f"c{c['candidate_index']}",
                    "path": path,
                    "status": c["status"],
                    "winner": job["selected_candidate_index"] == c["candidate_index"],
                    "rank": {
                        "hard_failures": c["rank_hard_failures"],
                        "soft_warnings": c["rank_soft_warnings"],
                        "avg_chroma_exceed": c["rank_avg_chroma_exceed"],
                    },
                }
            )
        jobs.append({"job_key": job["job_key"], "candidates": candidates})

    def render() -> bytes:
        for job in jobs:
            for c in job["candidates"]:
                path = c.pop("path")
                c["image"] = path.read_bytes() if path is not None else None
        return contact_sheet(jobs)

    png = await anyio.to_thread.run_sync(render, limiter=services.engine.cpu)
    return Response(png, media_type="image/png")


@get("/{slug:str}/runs/{run_id:str}/events")
async def run_events(slug: FromPath[str], run_id: FromPath[str], services: ServicesDep, request: Request) -> ServerSentEvent:
    """The run's events as Server-Sent Events (id = log position), from the start or after
    `Last-Event-ID`; the stream ends after the run's final event (a dry run's last job)."""
    await _run_row(services, slug, run_id)
    resume = request.headers.get("last-event-id", "").strip()
    after = int(resume) if resume.isdigit() else 0
    stream = ev.run_stream(run_id)

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

    return ServerSentEvent(feed())


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
