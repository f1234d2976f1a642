"""The pipeline's routes (pipeline spec §2): validate-config, the run trigger, and the run log
document folded from a run's events."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
from litestar import Request, Response, Router, get, post
from litestar.params import FromPath, JSONBody

from kroma.domain import run_requests as rr
from kroma.domain import runs as ev
from kroma.domain.errors import KromaError, NotFound, ValidationError
from kroma.domain.handling import Decision
from kroma.domain.runs import run_stream
from kroma.engine import config_validation, planning, trigger
from kroma.engine.paths import display_path, writable_root
from kroma.engine.state import RunState, fold_run
from kroma.events.envelope import Event, Metadata, NewEvent
from kroma.http import responses
from kroma.http.deps import ServicesDep, project_row, project_state
from kroma.http.params import strict_body
from kroma.projections import projects as project_read
from kroma.projections import run_log
from kroma.projections import runs as runs_read
from kroma.services import Services
from kroma.storage import post_run

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
    slug: FromPath[str], data: JSONBody[rr.ValidateConfigBody], services: ServicesDep, request: Request
) -> Response[bytes]:
    data = await strict_body(request, rr.ValidateConfigBody)
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
async def trigger_run(
    slug: FromPath[str], data: JSONBody[rr.TriggerBody], services: ServicesDep, request: Request
) -> Response[bytes]:
    """A dry run answers once planned; a paid run once it has ended (the reference's behaviour),
    or at once with 202 when the request says `Prefer: respond-async`."""
    data = await strict_body(request, rr.TriggerBody)  # `JSONBody` coerces "2" to 2: decode strictly
    run_request = rr.validate_trigger(data)  # every parameter check precedes the lookup (§2.3)
    row = await project_row(services, slug)
    try:
        run_slug = planning.check_slug(slug)
    except ValueError as exc:
        raise ValidationError(str(exc), code="invalid_project_slug") from None
    state = await project_state(services, slug)
    world = trigger.resolve_world(state, run_request)
    project_root = project_root_of(services, state.storage, row["slug"])
    app_root = services.settings.app_root
    ctx = planning.PlanContext(
        request=run_request,
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
    provider = trigger.choose_provider(run_request, state, os.environ)
    await anyio.to_thread.run_sync(planning.create_run_folders, project_root)

    async def decide(meta: Metadata) -> Decision:
        run_id, events = trigger.requested_events(
            plan=plan,
            request=run_request,
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
    run_id = outcome.result
    stdout = trigger.summary_stdout(
        run_log_path=plan.run_log_path,
        slug=run_slug,
        project_root=display_path(project_root, app_root),
        jobs=len(plan.jobs),
        mode=run_request.mode,
    )
    if run_request.mode == "dry":
        return responses.ok(pipeline_trigger=_triggered("dry", stdout), run_id=run_id, audit_id=outcome.audit_id)
    if "respond-async" in request.headers.get("prefer", "").lower():
        queued = stdout.replace("(run/completed)", "(run/queued)")
        body = {"pipeline_trigger": _triggered("run", queued), "run_id": run_id, "audit_id": outcome.audit_id}
        return responses.ok_status(202, **body)
    end = await services.engine.wait_for_end(run_id)
    assert end is not None
    synced = await post_run.wait_for_outcome(services, run_id, end)  # §4.9 steps 6-7
    await services.settle(synced.position if synced else end.position)
    return _run_answer(end, run_id, outcome.audit_id, post_run.stderr_line(synced))


def _triggered(mode: str, stdout: str, stderr: str = "") -> dict:
    return {"mode": mode, "status_code": 0, "stdout": stdout, "stderr": stderr, "adapter": "rust_native"}


def _run_answer(end: Event, run_id: str, audit_id: str, post_run_line: str = "") -> Response[bytes]:
    """A finished run as the reference answered a synchronous trigger (§2.4, §4.7), plus run_id; a
    failed post-run sync adds its line to stderr (§4.9 step 7)."""
    d = end.data
    if end.type == ev.RUN_COMPLETED and d["status"] == "ok":
        stderr = "\n".join(line for line in (d.get("stderr", ""), post_run_line) if line)
        return responses.ok(pipeline_trigger=_triggered("run", d["stdout"], stderr), run_id=run_id, audit_id=audit_id)
    if end.type == ev.RUN_COMPLETED:
        first = next((line for line in d.get("stderr", "").splitlines() if line.strip()), "")
        message = f"Pipeline command failed: {first}" if first else "Pipeline command failed"
        error = KromaError(message, kind="provider", code="pipeline_command_failed")
    elif end.type == ev.RUN_CANCELED:
        error = KromaError("Run was canceled", code="run_canceled")
    else:
        status = 500 if d.get("error_kind") == "infra" else 400
        error = KromaError(d["error"], status=status, kind=d["error_kind"], code=d["error_code"])
    return responses.error(error, run_id=run_id)


@post("/{slug:str}/runs/{run_id:str}/cancel")
async def cancel_run(slug: FromPath[str], run_id: FromPath[str], services: ServicesDep) -> Response[bytes]:
    """Ask a run to stop at its next step boundary; answers once it has (or after 30 s)."""
    row = await project_row(services, slug, RUN_NOT_FOUND)

    async def current() -> RunState:
        state = fold_run(await services.store.read_stream(run_stream(run_id)))
        if state is None or state.project_id != row["id"]:
            raise NotFound(RUN_NOT_FOUND)
        if state.requested["mode"] == "dry":
            raise ValidationError("A dry run has nothing to cancel: it finished when it was planned")
        if state.ended is not None:
            raise ValidationError(f"Run has already finished (status: {state.ended.data['status']})")
        return state

    async def decide(meta: Metadata) -> Decision:
        state = await current()  # again on a lost race: the run may have ended meanwhile
        data = {"run_id": run_id, "project_id": row["id"]}
        event = NewEvent(run_stream(run_id), ev.RUN_CANCEL_REQUESTED, data, meta)
        return Decision([event], {run_stream(run_id): state.version})

    outcome = None
    if (await current()).cancel_requested is None:  # a second cancel appends nothing
        outcome = await services.commands.execute(decide)
    end = await services.engine.wait_for_end(run_id, timeout=30.0)
    if end is not None:
        await services.settle(end.position)
    run = await runs_read.find_row(services.reader, "runs", row["id"], run_id)
    extra = {"audit_id": outcome.audit_id} if outcome is not None else {}
    return responses.ok(run=run, **extra)


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
    route_handlers=[validate_config, trigger_run, cancel_run, run_log_document],
    tags=["runs"],
)
