"""Projects and project storage (contract §3.2, §3.3)."""

from __future__ import annotations

from litestar import Request, Response, Router, get, post, put
from litestar.params import FromPath, JSONBody

from kroma.domain import projects as domain
from kroma.domain.aggregate import project_stream
from kroma.domain.errors import NotFound
from kroma.domain.handling import Decision, Outcome
from kroma.domain.slugs import normalize_slug
from kroma.events.envelope import Metadata
from kroma.http import responses, time_travel
from kroma.http.deps import project_id, services_of
from kroma.projections import projects as read
from kroma.services import Services


def _storage_payload(services: Services, row: dict) -> dict:
    """The resolved storage of a row that has the storage columns (`read.find_project`)."""
    return read.resolve_storage(row, row["slug"], services.settings.workspace)


@get("/")
async def list_projects(request: Request) -> responses.Answer:
    services = services_of(request)  # not injected: Litestar's DI costs ~13 us a request
    username = normalize_slug(request.query_params.get("username"))  # un-normalisable: ignored

    async def answer() -> bytes:
        projects = await read.list_projects(services.reader, username)
        return responses.ok_body(count=len(projects), projects=projects)

    return responses.ok_encoded(await services.reader.derived(("projects", username), answer))


async def _slug_is_free(services: Services, slug: str) -> bool:
    """Whether the read models say no project holds `slug` while they reflect every append this
    process has seen: a create then skips reading the slug's stream (a hop to a worker thread).
    Only a hint: the create expects the slug's stream not to exist, so a slug taken meanwhile (by
    another process) fails that append, and the command is decided again from the log."""
    known_head = getattr(services.store, "known_head", None)
    if known_head is None or services.runner.position < known_head():
        return False
    row = await services.reader.one("SELECT 1 AS taken FROM projects WHERE slug = ?", (slug,))
    return row is None


@post("/")
async def upsert_project(data: JSONBody[domain.UpsertProject], request: Request) -> responses.Answer:
    services = services_of(request)
    target = domain.validate_upsert(data)
    commands = services.commands
    hint = True

    async def decide(meta: Metadata) -> Decision:
        nonlocal hint
        if hint and await _slug_is_free(services, target.slug):
            existing, version = None, 0  # the append's NO_STREAM on the slug has the last word
        else:
            existing, version = await commands.project_by_slug(target.slug)
        hint = False  # decided again after a lost race: from the log
        new_id = services.clock.new_id()
        events, expected = domain.decide_upsert(target, existing, new_id, meta)
        if existing is not None:
            expected[project_stream(existing.id)] = version
        return Decision(events, expected, existing.id if existing else new_id)

    outcome = await commands.execute(decide)
    await services.settle(outcome.append.last_position)
    row = await read.find_project(services.reader, outcome.result)
    assert row is not None
    return responses.ok_answer(
        project=read.project_summary(row),
        storage=_storage_payload(services, row),
        audit_id=outcome.audit_id,
    )


async def _project_with_storage(services: Services, slug: str, counts: bool = False) -> dict:
    normal = normalize_slug(slug)
    row = None if normal is None else await read.find_project_by_slug(services.reader, normal, counts)
    if row is None:
        raise NotFound("Project not found")
    return row


@get("/{slug:str}")
async def project_detail(slug: FromPath[str], request: Request) -> responses.Answer:
    services = services_of(request)
    as_of = await time_travel.as_of_param(services, request)
    if as_of is not None:  # the detail as it was after that event, folded from the project's events
        return await time_travel.project_detail(services, slug, as_of)

    async def answer() -> bytes:
        row = await _project_with_storage(services, slug, counts=True)
        return responses.ok_body(
            project=read.project_detail(row),
            counts=read.detail_counts(row),
            storage=_storage_payload(services, row),
        )

    return responses.ok_encoded(
        await services.reader.derived(("project", normalize_slug(slug), services.settings.workspace), answer)
    )


@get("/{slug:str}/storage")
async def get_storage(slug: FromPath[str], request: Request) -> Response[bytes]:
    services = services_of(request)
    row = await _project_with_storage(services, slug)
    return responses.ok(project=read.project_summary(row), storage=_storage_payload(services, row))


async def _storage_response(
    services: Services, outcome: Outcome, project_id: str, updated: str
) -> Response[bytes]:
    await services.settle(outcome.append.last_position)
    row = await read.find_project(services.reader, project_id)
    assert row is not None
    return responses.ok(
        project=read.project_summary(row),
        storage=_storage_payload(services, row),
        updated=updated,
        audit_id=outcome.audit_id,
    )


@put("/{slug:str}/storage/local")
async def put_local_storage(
    slug: FromPath[str], data: JSONBody[domain.UpdateLocalStorage], request: Request
) -> Response[bytes]:
    services = services_of(request)
    domain.check_local_storage(data)
    project = await project_id(services, slug)
    outcome = await services.commands.on_project(
        project, lambda s, meta: [domain.decide_local_storage(s, data, meta)]
    )
    return await _storage_response(services, outcome, project, "local")


@put("/{slug:str}/storage/s3")
async def put_s3_storage(
    slug: FromPath[str], data: JSONBody[domain.UpdateS3Storage], request: Request
) -> Response[bytes]:
    services = services_of(request)
    project = await project_id(services, slug)
    outcome = await services.commands.on_project(
        project, lambda s, meta: [domain.decide_s3_storage(s, data, meta)]
    )
    return await _storage_response(services, outcome, project, "s3")


router = Router(
    "/api/projects",
    route_handlers=[
        list_projects,
        upsert_project,
        project_detail,
        get_storage,
        put_local_storage,
        put_s3_storage,
    ],
    tags=["projects"],
)
