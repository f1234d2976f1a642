"""The five routes of a project's named records (style guides, characters, prompt templates,
reference sets), built once from a `RecordKind` and its read model (contract §2 rows 29-53).

Check order (contract §8): body checks that need no state (required fields on create, "≥1 of" on
PUT) -> project (create and lists answer "Project not found"; by-id routes answer the kind's own
message for a missing project too) -> record -> checks against state (blanked required field,
duplicate name). Every mutation answers `audit_id`, the id of the event it appended.
"""

# No `from __future__ import annotations`: the handlers below are defined inside a function and
# Litestar must see their real annotation objects (the body type differs per kind).

from typing import Any

import msgspec
from litestar import Request, Response, Router, delete, get, post, put
from litestar.params import FromPath, JSONBody

from kroma.domain import records
from kroma.domain.errors import NotFound
from kroma.domain.handling import Outcome
from kroma.domain.records import RecordKind
from kroma.domain.slugs import normalize_slug
from kroma.http import responses, time_travel
from kroma.http.deps import project_id, project_row, services_of
from kroma.projections.records import RecordProjection
from kroma.services import Services


async def settled_view(
    services: Services, outcome: Outcome, table: RecordProjection, project_id: str, key: str, **scope: str
) -> dict[str, Any]:
    """The record as the read model shows it once it reflects the command (read-your-writes).

    A later command may already have deleted it again: then it is not found, like any read."""
    await services.settle(outcome.append.last_position)
    view = await table.one(services.reader, project_id, key, **scope)
    if view is None:
        raise NotFound(table.kind.not_found)
    return view


def named_router(path: str, table: RecordProjection, body: type[msgspec.Struct], tag: str) -> Router:
    """list / create / get / partial update / delete of a named record under `path`."""
    kind: RecordKind = table.kind

    @get("/")
    async def list_records(slug: FromPath[str], request: Request) -> responses.Answer:
        services = services_of(request)  # not injected: Litestar's DI costs ~13 us a request
        as_of = await time_travel.as_of_param(services, request)
        if as_of is not None:  # the list as it was after that event, folded from the project's events
            async with time_travel.project_as_of(services, slug, as_of) as (past, rm):
                views = await table.all(rm, past["id"])
            return responses.ok_answer(**{"count": len(views), kind.collection: views})

        async def answer() -> bytes:
            project = await project_row(services, slug)
            views = await table.all(services.reader, project["id"])
            return responses.ok_body(**{"count": len(views), kind.collection: views})

        return responses.ok_encoded(
            await services.reader.derived((kind.collection, normalize_slug(slug)), answer)
        )

    @post("/")
    async def create_record(
        slug: FromPath[str],
        data: JSONBody[body],  # type: ignore[valid-type]  # one router per record kind
        request: Request,
    ) -> responses.Answer:
        services = services_of(request)
        values = records.create_values(kind, data)
        project = await project_id(services, slug)
        new_id = services.clock.new_id()
        outcome = await services.commands.on_project(
            project, lambda s, meta: [records.decide_create(kind, s, values, new_id, meta)]
        )
        view = await settled_view(services, outcome, table, project, new_id)
        return responses.ok_answer(**{kind.entity: view, "audit_id": outcome.audit_id})

    @get("/{record_id:str}")
    async def get_record(slug: FromPath[str], record_id: FromPath[str], request: Request) -> responses.Answer:
        services = services_of(request)

        async def answer() -> bytes:
            project = await project_row(services, slug, kind.not_found)
            view = await table.one(services.reader, project["id"], record_id)
            if view is None:
                raise NotFound(kind.not_found)
            return responses.ok_body(**{kind.entity: view})

        key = (kind.entity, normalize_slug(slug), record_id)
        return responses.ok_encoded(await services.reader.derived(key, answer))

    @put("/{record_id:str}")
    async def update_record(
        slug: FromPath[str],
        record_id: FromPath[str],
        data: JSONBody[body],  # type: ignore[valid-type]  # one router per record kind
        request: Request,
    ) -> Response[bytes]:
        services = services_of(request)
        patch = records.update_patch(kind, data)
        project = await project_id(services, slug, kind.not_found)
        outcome = await services.commands.on_project(
            project, lambda s, meta: [records.decide_update(kind, s, record_id, patch, meta)]
        )
        view = await settled_view(services, outcome, table, project, record_id)
        return responses.ok(**{kind.entity: view, "audit_id": outcome.audit_id})

    @delete("/{record_id:str}", status_code=200)
    async def delete_record(
        slug: FromPath[str], record_id: FromPath[str], request: Request
    ) -> Response[bytes]:
        services = services_of(request)
        project = await project_id(services, slug, kind.not_found)
        outcome = await services.commands.on_project(
            project, lambda s, meta: [records.decide_delete(kind, s, record_id, meta)]
        )
        await services.settle(outcome.append.last_position)
        return responses.ok(deleted=True, id=record_id, audit_id=outcome.audit_id)

    return Router(
        path,
        route_handlers=[list_records, create_record, get_record, update_record, delete_record],
        tags=[tag],
    )
