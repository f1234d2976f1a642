"""Read models of what runs produce: runs, jobs, candidates, assets, quality reports, cost events and
exports, and the API's queries over them (contract §3.4, §3.5, §3.7).

The tables mirror the contract's columns (legacy pairs included) plus `position`, the log position
of the event that first recorded the row: it breaks ties in the timestamp orders (newest first for
lists, insertion order for a run's jobs and candidates). A `*.recorded` event of an existing id
replaces the row's values and keeps its position. Everything is derived from the events (their data,
position and recorded_at), so a rebuild reproduces the tables exactly.

Reading applies the contract's coalescing (§10.17): null text is "", null numbers are 0 except
asset width/height and a job's selected_candidate_index, JSON columns parse to their value or {}.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from kroma.clock import to_seconds
from kroma.domain import runs as ev
from kroma.domain.assets import ASSET_RECORDED, ASSET_UPLOADED
from kroma.domain.exports import EXPORT_CREATED
from kroma.events.envelope import Event
from kroma.projections.reader import ReadModels

# table -> (columns in order after id/project_id; INTEGER/REAL/JSON columns are typed, others TEXT)
INTEGER, REAL, JSON = "INTEGER", "REAL", "JSON"
TABLES: dict[str, dict[str, str]] = {
    "runs": {
        "status": "",
        "stage": "",
        "run_log_path": "",
        "run_mode": "",
        "mode": "",
        "time_of_day": "",
        "weather": "",
        "model_name": "",
        "model": "",
        "provider_code": "",
        "settings_snapshot_json": JSON,
        "meta_json": JSON,
        "started_at": "",
        "finished_at": "",
        "image_size": "",
        "image_quality": "",
        "created_at": "",
    },
    "run_jobs": {
        "run_id": "",
        "job_key": "",
        "status": "",
        "prompt_text": "",
        "selected_candidate_index": INTEGER,
        "selected_candidate": INTEGER,
        "final_asset_id": "",
        "final_output": "",
        "meta_json": JSON,
        "created_at": "",
    },
    "run_candidates": {
        "run_id": "",
        "job_id": "",
        "candidate_index": INTEGER,
        "status": "",
        "output_asset_id": "",
        "final_asset_id": "",
        "output_path": "",
        "final_output_path": "",
        "rank_hard_failures": INTEGER,
        "rank_soft_warnings": INTEGER,
        "rank_avg_chroma_exceed": REAL,
        "meta_json": JSON,
        "created_at": "",
    },
    "assets": {
        "kind": "",
        "asset_kind": "",
        "storage_uri": "",
        "rel_path": "",
        "storage_backend": "",
        "mime_type": "",
        "width": INTEGER,
        "height": INTEGER,
        "sha256": "",
        "run_id": "",
        "job_id": "",
        "candidate_id": "",
        "metadata_json": JSON,
        "meta_json": JSON,
        "created_at": "",
    },
    "quality_reports": {
        "run_id": "",
        "asset_id": "",
        "report_type": "",
        "grade": "",
        "hard_failures": INTEGER,
        "soft_warnings": INTEGER,
        "avg_chroma_exceed": REAL,
        "summary_json": JSON,
        "meta_json": JSON,
        "created_at": "",
    },
    "cost_events": {
        "run_id": "",
        "job_id": "",
        "provider_code": "",
        "model_name": "",
        "event_type": "",
        "units": REAL,
        "unit_cost_usd": REAL,
        "total_cost_usd": REAL,
        "currency": "",
        "meta_json": JSON,
        "created_at": "",
    },
    "project_exports": {
        "run_id": "",
        "status": "",
        "export_format": "",
        "storage_uri": "",
        "rel_path": "",
        "file_size_bytes": INTEGER,
        "checksum_sha256": "",
        "manifest_json": JSON,
        "meta_json": JSON,
        "created_at": "",
        "completed_at": "",
    },
}

RECORDS = {
    ev.RUN_RECORDED: "runs",
    ev.JOB_RECORDED: "run_jobs",
    ev.CANDIDATE_RECORDED: "run_candidates",
    ASSET_RECORDED: "assets",
    ASSET_UPLOADED: "assets",
    ev.QUALITY_REPORT_RECORDED: "quality_reports",
    ev.COST_RECORDED: "cost_events",
    ev.EXPORT_RECORDED: "project_exports",
}
INDEXES = (
    "CREATE INDEX runs_by_project ON runs (project_id, created_at)",
    "CREATE INDEX run_jobs_by_run ON run_jobs (run_id, created_at)",
    "CREATE INDEX run_jobs_by_project ON run_jobs (project_id)",
    "CREATE INDEX run_candidates_by_job ON run_candidates (job_id)",
    "CREATE INDEX assets_by_project ON assets (project_id, created_at)",
    "CREATE INDEX quality_reports_by_project ON quality_reports (project_id, created_at)",
    "CREATE INDEX cost_events_by_project ON cost_events (project_id, created_at)",
    "CREATE INDEX project_exports_by_project ON project_exports (project_id, created_at)",
)


def _ddl(table: str, columns: dict[str, str]) -> str:
    body = ",\n        ".join(f"{c} {'TEXT' if kind in ('', JSON) else kind}" for c, kind in columns.items())
    return (
        f"CREATE TABLE {table} (\n        id TEXT PRIMARY KEY,\n        project_id TEXT NOT NULL,\n"
        f"        {body},\n        position INTEGER NOT NULL\n    )"
    )


def _stored(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == JSON:
        return msgspec.json.encode(value).decode()
    return value


def _upsert_sql(table: str) -> str:
    names = ["id", "project_id", *TABLES[table], "position"]
    updates = ", ".join(f"{c} = excluded.{c}" for c in ["project_id", *TABLES[table]])
    return (
        f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        f" ON CONFLICT(id) DO UPDATE SET {updates}"
    )


UPSERTS = {table: _upsert_sql(table) for table in TABLES}
COLUMN_KINDS = {table: tuple(columns.items()) for table, columns in TABLES.items()}
CREATED_AT = {table: list(columns).index("created_at") for table, columns in TABLES.items()}


def _upsert(db: sqlite3.Connection, table: str, row: dict[str, Any], position: int) -> None:
    """Insert the row, or replace an existing id's values keeping its position (first record)."""
    values = [_stored(row.get(c), kind) for c, kind in COLUMN_KINDS[table]]
    db.execute(UPSERTS[table], (row["id"], row["project_id"], *values, position))


def _run_requested(db: sqlite3.Connection, d: dict[str, Any], at: str, position: int) -> None:
    snapshot = {k: d.get(k) for k in ("timestamp", "generation", "postprocess", "output_guard")}
    dry = d["mode"] == "dry"
    row = {
        "id": d["run_id"],
        "project_id": d["project_id"],
        "status": "ok" if dry else "queued",  # a dry run's jobs are all `planned`: ok (§4.10)
        "stage": d["stage"],
        "run_log_path": d["run_log_path"],
        "run_mode": d["mode"],
        "mode": d["mode"],
        "time_of_day": d["time"],
        "weather": d["weather"],
        "model_name": "",
        "model": "",
        "provider_code": d["provider"],
        "settings_snapshot_json": snapshot,
        "meta_json": snapshot,
        "started_at": "",
        "finished_at": at if dry else "",
        "image_size": "",
        "image_quality": "",
        "created_at": at,
    }
    _upsert(db, "runs", row, position)


def _job_planned(db: sqlite3.Connection, d: dict[str, Any], at: str, position: int) -> None:
    row = {
        "id": d["job_id"],
        "project_id": d["project_id"],
        "run_id": d["run_id"],
        "job_key": d["job_key"],
        "status": "planned",
        "prompt_text": d["prompt"],
        "meta_json": ev.planned_job_record(d),
        "created_at": at,
    }
    _upsert(db, "run_jobs", row, position)


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _candidate_generated(db: sqlite3.Connection, d: dict[str, Any], at: str, position: int) -> None:
    row = {
        "id": d["candidate_id"],
        "project_id": d["project_id"],
        "run_id": d["run_id"],
        "job_id": d["job_id"],
        "candidate_index": d["candidate_index"],
        "status": "generated",
        "output_asset_id": d["output_asset_id"],
        "output_path": d["output"],
        "rank_hard_failures": 0,
        "rank_soft_warnings": 0,
        "rank_avg_chroma_exceed": 0.0,
        "meta_json": d.get("record"),
        "created_at": at,
    }
    _upsert(db, "run_candidates", row, position)
    db.execute("UPDATE run_jobs SET status = 'running' WHERE id = ? AND status = 'planned'", (d["job_id"],))
    # The run's model/size/quality are the first generation's (§4.2).
    db.execute(
        "UPDATE runs SET model_name = ?, model = ?, image_size = ?, image_quality = ?"
        " WHERE id = ? AND COALESCE(model_name, '') = ''",
        (d["model"], d["model"], d["size"], d["quality"], d["run_id"]),
    )


def _candidate_checked(db: sqlite3.Connection, d: dict[str, Any], at: str, position: int) -> None:
    rank = d["rank"]
    row = db.execute("SELECT output_path FROM run_candidates WHERE id = ?", (d["candidate_id"],)).fetchone()
    db.execute(
        "UPDATE run_candidates SET status = ?, final_asset_id = ?, final_output_path = ?, rank_hard_failures = ?,"
        " rank_soft_warnings = ?, rank_avg_chroma_exceed = ?, meta_json = ? WHERE id = ?",
        (
            d["status"],
            d.get("final_asset_id"),
            d.get("final_output"),
            rank["hard_failures"],
            rank["soft_warnings"],
            rank["avg_chroma_exceed"],
            _json_text(d.get("record")),
            d["candidate_id"],
        ),
    )
    summary = {
        "status": d["status"],
        "rank": rank,
        "output_path": row[0] if row else None,
        "final_output_path": d.get("final_output"),
        "output_guard": d["output_guard"],
    }
    report = {
        "id": d["quality_report_id"],
        "project_id": d["project_id"],
        "run_id": d["run_id"],
        "asset_id": d.get("final_asset_id") or d.get("asset_id"),
        "report_type": "output_guard",
        "grade": "",
        "hard_failures": rank["hard_failures"],
        "soft_warnings": rank["soft_warnings"],
        "avg_chroma_exceed": rank["avg_chroma_exceed"],
        "summary_json": summary,
        "meta_json": summary,
        "created_at": at,
    }
    _upsert(db, "quality_reports", report, position)


def _candidate_record(db: sqlite3.Connection, d: dict[str, Any], at: str, position: int) -> None:
    db.execute("UPDATE run_candidates SET meta_json = ? WHERE id = ?", (_json_text(d.get("record")), d["candidate_id"]))


def _job_outcome(db: sqlite3.Connection, d: dict[str, Any], at: str, position: int) -> None:
    selected = d.get("selected_candidate")
    db.execute(
        "UPDATE run_jobs SET status = ?, selected_candidate = ?, selected_candidate_index = ?, final_output = ?,"
        " final_asset_id = ?, meta_json = ? WHERE id = ?",
        (
            "done" if selected is not None else "failed_output_guard",
            selected,
            selected,
            d.get("final_output"),
            d.get("final_asset_id"),
            _json_text(d.get("record")),
            d["job_id"],
        ),
    )


def _export_created(db: sqlite3.Connection, d: dict[str, Any], at: str, position: int) -> None:
    """A package written by `kroma.exports`: created and completed when it was recorded."""
    _upsert(db, "project_exports", {**d, "created_at": at, "completed_at": at}, position)


def _cancel_requested(db: sqlite3.Connection, d: dict[str, Any], at: str, position: int) -> None:
    db.execute("UPDATE runs SET status = 'canceling' WHERE id = ? AND status IN ('queued', 'running')", (d["run_id"],))


def _run_ended(db: sqlite3.Connection, d: dict[str, Any], at: str, position: int) -> None:
    db.execute("UPDATE runs SET status = ?, finished_at = ? WHERE id = ?", (d["status"], at, d["run_id"]))
    if d.get("quality_report_id"):  # a completed run's run-scope report (§9.2)
        summary = {"scope": "run", "output_guard": d.get("output_guard") or {}}
        report = {
            "id": d["quality_report_id"],
            "project_id": d["project_id"],
            "run_id": d["run_id"],
            "report_type": "output_guard",
            "grade": "",
            "hard_failures": 0,
            "soft_warnings": 0,
            "avg_chroma_exceed": 0.0,
            "summary_json": summary,
            "meta_json": summary,
            "created_at": at,
        }
        _upsert(db, "quality_reports", report, position)


ENGINE_EVENTS = {
    ev.RUN_REQUESTED: _run_requested,
    ev.JOB_PLANNED: _job_planned,
    ev.CANDIDATE_GENERATED: _candidate_generated,
    ev.CANDIDATE_CHECKED: _candidate_checked,
    ev.CANDIDATE_REJECTED: _candidate_record,
    **dict.fromkeys(ev.POST_PASSES, _candidate_record),
    ev.JOB_WINNER_SELECTED: _job_outcome,
    ev.JOB_FAILED: _job_outcome,
    ev.RUN_CANCEL_REQUESTED: _cancel_requested,
    ev.RUN_COMPLETED: _run_ended,
    ev.RUN_FAILED: _run_ended,
    ev.RUN_CANCELED: _run_ended,
    EXPORT_CREATED: _export_created,
}


class RunsProjection:
    name = "runs"
    version = 3
    tables = tuple(TABLES)
    handles = frozenset({*RECORDS, *ENGINE_EVENTS, ev.RUN_STARTED, ev.RUN_FINISHED})
    schema = ";\n".join([*(_ddl(t, cols) for t, cols in TABLES.items()), *INDEXES])

    def apply(self, db: sqlite3.Connection, event: Event) -> None:
        d = event.data
        at = to_seconds(event.recorded_at)
        folder = ENGINE_EVENTS.get(event.type)
        if folder is not None:
            folder(db, d, at, event.position)
            return
        table = RECORDS.get(event.type)
        if table is not None:
            values = [_stored(d.get(c), kind) for c, kind in COLUMN_KINDS[table]]
            values[CREATED_AT[table]] = d.get("created_at") or at
            db.execute(UPSERTS[table], (d["id"], d["project_id"], *values, event.position))
            return
        started = event.type == ev.RUN_STARTED
        column = "started_at" if started else "finished_at"
        status = d.get("status") or ("running" if started else None)
        db.execute(
            f"INSERT INTO runs (id, project_id, status, {column}, created_at, position) VALUES (?,?,?,?,?,?)"
            f" ON CONFLICT(id) DO UPDATE SET status = excluded.status, {column} = excluded.{column}",
            (d["run_id"], d["project_id"], status, d.get(column) or at, at, event.position),
        )


# -- API shapes ----------------------------------------------------------------------------------


def _first(row: dict[str, Any], *columns: str) -> str:
    """The first non-blank (trimmed) of the columns, else "" (the legacy-column fallback)."""
    for c in columns:
        value = row.get(c)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _int(value: Any) -> int:
    return int(value) if value is not None else 0


def _float(value: Any) -> float:
    return float(value) if value is not None else 0.0


def _json(*values: Any) -> Any:
    """The first non-null stored JSON text, parsed; {} when none or unparsable."""
    for raw in values:
        if raw is None:
            continue
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return {}
    return {}


RUN_TEXT = (
    "status",
    "stage",
    "time_of_day",
    "weather",
    "provider_code",
    "started_at",
    "finished_at",
    "created_at",
    "run_log_path",
    "image_size",
    "image_quality",
)


def run_view(row: dict[str, Any]) -> dict[str, Any]:
    view = {c: _first(row, c) for c in RUN_TEXT}
    view.update(
        id=row["id"],
        project_id=row["project_id"],
        run_mode=_first(row, "run_mode", "mode"),
        model_name=_first(row, "model_name", "model"),
        settings_snapshot_json=_json(row["settings_snapshot_json"], row["meta_json"]),
    )
    return view


def candidate_view(row: dict[str, Any]) -> dict[str, Any]:
    text = ("status", "output_asset_id", "final_asset_id", "output_path", "final_output_path", "created_at")
    return {
        "id": row["id"],
        "job_id": row["job_id"],
        "candidate_index": _int(row["candidate_index"]),
        **{c: _text(row[c]) for c in text},
        "rank_hard_failures": _int(row["rank_hard_failures"]),
        "rank_soft_warnings": _int(row["rank_soft_warnings"]),
        "rank_avg_chroma_exceed": _float(row["rank_avg_chroma_exceed"]),
        "meta_json": _json(row["meta_json"]),
    }


def job_view(row: dict[str, Any], candidates: list[dict[str, Any]]) -> dict[str, Any]:
    selected = row["selected_candidate_index"]
    if selected is None:
        selected = row["selected_candidate"]
    text = ("job_key", "status", "prompt_text", "final_asset_id", "final_output", "created_at")
    return {
        "id": row["id"],
        "run_id": row["run_id"],
        **{c: _text(row[c]) for c in text},
        "selected_candidate_index": selected,
        "meta_json": _json(row["meta_json"]),
        "candidates": candidates,
    }


def asset_view(row: dict[str, Any]) -> dict[str, Any]:
    text = (
        "storage_uri",
        "rel_path",
        "storage_backend",
        "mime_type",
        "sha256",
        "run_id",
        "job_id",
        "candidate_id",
        "created_at",
    )
    return {
        "id": row["id"],
        "project_id": row["project_id"],
        "kind": _first(row, "kind", "asset_kind"),
        "asset_kind": _first(row, "asset_kind", "kind"),
        **{c: _text(row[c]) for c in text},
        "width": row["width"],
        "height": row["height"],
        "metadata_json": _json(row["metadata_json"], row["meta_json"]),
    }


def quality_report_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row["id"],
        "project_id": row["project_id"],
        **{c: _text(row[c]) for c in ("run_id", "asset_id", "report_type", "grade", "created_at")},
        "hard_failures": _int(row["hard_failures"]),
        "soft_warnings": _int(row["soft_warnings"]),
        "avg_chroma_exceed": _float(row["avg_chroma_exceed"]),
        "summary_json": _json(row["summary_json"]),
    }


def cost_event_view(row: dict[str, Any]) -> dict[str, Any]:
    text = ("run_id", "job_id", "provider_code", "model_name", "event_type", "currency", "created_at")
    return {
        "id": row["id"],
        "project_id": row["project_id"],
        **{c: _text(row[c]) for c in text},
        **{c: _float(row[c]) for c in ("units", "unit_cost_usd", "total_cost_usd")},
        "meta_json": _json(row["meta_json"]),
    }


def export_view(row: dict[str, Any]) -> dict[str, Any]:
    text = ("run_id", "status", "export_format", "storage_uri", "rel_path", "checksum_sha256")
    return {
        "id": row["id"],
        "project_id": row["project_id"],
        **{c: _text(row[c]) for c in text},
        "file_size_bytes": _int(row["file_size_bytes"]),
        "manifest_json": _json(row["manifest_json"]),
        "created_at": _text(row["created_at"]),
        "completed_at": _text(row["completed_at"]),
    }


# -- queries -------------------------------------------------------------------------------------

VIEWS = {
    "runs": run_view,
    "assets": asset_view,
    "quality_reports": quality_report_view,
    "cost_events": cost_event_view,
    "project_exports": export_view,
}


async def newest_first(rm: ReadModels, table: str, project_id: str, limit: int) -> list[dict[str, Any]]:
    """A project's rows of one table, created_at DESC (ties: log position DESC), at most `limit`."""
    rows = await rm.all(
        f"SELECT * FROM {table} WHERE project_id = ? ORDER BY created_at DESC, position DESC LIMIT ?",
        (project_id, limit),
    )
    return [VIEWS[table](r) for r in rows]


async def find_row(rm: ReadModels, table: str, project_id: str, row_id: str) -> dict[str, Any] | None:
    row = await rm.one(f"SELECT * FROM {table} WHERE id = ? AND project_id = ?", (row_id, project_id))
    return VIEWS[table](row) if row else None


async def jobs_of_run(rm: ReadModels, run_id: str) -> list[dict[str, Any]]:
    """A run's jobs (created_at ASC, then insertion order), each with its candidates
    (candidate_index ASC, then insertion order)."""
    candidates = await rm.all(
        "SELECT * FROM run_candidates WHERE job_id IN (SELECT id FROM run_jobs WHERE run_id = ?)"
        " ORDER BY COALESCE(candidate_index, 0), position",
        (run_id,),
    )
    by_job: dict[str, list[dict[str, Any]]] = {}
    for c in candidates:
        by_job.setdefault(c["job_id"], []).append(candidate_view(c))
    jobs = await rm.all("SELECT * FROM run_jobs WHERE run_id = ? ORDER BY created_at, position", (run_id,))
    return [job_view(j, by_job.get(j["id"], [])) for j in jobs]
