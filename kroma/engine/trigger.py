"""From a validated trigger to the run's first events: the world it uses, the provider, and the
one atomic batch `run.requested` + every `job.planned`."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import msgspec

from kroma.domain import runs as ev
from kroma.domain import secrets
from kroma.domain.aggregate import ProjectState
from kroma.domain.errors import NotFound
from kroma.domain.run_requests import TriggerRequest
from kroma.engine.paths import is_image_name
from kroma.engine.planning import Plan, World
from kroma.events.envelope import Metadata, NewEvent


def _found(state: ProjectState, collection: str, item_id: str | None, not_found: str) -> dict | None:
    if item_id is None:
        return None
    item = state.items(collection).get(item_id)
    if item is None:
        raise NotFound(not_found)
    return {"id": item_id, **item}


def resolve_world(state: ProjectState, request: TriggerRequest) -> World:
    """The style guide, cast, reference set and template a trigger names; an unknown id is the
    404 its own routes give."""
    template = _found(state, "prompt_templates", request.prompt_template_id, "Prompt template not found")
    style_guide = _found(state, "style_guides", request.style_guide_id, "Style guide not found")
    characters = tuple(
        c for c in (_found(state, "characters", cid, "Character not found") for cid in request.character_ids) if c
    )
    reference_set = _found(state, "reference_sets", request.reference_set_id, "Reference set not found")
    images: list[str] = []
    if reference_set is not None:
        items = [
            item
            for item in state.items("reference_set_items").values()
            if item.get("reference_set_id") == reference_set["id"]
        ]
        items.sort(key=lambda item: item.get("sort_order") or 0)  # stable: creation order within one
        images = [
            item["content_uri"].strip().removeprefix("file://")
            for item in items
            if is_image_name((item.get("content_uri") or "").strip())
            and "://" not in item["content_uri"].strip().removeprefix("file://")
        ]
    return World(
        template=template,
        template_vars=request.template_vars,
        style_guide=style_guide,
        characters=characters,
        reference_set=reference_set and {"id": reference_set["id"], "name": reference_set["name"]},
        reference_images=tuple(images),
    )


def openai_key_available(state: ProjectState, environ: Mapping[str, str]) -> bool:
    stored = secrets.find(state, "openai", "api_key")
    return bool(stored and stored.get("ciphertext")) or bool(environ.get("OPENAI_API_KEY", "").strip())


def choose_provider(request: TriggerRequest, state: ProjectState, environ: Mapping[str, str]) -> str:
    """The trigger's `provider`, else `openai` when an OpenAI key is available to the project, else
    the offline `local` provider."""
    if request.provider:
        return request.provider
    return "openai" if openai_key_available(state, environ) else "local"


def requested_events(
    *,
    plan: Plan,
    request: TriggerRequest,
    state: ProjectState,
    slug: str,
    project_root: str,
    provider: str,
    new_id: Callable[[], str],
    meta: Metadata,
) -> tuple[str, list[NewEvent]]:
    """(run id, the batch): `run.requested` first (its id is the trigger's audit_id), then the jobs
    in planned order."""
    run_id = new_id()
    requested = ev.RunRequested(
        run_id=run_id,
        project_id=state.id,
        project_slug=slug,
        mode=request.mode,
        stage=request.stage,
        time=request.time,
        weather=request.weather,
        provider=provider,
        candidates=plan.candidates,
        storage_sync_s3=request.storage_sync_s3,
        project_root=project_root,
        run_log_path=plan.run_log_path,
        timestamp=plan.timestamp,
        generation=plan.generation,
        postprocess=plan.postprocess,
        output_guard=plan.output_guard,
        storage=plan.storage,
        jobs=len(plan.jobs),
        world=plan.world,
        postprocess_outputs=plan.postprocess_outputs,
        postprocess_config=plan.postprocess_config,
    )
    events = [ev.run_requested(requested, meta)]
    for index, job in enumerate(plan.jobs, start=1):
        planned = ev.JobPlanned(
            job_id=new_id(),
            run_id=run_id,
            project_id=state.id,
            job_key=job.key,
            index=index,
            mode=job.mode,
            time=job.time,
            weather=job.weather,
            input_images=job.input_images,
            input_paths=job.input_paths,
            prompt=job.prompt,
            planned_generation={"candidates": plan.candidates},
            planned_postprocess=plan.postprocess,
            planned_output_guard=plan.output_guard,
            world=plan.world,
        )
        events.append(ev.job_planned(planned, meta))
    return run_id, events


_summary_encoder = msgspec.json.Encoder(order="sorted")


def summary_stdout(*, run_log_path: str, slug: str, project_root: str, jobs: int, mode: str) -> str:
    """The five stdout lines of §2.4 (the summary JSON's keys sorted, as serde_json wrote them)."""
    state = "dry/planned" if mode == "dry" else "run/completed"
    summary = {
        "run_log_path": run_log_path,
        "project_slug": slug,
        "project_root": project_root,
        "jobs": jobs,
        "mode": mode,
    }
    return "\n".join(
        [
            f"Run log: {run_log_path}",
            f"Project: {slug}",
            f"Project root: {project_root}",
            f"Jobs: {jobs} ({state})",
            f"KROMA_PIPELINE_SUMMARY_JSON: {_summary_encoder.encode(summary).decode()}",
        ]
    )
