"""Asset links (contract §3.6; routes 20-24). The reference does not audit these; every mutation
here still answers with `audit_id`, the id of the event it appended."""

from __future__ import annotations

from litestar import Request, Response, Router, delete, get, post, put
from litestar.params import FromPath, JSONBody

from kroma.domain import asset_links as domain
from kroma.domain.aggregate import project_stream
from kroma.domain.assets import asset_owners
from kroma.domain.errors import NotFound
from kroma.domain.handling import Decision, Outcome
from kroma.events.envelope import Metadata
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row, project_state
from kroma.projections import asset_links as read
from kroma.services import Services


@get("/{slug:str}/asset-links")
async def list_links(slug: FromPath[str], services: ServicesDep, request: Request) -> Response[bytes]:
    row = await project_row(services, slug)
    asset_id = (request.query_params.get("asset_id") or "").strip() or None
    raw_type = request.query_params.get("link_type")
    link_type = domain.normalize_link_type(raw_type) if raw_type is not None else None  # after the lookup
    links = await read.list_links(services.reader, row["id"], asset_id, link_type)
    return responses.ok(count=len(links), asset_links=links)


async def _answer(services: Services, outcome: Outcome, project_id: str, link_id: str) -> Response[bytes]:
    await services.settle(outcome.append.last_position)
    link = await read.find_link(services.reader, project_id, link_id)
    return responses.ok(asset_link=link, audit_id=outcome.audit_id)


@post("/{slug:str}/asset-links")
async def create_link(
    slug: FromPath[str], data: JSONBody[domain.CreateAssetLink], services: ServicesDep
) -> Response[bytes]:
    target = domain.validate_create(data)
    project = await project_state(services, slug)
    link_id = services.clock.new_id()
    commands = services.commands

    async def decide(meta: Metadata) -> Decision:
        state, version = await commands.load_project(project.id)
        assert state is not None
        owners = await asset_owners(services.store, (target.parent_asset_id, target.child_asset_id))
        event = domain.decide_create(state, target, owners, link_id, meta)
        return Decision([event], {project_stream(state.id): version})

    outcome = await commands.execute(decide)
    return await _answer(services, outcome, project.id, link_id)


@get("/{slug:str}/asset-links/{link_id:str}")
async def link_detail(slug: FromPath[str], link_id: FromPath[str], services: ServicesDep) -> Response[bytes]:
    row = await project_row(services, slug, domain.NOT_FOUND)
    link = await read.find_link(services.reader, row["id"], link_id)
    if link is None:
        raise NotFound(domain.NOT_FOUND)
    return responses.ok(asset_link=link)


@put("/{slug:str}/asset-links/{link_id:str}")
async def update_link(
    slug: FromPath[str], link_id: FromPath[str], data: JSONBody[domain.UpdateAssetLink], services: ServicesDep
) -> Response[bytes]:
    domain.check_update(data)
    project = await project_state(services, slug, domain.NOT_FOUND)
    commands = services.commands

    async def decide(meta: Metadata) -> Decision:
        state, version = await commands.load_project(project.id)
        assert state is not None
        target = domain.merge_update(state, link_id, data)
        owners = await asset_owners(services.store, (target.parent_asset_id, target.child_asset_id))
        event = domain.decide_update(state, link_id, target, owners, meta)
        return Decision([event], {project_stream(state.id): version})

    outcome = await commands.execute(decide)
    return await _answer(services, outcome, project.id, link_id)


@delete("/{slug:str}/asset-links/{link_id:str}", status_code=200)
async def delete_link(slug: FromPath[str], link_id: FromPath[str], services: ServicesDep) -> Response[bytes]:
    project = await project_state(services, slug, domain.NOT_FOUND)
    outcome = await services.commands.on_project(
        project.id, lambda state, meta: [domain.decide_delete(state, link_id, meta)]
    )
    await services.settle(outcome.append.last_position)
    return responses.ok(deleted=True, id=link_id, audit_id=outcome.audit_id)


router = Router(
    "/api/projects",
    route_handlers=[list_links, create_link, link_detail, update_link, delete_link],
    tags=["asset-links"],
)
