"""Projects and project storage (contract §3.2, §3.3)."""

from __future__ import annotations

from litestar import Request, Response, Router, get, post, put
from litestar.params import FromPath, JSONBody

from kroma.domain import projects as domain
from kroma.domain.aggregate import project_stream
from kroma.domain.handling import Decision, Outcome
from kroma.domain.slugs import normalize_slug
from kroma.events.envelope import Metadata
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row, project_state
from kroma.projections import projects as read
from kroma.services import Services


async def _storage_payload(services: Services, row: dict) -> dict:
    storage = await read.find_storage(services.reader, row["id"])
    assert storage is not None
    return read.resolve_storage(storage, row["slug"], services.settings.workspace)


@get("/")
async def list_projects(services: ServicesDep, request: Request) -> Response[bytes]:
    username = normalize_slug(request.query_params.get("username"))  # un-normalisable: ignored
    rows = await read.list_projects(services.reader, username)
    return responses.ok(count=len(rows), projects=[read.project_list_item(r) for r in rows])


@post("/")
async def upsert_project(data: JSONBody[domain.UpsertProject], services: ServicesDep) -> Response[bytes]:
    target = domain.validate_upsert(data)
    commands = services.commands

    async def decide(meta: Metadata) -> Decision:
        existing, version = await commands.project_by_slug(target.slug)
        new_id = services.clock.new_id()
        events, expected = domain.decide_upsert(target, existing, new_id, meta)
        if existing is not None:
            expected[project_stream(existing.id)] = version
        return Decision(events, expected, existing.id if existing else new_id)

    outcome = await commands.execute(decide)
    await services.settle(outcome.append.last_position)
    row = await read.find_project(services.reader, outcome.result)
    assert row is not None
    return responses.ok(
        project=read.project_summary(row),
        storage=await _storage_payload(services, row),
        audit_id=outcome.audit_id,
    )


@get("/{slug:str}")
async def project_detail(slug: FromPath[str], services: ServicesDep) -> Response[bytes]:
    row = await project_row(services, slug)
    counts = {}
    for key, sql in (
        ("runs", "SELECT count(*) AS n FROM runs WHERE project_id = ?"),
        ("jobs", "SELECT count(*) AS n FROM run_jobs WHERE project_id = ?"),
        ("assets", "SELECT count(*) AS n FROM assets WHERE project_id = ?"),
    ):
        counts[key] = await _count(services, sql, row["id"])
    return responses.ok(
        project=read.project_detail(row), counts=counts, storage=await _storage_payload(services, row)
    )


async def _count(services: Services, sql: str, project_id: str) -> int:
    """Counts of read models that later work adds; 0 while their tables do not exist yet."""
    try:
        return int(await services.reader.scalar(sql, (project_id,)) or 0)
    except Exception as exc:  # sqlite3.OperationalError: no such table
        if "no such table" in str(exc):
            return 0
        raise


@get("/{slug:str}/storage")
async def get_storage(slug: FromPath[str], services: ServicesDep) -> Response[bytes]:
    row = await project_row(services, slug)
    return responses.ok(project=read.project_summary(row), storage=await _storage_payload(services, row))


async def _storage_response(
    services: Services, outcome: Outcome, project_id: str, updated: str
) -> Response[bytes]:
    await services.settle(outcome.append.last_position)
    row = await read.find_project(services.reader, project_id)
    assert row is not None
    return responses.ok(
        project=read.project_summary(row),
        storage=await _storage_payload(services, row),
        updated=updated,
        audit_id=outcome.audit_id,
    )


@put("/{slug:str}/storage/local")
async def put_local_storage(
    slug: FromPath[str], data: JSONBody[domain.UpdateLocalStorage], services: ServicesDep
) -> Response[bytes]:
    domain.check_local_storage(data)
    state = await project_state(services, slug)
    outcome = await services.commands.on_project(
        state.id, lambda s, meta: [domain.decide_local_storage(s, data, meta)]
    )
    return await _storage_response(services, outcome, state.id, "local")


@put("/{slug:str}/storage/s3")
async def put_s3_storage(
    slug: FromPath[str], data: JSONBody[domain.UpdateS3Storage], services: ServicesDep
) -> Response[bytes]:
    state = await project_state(services, slug)
    outcome = await services.commands.on_project(
        state.id, lambda s, meta: [domain.decide_s3_storage(s, data, meta)]
    )
    return await _storage_response(services, outcome, state.id, "s3")


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
