"""The pipeline's routes (pipeline spec §2): validate-config, the run trigger, and the run log
document folded from a run's events."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
from litestar import Response, Router, get, post
from litestar.params import FromPath, JSONBody

from kroma.domain import run_requests as rr
from kroma.domain.errors import NotFound, ValidationError
from kroma.domain.handling import Decision
from kroma.domain.runs import run_stream
from kroma.engine import config_validation, planning, trigger
from kroma.engine.paths import display_path, writable_root
from kroma.events.envelope import Metadata
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row, project_state
from kroma.projections import projects as project_read
from kroma.projections import run_log
from kroma.services import Services

RUN_NOT_FOUND = "Run not found"


def project_root_of(services: Services, storage: dict, slug: str) -> Path:
    resolved = project_read.resolve_storage(storage, slug, services.settings.workspace)
    return Path(os.path.normpath(resolved["local"]["project_root"]))


def ensure_writable(services: Services, project_root: Path, code: str = "planning_preflight_failed") -> None:
    """The server writes only under the allowed roots: refuse before anything is written."""
    if not writable_root(project_root, services.settings.write_roots):
        raise ValidationError(
            f"Project root '{project_root}' is outside the folders this server may write to"
            " (settings: storage.allowed_roots)",
            code=code,
        )


@post("/{slug:str}/runs/validate-config")
async def validate_config(
    slug: FromPath[str], data: JSONBody[rr.ValidateConfigBody], services: ServicesDep
) -> Response[bytes]:
    row = await project_row(services, slug)  # the project comes first here (§2.6)
    if (data.project_root or "").strip():
        raise ValidationError(rr.PROJECT_ROOT_MANAGED, code="project_root_managed")
    state = await project_state(services, slug)
    project_root = project_root_of(services, state.storage, row["slug"])

    def blank(value: str | None) -> str | None:
        return value.strip() if value and value.strip() else None

    try:
        summary = await anyio.to_thread.run_sync(
            lambda: config_validation.validate_config(
                services.settings.app_root,
                project_root,
                app_settings_path=blank(data.app_settings_path),
                project_settings_path=blank(data.project_settings_path),
                manifest_path=blank(data.manifest_path),
                postprocess_config_path=blank(data.postprocess_config_path),
            )
        )
    except config_validation.ConfigValidationError as exc:
        raise rr.config_validation_failed(exc.message) from None
    return responses.ok(summary=summary)


@post("/{slug:str}/runs/trigger")
async def trigger_run(slug: FromPath[str], data: JSONBody[rr.TriggerBody], services: ServicesDep) -> Response[bytes]:
    request = rr.validate_trigger(data)  # every parameter check precedes the lookup (§2.3)
    row = await project_row(services, slug)
    try:
        run_slug = planning.check_slug(slug)
    except ValueError as exc:
        raise ValidationError(str(exc), code="invalid_project_slug") from None
    state = await project_state(services, slug)
    world = trigger.resolve_world(state, request)
    project_root = project_root_of(services, state.storage, row["slug"])
    app_root = services.settings.app_root
    ctx = planning.PlanContext(
        request=request,
        slug=run_slug,
        app_root=app_root,
        project_root=project_root,
        world=world,
        now_ns=int(services.clock.now().timestamp() * 1_000_000) * 1000,
    )
    try:
        plan = await anyio.to_thread.run_sync(planning.plan_run, ctx)
    except planning.PlanningError as exc:
        raise rr.preflight_failed(exc.message) from None
    ensure_writable(services, project_root)
    provider = trigger.choose_provider(request, state, os.environ)
    await anyio.to_thread.run_sync(planning.create_run_folders, project_root)

    async def decide(meta: Metadata) -> Decision:
        run_id, events = trigger.requested_events(
            plan=plan,
            request=request,
            state=state,
            slug=run_slug,
            project_root=str(project_root),
            provider=provider,
            new_id=services.clock.new_id,
            meta=meta,
        )
        return Decision(events, {run_stream(run_id): 0}, run_id)

    outcome = await services.commands.execute(decide)
    await services.settle(outcome.append.last_position)
    stdout = trigger.summary_stdout(
        run_log_path=plan.run_log_path,
        slug=run_slug,
        project_root=display_path(project_root, app_root),
        jobs=len(plan.jobs),
        mode=request.mode,
    )
    return responses.ok(
        pipeline_trigger={
            "mode": request.mode,
            "status_code": 0,
            "stdout": stdout,
            "stderr": "",
            "adapter": "rust_native",
        },
        run_id=outcome.result,
        audit_id=outcome.audit_id,
    )


@get("/{slug:str}/runs/{run_id:str}/log")
async def run_log_document(slug: FromPath[str], run_id: FromPath[str], services: ServicesDep) -> Response[bytes]:
    """The run log of §4.7/§4.8 folded from the run's own stream (never a file), its keys flat in
    the envelope beside `ok`."""
    row = await project_row(services, slug, RUN_NOT_FOUND)
    events = await services.store.read_stream(run_stream(run_id))
    if not events or events[0].data.get("project_id") != row["id"]:
        raise NotFound(RUN_NOT_FOUND)
    try:
        document = run_log.document(events)
    except KeyError:  # a run recorded by an import, not by the trigger: it has no run log
        raise NotFound(RUN_NOT_FOUND) from None
    return responses.ok(**document)  # the document's own keys, flat: a run-log reader sees a run log


router = Router(
    "/api/projects",
    route_handlers=[validate_config, trigger_run, run_log_document],
    tags=["runs"],
)
