"""Bootstrap prompt exchange (contract §2 rows 8-9, §4): export a prompt, import an AI answer.

The export reads the record read models. The import validates the whole payload first (every 400
precedes the 404, §4.2), then runs as ONE command on the project's stream: all of its events are
appended in one atomic batch under one correlation id, `bootstrap.imported` first (the response's
`audit_id`), or nothing is.

Consistency. The decision is checked against the aggregate state at stream version V, and the
append expects V, so a concurrent mutation makes the import plan again on the new state. The plan
also wants each row's created_at / updated_at, which only the read models hold; they are read after
the read models have reached the log's head as it was once V was loaded. They reflect the stream up
to some version V' >= V. When V' > V the stream has moved on and the append is refused (then the
import re-plans); when it succeeds, V' == V and the timestamps belong to exactly the state decided
on. The content itself always comes from the aggregate (`snapshot_of_state`), so even a read model
that is ahead can never turn into a wrong event or a spurious validation error.

The response describes the state the import left, not whatever the project became later: the plan
is computed again with the events' recorded time (and the same ids), which gives exactly what the
read models show at that version.
"""

from __future__ import annotations

from typing import Any

from litestar import Response, Router, get, post
from litestar.params import FromPath, JSONBody

from kroma.clock import to_seconds
from kroma.domain import bootstrap
from kroma.domain.aggregate import ProjectState, project_stream
from kroma.domain.bootstrap_commands import IMPORTED, decide_import, snapshot_of_state
from kroma.domain.handling import Decision
from kroma.events.envelope import Metadata
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row, project_state
from kroma.projections.bootstrap import read_snapshot
from kroma.services import Services


def _now(services: Services) -> str:
    """Second precision, from the same source as the store's recorded_at."""
    return to_seconds(services.clock.now_iso())


@get("/bootstrap-prompt")
async def bootstrap_prompt(slug: FromPath[str], services: ServicesDep) -> Response[bytes]:
    row = await project_row(services, slug)
    snapshot = await read_snapshot(services.reader, row)
    return responses.ok(bootstrap=bootstrap.build_export(snapshot, _now(services)))


def _project(state: ProjectState) -> dict[str, Any]:
    return {"id": state.id, "slug": state.slug, "name": state.name, "description": state.description}


async def _snapshot(services: Services, project_id: str) -> tuple[ProjectState, int, dict[str, Any]]:
    """The project's state and stream version, and the snapshot the plan reads (see the module doc)."""
    state, version = await services.commands.load_project(project_id)
    assert state is not None, "a project is never removed"
    await services.settle(await services.store.head())
    read = await read_snapshot(services.reader, _project(state))
    return state, version, snapshot_of_state(state, read)


async def _import(services: Services, project_id: str, request: bootstrap.ImportRequest) -> Response[bytes]:
    async def attempt(meta: Metadata) -> Decision:
        state, version, snapshot = await _snapshot(services, project_id)
        ids: list[str] = []

        def new_id() -> str:
            ids.append(services.clock.new_id())
            return ids[-1]

        events, _plan = decide_import(state, snapshot, request, _now(services), new_id, meta)
        return Decision(events, {project_stream(project_id): version}, (snapshot, ids))

    outcome = await services.commands.execute(attempt)
    await services.settle(outcome.append.last_position)
    recorded = await services.store.read_event(outcome.audit_id)
    assert recorded is not None and recorded.type == IMPORTED
    if outcome.append.replayed:  # an earlier request with this Idempotency-Key did the import
        body = await _replayed(services, project_id, request, recorded.data)
    else:  # plan again at the events' recorded time with the same ids: the state they left
        snapshot, ids = outcome.result
        plan = bootstrap.plan_import(snapshot, request, to_seconds(recorded.recorded_at), iter(ids).__next__)
        body = bootstrap.import_response(request, plan, plan.after)
    return responses.ok(bootstrap_import=body, audit_id=outcome.audit_id)


async def _replayed(
    services: Services, project_id: str, request: bootstrap.ImportRequest, summary: dict[str, Any]
) -> dict[str, Any]:
    """The answer to a replay: the counts the import recorded, the settings as they are now."""
    state, _version = await services.commands.load_project(project_id)
    assert state is not None
    after = await read_snapshot(services.reader, _project(state))
    recorded = bootstrap.ImportPlan(
        mode=request.mode,
        dry_run=False,
        project_updated=summary["changes"]["project"]["updated"],
        operations=(),
        before=after,
        after=after,
        applied=summary["applied"],
        changes=summary["changes"],
    )
    return {**bootstrap.import_response(request, recorded, after), "changes": summary["changes"]}


@post("/bootstrap-import")
async def bootstrap_import(
    slug: FromPath[str], data: JSONBody[dict[str, Any]], services: ServicesDep
) -> Response[bytes]:
    request = bootstrap.parse_import_request(data)
    state = await project_state(services, slug)
    if not request.dry_run:
        return await _import(services, state.id, request)
    _state, _version, snapshot = await _snapshot(services, state.id)
    plan = bootstrap.preview(snapshot, request, _now(services), services.clock.new_id)
    return responses.ok(bootstrap_import=bootstrap.import_response(request, plan, plan.after))


router = Router(
    "/api/projects/{slug:str}",
    route_handlers=[bootstrap_prompt, bootstrap_import],
    tags=["bootstrap"],
)
