"""Read-only routes over what runs produce (contract §3.4, §3.5, §3.7; routes 13, 16-19, 25-28):
runs with their jobs and candidates, assets, quality reports, cost events and exports.

`runs/trigger`, `runs/validate-config` and the run log live in `pipeline`; the asset upload in
`uploads` (mounted here, beside the asset list on the same path)."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, get
from litestar.params import FromPath

from kroma.domain.errors import NotFound
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row
from kroma.http.params import limit_param
from kroma.http.routes.exports import create_export_route
from kroma.http.routes.uploads import upload_assets
from kroma.projections import runs as read
from kroma.services import Services

RUN_NOT_FOUND = "Run not found"


async def _run(services: Services, slug: str, run_id: str) -> dict:
    row = await project_row(services, slug, RUN_NOT_FOUND)
    run = await read.find_row(services.reader, "runs", row["id"], run_id)
    if run is None:
        raise NotFound(RUN_NOT_FOUND)
    return run


@get("/{slug:str}/runs/{run_id:str}")
async def run_detail(slug: FromPath[str], run_id: FromPath[str], services: ServicesDep) -> Response[bytes]:
    run = await _run(services, slug, run_id)
    return responses.ok(run=run, jobs=await read.jobs_of_run(services.reader, run["id"]))


@get("/{slug:str}/runs/{run_id:str}/jobs")
async def run_jobs(slug: FromPath[str], run_id: FromPath[str], services: ServicesDep) -> Response[bytes]:
    run = await _run(services, slug, run_id)
    jobs = await read.jobs_of_run(services.reader, run["id"])
    return responses.ok(run_id=run["id"], count=len(jobs), jobs=jobs)


def _newest_first(path: str, table: str, key: str, default: int = 500, maximum: int = 2000) -> Any:
    """A project-scoped list route: newest first, `limit` clamped, answered as {count, <key>}."""

    @get(f"/{{slug:str}}/{path}", name=f"list_{key}")
    async def handler(slug: FromPath[str], services: ServicesDep, request: Request) -> Response[bytes]:
        limit = limit_param(request, default, maximum)  # the query is parsed before the lookup (§8.1)
        row = await project_row(services, slug)
        rows = await read.newest_first(services.reader, table, row["id"], limit)
        return responses.ok(**{"count": len(rows), key: rows})

    return handler


def _detail(path: str, table: str, key: str, not_found: str) -> Any:
    """A project-scoped detail route; any not-found (project included) is the handler's message."""

    @get(f"/{{slug:str}}/{path}/{{item_id:str}}", name=f"{key}_detail")
    async def handler(slug: FromPath[str], item_id: FromPath[str], services: ServicesDep) -> Response[bytes]:
        row = await project_row(services, slug, not_found)
        found = await read.find_row(services.reader, table, row["id"], item_id)
        if found is None:
            raise NotFound(not_found)
        return responses.ok(**{key: found})

    return handler


list_runs = _newest_first("runs", "runs", "runs", default=200, maximum=1000)
list_assets = _newest_first("assets", "assets", "assets")
asset_detail = _detail("assets", "assets", "asset", "Asset not found")
list_quality_reports = _newest_first("quality-reports", "quality_reports", "quality_reports")
list_cost_events = _newest_first("cost-events", "cost_events", "cost_events")
list_exports = _newest_first("exports", "project_exports", "exports")
export_detail = _detail("exports", "project_exports", "export", "Project export not found")


router = Router(
    "/api/projects",
    route_handlers=[
        list_runs,
        run_detail,
        run_jobs,
        list_assets,
        upload_assets,  # same path as list_assets: one router, so one OPTIONS handler
        asset_detail,
        list_quality_reports,
        list_cost_events,
        list_exports,
        create_export_route,  # same path as list_exports (kroma.http.routes.exports)
        export_detail,
    ],
    tags=["runs"],
)
