"""Read-only routes over what runs produce (contract §3.4, §3.5, §3.7; routes 13, 16-19, 25-28):
runs with their jobs and candidates, assets, quality reports, cost events and exports.

`runs/trigger` and `runs/validate-config` belong to the run engine and are mounted by it."""

from __future__ import annotations

from litestar import Request, Response, Router, get
from litestar.params import FromPath

from kroma.domain.errors import NotFound
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row
from kroma.http.params import limit_param
from kroma.projections import runs as read
from kroma.services import Services

RUN_NOT_FOUND = "Run not found"


@get("/{slug:str}/runs")
async def list_runs(slug: FromPath[str], services: ServicesDep, request: Request) -> Response[bytes]:
    limit = limit_param(request, 200, 1000)  # the query is parsed before the lookup (§8.1)
    row = await project_row(services, slug)
    runs = await read.newest_first(services.reader, "runs", row["id"], limit)
    return responses.ok(count=len(runs), runs=runs)


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


@get("/{slug:str}/assets")
async def list_assets(slug: FromPath[str], services: ServicesDep, request: Request) -> Response[bytes]:
    limit = limit_param(request, 500, 2000)
    row = await project_row(services, slug)
    assets = await read.newest_first(services.reader, "assets", row["id"], limit)
    return responses.ok(count=len(assets), assets=assets)


@get("/{slug:str}/assets/{asset_id:str}")
async def asset_detail(
    slug: FromPath[str], asset_id: FromPath[str], services: ServicesDep
) -> Response[bytes]:
    row = await project_row(services, slug, "Asset not found")
    asset = await read.find_row(services.reader, "assets", row["id"], asset_id)
    if asset is None:
        raise NotFound("Asset not found")
    return responses.ok(asset=asset)


@get("/{slug:str}/quality-reports")
async def list_quality_reports(
    slug: FromPath[str], services: ServicesDep, request: Request
) -> Response[bytes]:
    limit = limit_param(request, 500, 2000)
    row = await project_row(services, slug)
    reports = await read.newest_first(services.reader, "quality_reports", row["id"], limit)
    return responses.ok(count=len(reports), quality_reports=reports)


@get("/{slug:str}/cost-events")
async def list_cost_events(slug: FromPath[str], services: ServicesDep, request: Request) -> Response[bytes]:
    limit = limit_param(request, 500, 2000)
    row = await project_row(services, slug)
    costs = await read.newest_first(services.reader, "cost_events", row["id"], limit)
    return responses.ok(count=len(costs), cost_events=costs)


@get("/{slug:str}/exports")
async def list_exports(slug: FromPath[str], services: ServicesDep, request: Request) -> Response[bytes]:
    limit = limit_param(request, 500, 2000)
    row = await project_row(services, slug)
    exports = await read.newest_first(services.reader, "project_exports", row["id"], limit)
    return responses.ok(count=len(exports), exports=exports)


@get("/{slug:str}/exports/{export_id:str}")
async def export_detail(
    slug: FromPath[str], export_id: FromPath[str], services: ServicesDep
) -> Response[bytes]:
    row = await project_row(services, slug, "Project export not found")
    export = await read.find_row(services.reader, "project_exports", row["id"], export_id)
    if export is None:
        raise NotFound("Project export not found")
    return responses.ok(export=export)


router = Router(
    "/api/projects",
    route_handlers=[
        list_runs,
        run_detail,
        run_jobs,
        list_assets,
        asset_detail,
        list_quality_reports,
        list_cost_events,
        list_exports,
        export_detail,
    ],
    tags=["runs"],
)
