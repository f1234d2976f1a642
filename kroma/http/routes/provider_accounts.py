"""Provider accounts (contract §2 rows 34-38, §3.8), keyed by the normalised provider code.

Path checks for the by-code routes (§3.8, §8.1), after any body check: an un-normalisable project
slug is a 404 "Provider account not found", then an un-normalisable code a 400 "Field
'provider_code' is required", then a missing project or account a 404 with the same message.
DELETE echoes the code exactly as it appeared in the path.
"""

from __future__ import annotations

from litestar import Request, Response, Router, delete, get, post, put
from litestar.params import FromPath, JSONBody

from kroma.domain import provider_accounts as domain
from kroma.domain import records
from kroma.domain.aggregate import ProjectState
from kroma.domain.errors import NotFound
from kroma.domain.slugs import normalize_slug
from kroma.http import responses, time_travel
from kroma.http.deps import ServicesDep, project_row, project_state
from kroma.http.routes.records import settled_view
from kroma.projections.records import PROVIDER_ACCOUNTS as ACCOUNTS
from kroma.services import Services

NOT_FOUND = domain.KIND.not_found


def _path_code(slug: str, code: str) -> str:
    if normalize_slug(slug) is None:
        raise NotFound(NOT_FOUND)
    return domain.provider_code(code)


async def _state(services: Services, slug: str, code: str) -> tuple[ProjectState, str]:
    normal = _path_code(slug, code)
    return await project_state(services, slug, NOT_FOUND), normal


@get("/")
async def list_accounts(slug: FromPath[str], services: ServicesDep, request: Request) -> Response[bytes]:
    as_of = await time_travel.as_of_param(services, request)
    if as_of is not None:  # the list as it was after that event, folded from the project's events
        async with time_travel.project_as_of(services, slug, as_of) as (past, rm):
            accounts = await ACCOUNTS.all(rm, past["id"])
        return responses.ok(count=len(accounts), provider_accounts=accounts)
    project = await project_row(services, slug)
    accounts = await ACCOUNTS.all(services.reader, project["id"])
    return responses.ok(count=len(accounts), provider_accounts=accounts)


@post("/")
async def upsert_account(
    slug: FromPath[str], data: JSONBody[domain.UpsertProviderAccount], services: ServicesDep
) -> Response[bytes]:
    code, values = domain.upsert_values(data)
    state = await project_state(services, slug)
    outcome = await services.commands.on_project(
        state.id, lambda s, meta: [domain.decide_upsert(s, code, values, meta)]
    )
    account = await settled_view(services, outcome, ACCOUNTS, state.id, code)
    return responses.ok(provider_account=account, audit_id=outcome.audit_id)


@get("/{code:str}")
async def get_account(slug: FromPath[str], code: FromPath[str], services: ServicesDep) -> Response[bytes]:
    normal = _path_code(slug, code)
    project = await project_row(services, slug, NOT_FOUND)
    account = await ACCOUNTS.one(services.reader, project["id"], normal)
    if account is None:
        raise NotFound(NOT_FOUND)
    return responses.ok(provider_account=account)


@put("/{code:str}")
async def update_account(
    slug: FromPath[str],
    code: FromPath[str],
    data: JSONBody[domain.UpdateProviderAccount],
    services: ServicesDep,
) -> Response[bytes]:
    patch = records.update_patch(domain.KIND, data)
    state, normal = await _state(services, slug, code)
    outcome = await services.commands.on_project(
        state.id, lambda s, meta: [records.decide_update(domain.KIND, s, normal, patch, meta)]
    )
    account = await settled_view(services, outcome, ACCOUNTS, state.id, normal)
    return responses.ok(provider_account=account, audit_id=outcome.audit_id)


@delete("/{code:str}", status_code=200)
async def delete_account(slug: FromPath[str], code: FromPath[str], services: ServicesDep) -> Response[bytes]:
    state, normal = await _state(services, slug, code)
    outcome = await services.commands.on_project(
        state.id, lambda s, meta: [records.decide_delete(domain.KIND, s, normal, meta)]
    )
    await services.settle(outcome.append.last_position)
    return responses.ok(deleted=True, provider_code=code, audit_id=outcome.audit_id)


router = Router(
    "/api/projects/{slug:str}/provider-accounts",
    route_handlers=[list_accounts, upsert_account, get_account, update_account, delete_account],
    tags=["provider accounts"],
)
