"""Runs and what they produce: the events the trigger and the run engine append (contract §3.4,
§3.7; pipeline spec §2-§6, §9).

A run is one stream `run:<run_id>`. The trigger appends `run.requested` and every `job.planned` in
one atomic batch; a dry run is complete then. In mode `run` the engine (`kroma.engine`) follows the
log and appends each step as it is done, every event naming its causation:

| type                            | data (always `run_id`, `project_id`)                          |
|---------------------------------|---------------------------------------------------------------|
| `run.requested`                 | RunRequested: mode, stage/time/weather, provider, the plan's   |
|                                 | generation/postprocess/output_guard/storage records, world    |
| `job.planned`                   | JobPlanned: job id and key, inputs, the final prompt, world   |
| `run.started`                   | RunStarted (+ provider, model, size, quality)                 |
| `candidate.generated`           | candidate id/index, output path, asset id, provider call      |
| `candidate.background_removed`, | one post-process pass each (part 3): input, output, asset id, |
| `candidate.upscaled`,           | pass parameters                                               |
| `candidate.color_corrected`     |                                                               |
| `candidate.checked`             | the QA report, rank, status done/failed_output_guard          |
| `candidate.rejected`            | a failed candidate's archive path                             |
| `job.winner_selected`           | selected candidate, final output and asset                    |
| `job.failed`                    | failure reason                                                |
| `cost.recorded`                 | CostRecord (per provider call)                                |
| `run.cancel_requested`          | who asked; the engine stops at the next step boundary         |
| `run.completed` / `run.failed` / `run.canceled` | the run's end: status, stdout/stderr or error |

Assets are `asset.recorded` on their own streams (`kroma.domain.assets`), appended in the same
batch as the step that wrote the file.

The `*.recorded` types below predate the engine: rows given whole (an import of an existing run
log's rows). They are still folded, so logs holding them keep their read models. Every event's data
is the row itself: `id` (or `run_id` for the run lifecycle events), `project_id`, and any optional
column. A `*.recorded` event of an id that already exists replaces that row, keeping its place in
the log order.

| type                      | stream                 | data                                   |
|---------------------------|------------------------|----------------------------------------|
| `run.recorded`            | `run:<run_id>`         | RunRecord                              |
| `run.started`             | `run:<run_id>`         | RunStarted (status, started_at)        |
| `run.finished`            | `run:<run_id>`         | RunFinished (status, finished_at)      |
| `job.recorded`            | `run:<run_id>`         | JobRecord                              |
| `candidate.recorded`      | `run:<run_id>`         | CandidateRecord                        |
| `quality_report.recorded` | `quality_report:<id>`  | QualityReportRecord                    |
| `cost.recorded`           | `cost:<id>`            | CostRecord                             |
| `export.recorded`         | `export:<id>`          | ExportRecord                           |
| `asset.recorded`          | `asset:<id>`           | `kroma.domain.assets.AssetRecord`      |

Timestamps are `YYYY-MM-DDTHH:MM:SSZ`; an absent `created_at` (or `started_at`/`finished_at` on the
lifecycle events) is the event's own time. JSON columns (`*_json`) take any JSON value. Legacy
column pairs (run_mode/mode, model_name/model, settings_snapshot_json/meta_json,
selected_candidate_index/selected_candidate) are stored as given and coalesced when read.
"""

from __future__ import annotations

from typing import Any

import msgspec

from kroma.events.envelope import Metadata, NewEvent

RUN_RECORDED = "run.recorded"
RUN_STARTED = "run.started"
RUN_FINISHED = "run.finished"
JOB_RECORDED = "job.recorded"
CANDIDATE_RECORDED = "candidate.recorded"
QUALITY_REPORT_RECORDED = "quality_report.recorded"
COST_RECORDED = "cost.recorded"
EXPORT_RECORDED = "export.recorded"

RUN_REQUESTED = "run.requested"
JOB_PLANNED = "job.planned"
CANDIDATE_GENERATED = "candidate.generated"
CANDIDATE_BACKGROUND_REMOVED = "candidate.background_removed"
CANDIDATE_UPSCALED = "candidate.upscaled"
CANDIDATE_COLOR_CORRECTED = "candidate.color_corrected"
CANDIDATE_CHECKED = "candidate.checked"
CANDIDATE_REJECTED = "candidate.rejected"
JOB_WINNER_SELECTED = "job.winner_selected"
JOB_FAILED = "job.failed"
RUN_CANCEL_REQUESTED = "run.cancel_requested"
RUN_COMPLETED = "run.completed"
RUN_FAILED = "run.failed"
RUN_CANCELED = "run.canceled"
POST_PASSES = (CANDIDATE_BACKGROUND_REMOVED, CANDIDATE_UPSCALED, CANDIDATE_COLOR_CORRECTED)
RUN_ENDS = (RUN_COMPLETED, RUN_FAILED, RUN_CANCELED)


def run_stream(run_id: str) -> str:
    return f"run:{run_id}"


class RunRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    project_id: str
    status: str | None = None
    stage: str | None = None
    run_log_path: str | None = None
    run_mode: str | None = None
    mode: str | None = None  # legacy name of run_mode
    time_of_day: str | None = None
    weather: str | None = None
    model_name: str | None = None
    model: str | None = None  # legacy name of model_name
    provider_code: str | None = None
    settings_snapshot_json: Any = None
    meta_json: Any = None  # legacy fallback of settings_snapshot_json
    started_at: str | None = None
    finished_at: str | None = None
    image_size: str | None = None
    image_quality: str | None = None
    created_at: str | None = None


class RunRequested(msgspec.Struct, kw_only=True):
    """A triggered run: everything the engine needs, fixed at trigger time (reproducible)."""

    run_id: str
    project_id: str
    project_slug: str
    mode: str  # dry | run
    stage: str
    time: str
    weather: str
    provider: str  # local | openai: the one that will (or would) generate
    candidates: int  # effective count (§3.7)
    storage_sync_s3: bool
    project_root: str  # absolute
    run_log_path: str  # display path of the run log document (served at .../runs/{id}/log)
    timestamp: str  # `<secs>.<ms>Z` (§4.1)
    generation: dict[str, Any]  # {candidates, max_candidates}
    postprocess: dict[str, Any]  # the planned post-process record (§5.2)
    output_guard: dict[str, Any]  # {enabled, enforce_grayscale, max_chroma_delta, fail_on_chroma_exceed}
    storage: dict[str, Any]  # {project_root (display), resolved_from_backend}
    jobs: int
    world: dict[str, Any] | None = None  # the style guide, cast, reference set and template used
    postprocess_outputs: dict[str, Any] | None = None  # bg format, upscale scale/format, profile
    postprocess_config: dict[str, Any] | None = None  # the post-process config document in force


class JobPlanned(msgspec.Struct, kw_only=True):
    """One planned job (§3.4, §4.8): `job_key` is the reference's job id, `job_id` ours."""

    job_id: str
    run_id: str
    project_id: str
    job_key: str
    index: int  # 1-based planned order
    mode: str
    time: str
    weather: str
    input_images: list[str]  # display paths: the scene, then the style references
    input_paths: list[str]  # the same, absolute (what the engine reads)
    prompt: str
    planned_generation: dict[str, Any]
    planned_postprocess: dict[str, Any]
    planned_output_guard: dict[str, Any]
    world: dict[str, Any] | None = None


class RunStarted(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    project_id: str
    status: str | None = None  # "running" when absent
    started_at: str | None = None
    provider: str | None = None


class RunFinished(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    project_id: str
    status: str
    finished_at: str | None = None


class JobRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    project_id: str
    run_id: str
    job_key: str | None = None
    status: str | None = None
    prompt_text: str | None = None
    selected_candidate_index: int | None = None
    selected_candidate: int | None = None  # legacy fallback of selected_candidate_index
    final_asset_id: str | None = None
    final_output: str | None = None
    meta_json: Any = None
    created_at: str | None = None


class CandidateRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    project_id: str
    run_id: str
    job_id: str
    candidate_index: int | None = None
    status: str | None = None
    output_asset_id: str | None = None
    final_asset_id: str | None = None
    output_path: str | None = None
    final_output_path: str | None = None
    rank_hard_failures: int | None = None
    rank_soft_warnings: int | None = None
    rank_avg_chroma_exceed: float | None = None
    meta_json: Any = None
    created_at: str | None = None


class QualityReportRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    project_id: str
    run_id: str | None = None
    asset_id: str | None = None
    report_type: str | None = None
    grade: str | None = None
    hard_failures: int | None = None
    soft_warnings: int | None = None
    avg_chroma_exceed: float | None = None
    summary_json: Any = None
    meta_json: Any = None  # stored, never returned
    created_at: str | None = None


class CostRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The ingest's defaults apply when built with `cost_recorded`: provider "unknown", event type
    "legacy_event", currency "USD", unit cost = total / units (0 when units is 0)."""

    id: str
    project_id: str
    run_id: str | None = None
    job_id: str | None = None
    provider_code: str | None = None
    model_name: str | None = None
    event_type: str | None = None
    units: float | None = None
    unit_cost_usd: float | None = None
    total_cost_usd: float | None = None
    currency: str | None = None
    meta_json: Any = None
    created_at: str | None = None


class ExportRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    project_id: str
    run_id: str | None = None
    status: str | None = None
    export_format: str | None = None
    storage_uri: str | None = None
    rel_path: str | None = None
    file_size_bytes: int | None = None
    checksum_sha256: str | None = None
    manifest_json: Any = None
    meta_json: Any = None  # stored, never returned
    created_at: str | None = None
    completed_at: str | None = None


def planned_job_record(d: dict[str, Any]) -> dict[str, Any]:
    """A planned job as the run log shows it (§4.8), plus the world it used."""
    job = {
        "id": d["job_key"],
        "mode": d["mode"],
        "time": d["time"],
        "weather": d["weather"],
        "input_images": d["input_images"],
        "prompt": d["prompt"],
        "status": "planned",
        "planned_generation": d["planned_generation"],
        "planned_postprocess": d["planned_postprocess"],
        "planned_output_guard": d["planned_output_guard"],
    }
    if d.get("world"):
        job["world"] = d["world"]
    return job



def _meta(meta: Metadata | None) -> Metadata:
    return meta or Metadata()


def run_recorded(record: RunRecord, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(run_stream(record.id), RUN_RECORDED, record, _meta(meta))


def run_started(event: RunStarted, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(run_stream(event.run_id), RUN_STARTED, event, _meta(meta))


def run_finished(event: RunFinished, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(run_stream(event.run_id), RUN_FINISHED, event, _meta(meta))


def run_requested(event: RunRequested, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(run_stream(event.run_id), RUN_REQUESTED, event, _meta(meta))


def job_planned(event: JobPlanned, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(run_stream(event.run_id), JOB_PLANNED, event, _meta(meta))


def job_recorded(record: JobRecord, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(run_stream(record.run_id), JOB_RECORDED, record, _meta(meta))


def candidate_recorded(record: CandidateRecord, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(run_stream(record.run_id), CANDIDATE_RECORDED, record, _meta(meta))


def quality_report_recorded(record: QualityReportRecord, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(f"quality_report:{record.id}", QUALITY_REPORT_RECORDED, record, _meta(meta))


def cost_recorded(record: CostRecord, meta: Metadata | None = None) -> NewEvent:
    units = record.units or 0.0
    total = record.total_cost_usd or 0.0
    unit_cost = record.unit_cost_usd
    if unit_cost is None:
        unit_cost = total / units if units else 0.0
    filled = msgspec.structs.replace(
        record,
        provider_code=record.provider_code or "unknown",
        event_type=record.event_type or "legacy_event",
        currency=record.currency or "USD",
        units=units,
        total_cost_usd=total,
        unit_cost_usd=unit_cost,
    )
    return NewEvent(f"cost:{record.id}", COST_RECORDED, filled, _meta(meta))


def cost_event(record: CostRecord, meta: Metadata | None = None) -> NewEvent:
    """A run's cost, on the run's own stream (so it is part of the run's atomic steps)."""
    filled = cost_recorded(record, meta)
    return NewEvent(run_stream(record.run_id or ""), COST_RECORDED, filled.data, filled.metadata)


def export_recorded(record: ExportRecord, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(f"export:{record.id}", EXPORT_RECORDED, record, _meta(meta))
