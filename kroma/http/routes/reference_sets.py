"""Reference sets and their items (contract §2 rows 49-58, §3.11).

Item routes need the set to exist: the list and create answer "Reference set not found", the
by-id routes "Reference set item not found" (also for a missing project, and for an orphan whose
set was deleted).
"""

from __future__ import annotations

from litestar import Response, Router, delete, get, post, put
from litestar.params import FromPath, JSONBody

from kroma.domain import records
from kroma.domain import reference_sets as domain
from kroma.domain.errors import NotFound
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row, project_state
from kroma.http.routes.records import named_router, settled_view
from kroma.projections.records import REFERENCE_SET_ITEMS as ITEMS
from kroma.projections.records import REFERENCE_SETS
from kroma.services import Services

SET_NOT_FOUND = domain.KIND.not_found
ITEM_NOT_FOUND = domain.ITEM_KIND.not_found

sets_router = named_router(
    "/api/projects/{slug:str}/reference-sets", REFERENCE_SETS, domain.ReferenceSetFields, "reference sets"
)


async def _live_set(services: Services, slug: str, set_id: str, not_found: str) -> str:
    """The project id, once the project and the set are both found in the read model."""
    project = await project_row(services, slug, not_found)
    if await REFERENCE_SETS.one(services.reader, project["id"], set_id) is None:
        raise NotFound(not_found)
    return project["id"]


@get("/")
async def list_items(slug: FromPath[str], set_id: FromPath[str], services: ServicesDep) -> Response[bytes]:
    project_id = await _live_set(services, slug, set_id, SET_NOT_FOUND)
    items = await ITEMS.all(services.reader, project_id, reference_set_id=set_id)
    return responses.ok(reference_set_id=set_id, count=len(items), items=items)


@post("/")
async def create_item(
    slug: FromPath[str],
    set_id: FromPath[str],
    data: JSONBody[domain.ReferenceItemFields],
    services: ServicesDep,
) -> Response[bytes]:
    values = domain.item_values(data)
    state = await project_state(services, slug, SET_NOT_FOUND)
    new_id = services.clock.new_id()
    outcome = await services.commands.on_project(
        state.id, lambda s, meta: [domain.decide_create_item(s, set_id, values, new_id, meta)]
    )
    item = await settled_view(services, outcome, ITEMS, state.id, new_id)
    return responses.ok(item=item, audit_id=outcome.audit_id)


@get("/{item_id:str}")
async def get_item(
    slug: FromPath[str], set_id: FromPath[str], item_id: FromPath[str], services: ServicesDep
) -> Response[bytes]:
    project_id = await _live_set(services, slug, set_id, ITEM_NOT_FOUND)
    item = await ITEMS.one(services.reader, project_id, item_id, reference_set_id=set_id)
    if item is None:
        raise NotFound(ITEM_NOT_FOUND)
    return responses.ok(item=item)


@put("/{item_id:str}")
async def update_item(
    slug: FromPath[str],
    set_id: FromPath[str],
    item_id: FromPath[str],
    data: JSONBody[domain.ReferenceItemFields],
    services: ServicesDep,
) -> Response[bytes]:
    patch = records.update_patch(domain.ITEM_KIND, data)
    state = await project_state(services, slug, ITEM_NOT_FOUND)
    outcome = await services.commands.on_project(
        state.id, lambda s, meta: [domain.decide_update_item(s, set_id, item_id, patch, meta)]
    )
    item = await settled_view(services, outcome, ITEMS, state.id, item_id)
    return responses.ok(item=item, audit_id=outcome.audit_id)


@delete("/{item_id:str}", status_code=200)
async def delete_item(
    slug: FromPath[str], set_id: FromPath[str], item_id: FromPath[str], services: ServicesDep
) -> Response[bytes]:
    state = await project_state(services, slug, ITEM_NOT_FOUND)
    outcome = await services.commands.on_project(
        state.id, lambda s, meta: [domain.decide_delete_item(s, set_id, item_id, meta)]
    )
    await services.settle(outcome.append.last_position)
    return responses.ok(deleted=True, id=item_id, audit_id=outcome.audit_id)


items_router = Router(
    "/api/projects/{slug:str}/reference-sets/{set_id:str}/items",
    route_handlers=[list_items, create_item, get_item, update_item, delete_item],
    tags=["reference sets"],
)
