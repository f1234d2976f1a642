"""Quality reports, cost events and exports through the HTTP contract (§3.7, §7 analytics_endpoints and
exports_endpoints). Seeded by appending the events the run engine will emit."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from kroma.domain import runs as ev
from tests.http.log_seed import append, assert_error

BASE = "/api/projects/demo"


@pytest.fixture
def seeded(client: TestClient, project: dict) -> dict:
    pid = project["id"]
    append(
        client,
        ev.quality_report_recorded(
            ev.QualityReportRecord(
                id="q-old",
                project_id=pid,
                run_id="run-1",
                report_type="output_guard",
                grade="B",
                created_at="2026-02-20T00:00:00Z",
            )
        ),
        ev.quality_report_recorded(
            ev.QualityReportRecord(
                id="q-new",
                project_id=pid,
                run_id="run-1",
                asset_id="asset-1",
                report_type="output_guard",
                grade="A",
                hard_failures=2,
                soft_warnings=3,
                avg_chroma_exceed=1.5,
                summary_json={"checks": 4},
                meta_json={"hidden": True},
                created_at="2026-02-21T00:00:00Z",
            )
        ),
        ev.cost_recorded(
            ev.CostRecord(
                id="c-old",
                project_id=pid,
                provider_code="openai",
                model_name="gpt-image-1",
                event_type="image_generation",
                units=4,
                total_cost_usd=0.2,
                currency="USD",
                created_at="2026-02-20T00:00:00Z",
            )
        ),
        ev.cost_recorded(
            ev.CostRecord(
                id="c-new",
                project_id=pid,
                run_id="run-1",
                job_id="job-1",
                provider_code="openai",
                units=2,
                unit_cost_usd=0.04,
                total_cost_usd=0.08,
                currency="USD",
                meta_json={"note": "x"},
                created_at="2026-02-21T00:00:00Z",
            )
        ),
        ev.export_recorded(
            ev.ExportRecord(id="e-old", project_id=pid, status="failed", created_at="2026-02-20T00:00:00Z")
        ),
        ev.export_recorded(
            ev.ExportRecord(
                id="e-new",
                project_id=pid,
                run_id="run-1",
                status="completed",
                export_format="zip",
                storage_uri="file:///exports/e.zip",
                rel_path="exports/e.zip",
                file_size_bytes=2048,
                checksum_sha256="deadbeef",
                manifest_json={"files": 3},
                created_at="2026-02-21T00:00:00Z",
                completed_at="2026-02-21T00:01:00Z",
            )
        ),
    )
    return project


def test_quality_reports_newest_first_with_defaults(client: TestClient, seeded: dict) -> None:
    body = client.get(f"{BASE}/quality-reports").json()
    assert body["count"] == 2 and [r["grade"] for r in body["quality_reports"]] == ["A", "B"]
    newest, oldest = body["quality_reports"]
    assert newest == {
        "id": "q-new",
        "project_id": seeded["id"],
        "run_id": "run-1",
        "asset_id": "asset-1",
        "report_type": "output_guard",
        "grade": "A",
        "hard_failures": 2,
        "soft_warnings": 3,
        "avg_chroma_exceed": 1.5,
        "summary_json": {"checks": 4},
        "created_at": "2026-02-21T00:00:00Z",
    }
    assert oldest["asset_id"] == "" and oldest["hard_failures"] == 0 and oldest["summary_json"] == {}
    assert oldest["avg_chroma_exceed"] == 0.0 and isinstance(oldest["avg_chroma_exceed"], float)


def test_cost_events_newest_first_with_ingest_defaults(client: TestClient, seeded: dict) -> None:
    body = client.get(f"{BASE}/cost-events").json()
    assert body["count"] == 2 and [c["id"] for c in body["cost_events"]] == ["c-new", "c-old"]
    newest, oldest = body["cost_events"]
    assert newest["provider_code"] == "openai" and newest["currency"] == "USD"
    assert newest["meta_json"] == {"note": "x"} and newest["unit_cost_usd"] == 0.04
    assert (
        oldest["unit_cost_usd"] == pytest.approx(0.05)
        and oldest["run_id"] == ""
        and oldest["meta_json"] == {}
    )
    assert set(newest) == {
        "id",
        "project_id",
        "run_id",
        "job_id",
        "provider_code",
        "model_name",
        "event_type",
        "units",
        "unit_cost_usd",
        "total_cost_usd",
        "currency",
        "meta_json",
        "created_at",
    }


def test_cost_recorded_applies_the_ingest_defaults(client: TestClient, project: dict) -> None:
    append(client, ev.cost_recorded(ev.CostRecord(id="bare", project_id=project["id"], total_cost_usd=1.0)))
    [cost] = client.get(f"{BASE}/cost-events").json()["cost_events"]
    assert (cost["provider_code"], cost["event_type"], cost["currency"]) == ("unknown", "legacy_event", "USD")
    assert (cost["units"], cost["unit_cost_usd"], cost["total_cost_usd"]) == (0.0, 0.0, 1.0)


def test_exports_newest_first_and_detail(client: TestClient, seeded: dict) -> None:
    body = client.get(f"{BASE}/exports").json()
    assert body["count"] == 2 and body["exports"][0]["status"] == "completed"
    export = client.get(f"{BASE}/exports/e-new").json()["export"]
    assert export == body["exports"][0]
    assert export["export_format"] == "zip" and export["file_size_bytes"] == 2048
    assert export["manifest_json"] == {"files": 3} and export["completed_at"] == "2026-02-21T00:01:00Z"
    old = client.get(f"{BASE}/exports/e-old").json()["export"]
    assert old["export_format"] == "" and old["file_size_bytes"] == 0 and old["manifest_json"] == {}
    assert old["completed_at"] == "" and "meta_json" not in old


def test_missing_project_and_export_messages(client: TestClient, seeded: dict) -> None:
    for path in ("quality-reports", "cost-events", "exports"):
        assert_error(client.get(f"/api/projects/nope/{path}"), 404, "Project not found")
    assert_error(client.get(f"{BASE}/exports/missing"), 404, "Project export not found")
    assert_error(client.get("/api/projects/nope/exports/e-new"), 404, "Project export not found")
    client.post("/api/projects", json={"name": "Other", "slug": "other"})
    assert_error(client.get("/api/projects/other/exports/e-new"), 404, "Project export not found")
    for path in ("quality-reports", "cost-events", "exports"):
        assert client.get(f"/api/projects/other/{path}").json()["count"] == 0


def test_empty_lists_before_any_run(client: TestClient, project: dict) -> None:
    assert client.get(f"{BASE}/quality-reports").json() == {"ok": True, "count": 0, "quality_reports": []}
    assert client.get(f"{BASE}/cost-events").json() == {"ok": True, "count": 0, "cost_events": []}
    assert client.get(f"{BASE}/exports").json() == {"ok": True, "count": 0, "exports": []}


@pytest.mark.parametrize(
    ("query", "count"), [("?limit=1", 1), ("?limit=0", 1), ("?limit=-1", 1), ("?limit=3000", 2)]
)
def test_limits_are_clamped(client: TestClient, seeded: dict, query: str, count: int) -> None:
    for path, key in (
        ("quality-reports", "quality_reports"),
        ("cost-events", "cost_events"),
        ("exports", "exports"),
    ):
        body = client.get(f"{BASE}/{path}{query}").json()
        assert body["count"] == count == len(body[key])
    assert client.get(f"{BASE}/exports?limit=1").json()["exports"][0]["id"] == "e-new"


def test_default_limit_is_500(client: TestClient, project: dict) -> None:
    pid = project["id"]
    append(client, *(ev.export_recorded(ev.ExportRecord(id=f"e{i:04}", project_id=pid)) for i in range(2001)))
    assert client.get(f"{BASE}/exports").json()["count"] == 500
    assert client.get(f"{BASE}/exports?limit=2001").json()["count"] == 2000
