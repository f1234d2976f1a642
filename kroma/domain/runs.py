"""Runs and what they produce: the events the run engine emits (contract §3.4, §3.7).

Runs, jobs, candidates, quality reports, cost events and exports are read-only over HTTP. The run
engine (later work) records them with these event types; `kroma.projections.runs` folds them into
the read models the API serves. Every event's data is the row itself: `id` (or `run_id` for the
run lifecycle events), `project_id`, and any optional column. A `*.recorded` event of an id that
already exists replaces that row (a re-ingest), keeping its place in the log order.

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


class RunStarted(msgspec.Struct, kw_only=True, omit_defaults=True):
    run_id: str
    project_id: str
    status: str | None = None  # "running" when absent
    started_at: str | None = None


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


def _meta(meta: Metadata | None) -> Metadata:
    return meta or Metadata()


def run_recorded(record: RunRecord, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(run_stream(record.id), RUN_RECORDED, record, _meta(meta))


def run_started(event: RunStarted, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(run_stream(event.run_id), RUN_STARTED, event, _meta(meta))


def run_finished(event: RunFinished, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(run_stream(event.run_id), RUN_FINISHED, event, _meta(meta))


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


def export_recorded(record: ExportRecord, meta: Metadata | None = None) -> NewEvent:
    return NewEvent(f"export:{record.id}", EXPORT_RECORDED, record, _meta(meta))
