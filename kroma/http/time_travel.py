"""`?as_of=POSITION` on a project's detail and its configuration lists: the answer as it was right
after that event, folded on demand from the project's events (kroma.projections.as_of).

A position beyond the log head is a 400; a project that did not exist yet at that position is the
route's usual 404.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from litestar import Request

from kroma.domain.errors import NotFound, ValidationError
from kroma.http import responses
from kroma.http.deps import project_row
from kroma.http.params import int_param
from kroma.projections import as_of as snapshots
from kroma.projections import projects as read
from kroma.projections.reader import ReadModels
from kroma.services import Services


async def as_of_param(services: Services, request: Request) -> int | None:
    """The `as_of` query parameter: None when absent, else a position from 0 to the log head."""
    raw = request.query_params.get("as_of")
    if raw is None or raw.strip() == "":
        return None
    position = int_param(request, "as_of", 0)
    if position < 0:
        raise ValidationError("Query parameter 'as_of' must be a log position (0 or more)")
    head = await services.store.head()
    if position > head:
        raise ValidationError(f"Query parameter 'as_of' is beyond the log head ({head})")
    return position


@asynccontextmanager
async def project_as_of(
    services: Services, slug: str, position: int, counted: bool = False, not_found: str = "Project not found"
) -> AsyncIterator[tuple[dict[str, Any], ReadModels]]:
    """(the project's row, read models holding only that project) as of `position`. The slug is
    resolved on the live read models: a slug names its project from its first event on."""
    live = await project_row(services, slug, not_found)
    events = await snapshots.project_events(services.store, services.reader, live["id"], position, counted)
    snapshot = snapshots.Snapshot(snapshots.snapshot_projections(counted))
    try:
        await anyio.to_thread.run_sync(snapshot.fold, events)
        rm = snapshot.read_models()
        row = await read.find_project_by_slug(rm, live["slug"], counted)
        if row is None:
            raise NotFound(not_found)
        yield row, rm
    finally:
        snapshot.close()


async def project_detail(services: Services, slug: str, position: int) -> responses.Answer:
    """GET /api/projects/{slug}?as_of=: the detail answer as it was after `position`."""
    async with project_as_of(services, slug, position, counted=True) as (row, _rm):
        return responses.ok_answer(
            project=read.project_detail(row),
            counts=read.detail_counts(row),
            storage=read.resolve_storage(row, row["slug"], services.settings.workspace),
        )
