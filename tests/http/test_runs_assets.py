"""Runs, jobs, candidates and assets through the HTTP contract (§3.4, §3.5, §7 runs_assets_endpoints,
§10.17-18). Seeded by appending the events the run engine will emit."""

from __future__ import annotations

import pytest
from litestar.testing import TestClient

from kroma.domain import runs as ev
from kroma.domain.assets import AssetRecord, asset_recorded
from tests.http.log_seed import append, assert_error

BASE = "/api/projects/demo"
RUN_FIELDS = {
    "id",
    "project_id",
    "run_mode",
    "status",
    "stage",
    "time_of_day",
    "weather",
    "model_name",
    "provider_code",
    "settings_snapshot_json",
    "started_at",
    "finished_at",
    "created_at",
    "run_log_path",
    "image_size",
    "image_quality",
}


@pytest.fixture
def seeded(client: TestClient, project: dict) -> dict:
    pid = project["id"]
    append(
        client,
        ev.run_recorded(
            ev.RunRecord(
                id="run-1",
                project_id=pid,
                status="ok",
                stage="style",
                run_mode="dry",
                time_of_day="day",
                weather="clear",
                model_name="gpt-image-1",
                provider_code="openai",
                settings_snapshot_json={"size": "1024x1024"},
                run_log_path="var/runs/1.json",
                image_size="1024x1024",
                image_quality="high",
                started_at="2026-02-21T00:00:01Z",
                finished_at="2026-02-21T00:05:00Z",
                created_at="2026-02-21T00:00:00Z",
            )
        ),
        ev.job_recorded(
            ev.JobRecord(
                id="job-b",
                project_id=pid,
                run_id="run-1",
                job_key="scene_02",
                status="done",
                created_at="2026-02-21T00:00:02Z",
            )
        ),
        ev.job_recorded(
            ev.JobRecord(
                id="job-a",
                project_id=pid,
                run_id="run-1",
                job_key="scene_01",
                status="done",
                prompt_text="a hero",
                selected_candidate_index=1,
                final_asset_id="asset-1",
                final_output="out/1.png",
                meta_json={"seed": 7},
                created_at="2026-02-21T00:00:01Z",
            )
        ),
        ev.candidate_recorded(
            ev.CandidateRecord(
                id="cand-2",
                project_id=pid,
                run_id="run-1",
                job_id="job-a",
                candidate_index=2,
                status="done",
                rank_hard_failures=1,
                rank_avg_chroma_exceed=0.25,
            )
        ),
        ev.candidate_recorded(
            ev.CandidateRecord(
                id="cand-1",
                project_id=pid,
                run_id="run-1",
                job_id="job-a",
                candidate_index=1,
                status="done",
                output_asset_id="asset-1",
                output_path="out/c1.png",
            )
        ),
        asset_recorded(
            AssetRecord(
                id="asset-1",
                project_id=pid,
                kind="job_final_output",
                storage_uri="file:///out/1.png",
                rel_path="out/1.png",
                storage_backend="local",
                mime_type="image/png",
                width=1024,
                height=768,
                sha256="abc",
                run_id="run-1",
                job_id="job-a",
                candidate_id="cand-1",
                metadata_json={"source": "pipeline"},
                created_at="2026-02-21T00:06:00Z",
            )
        ),
    )
    return project


def test_run_list_detail_and_jobs_with_candidates(client: TestClient, seeded: dict) -> None:
    listed = client.get(f"{BASE}/runs").json()
    assert listed["count"] == 1
    run = listed["runs"][0]
    assert set(run) == RUN_FIELDS
    assert run["run_mode"] == "dry" and run["model_name"] == "gpt-image-1"
    assert run["settings_snapshot_json"] == {"size": "1024x1024"} and run["project_id"] == seeded["id"]

    detail = client.get(f"{BASE}/runs/run-1").json()
    assert detail["run"] == run
    assert [j["id"] for j in detail["jobs"]] == ["job-a", "job-b"]  # created_at ASC
    job = detail["jobs"][0]
    assert job == {
        "id": "job-a",
        "run_id": "run-1",
        "job_key": "scene_01",
        "status": "done",
        "prompt_text": "a hero",
        "selected_candidate_index": 1,
        "final_asset_id": "asset-1",
        "final_output": "out/1.png",
        "meta_json": {"seed": 7},
        "created_at": "2026-02-21T00:00:01Z",
        "candidates": job["candidates"],
    }
    assert [c["id"] for c in job["candidates"]] == ["cand-1", "cand-2"]  # candidate_index ASC
    second = job["candidates"][1]
    assert second["rank_hard_failures"] == 1 and second["rank_soft_warnings"] == 0
    assert (
        second["rank_avg_chroma_exceed"] == 0.25
        and second["output_asset_id"] == ""
        and second["meta_json"] == {}
    )
    empty_job = detail["jobs"][1]
    assert empty_job["candidates"] == [] and empty_job["selected_candidate_index"] is None
    assert empty_job["prompt_text"] == "" and empty_job["meta_json"] == {}

    jobs = client.get(f"{BASE}/runs/run-1/jobs").json()
    assert jobs == {"ok": True, "run_id": "run-1", "count": 2, "jobs": detail["jobs"]}


def test_asset_list_and_detail_round_trip_metadata(client: TestClient, seeded: dict) -> None:
    listed = client.get(f"{BASE}/assets").json()
    assert listed["count"] == 1
    asset = client.get(f"{BASE}/assets/asset-1").json()["asset"]
    assert asset == listed["assets"][0]
    assert asset["metadata_json"]["source"] == "pipeline"
    assert asset["kind"] == asset["asset_kind"] == "job_final_output"
    assert (asset["width"], asset["height"]) == (1024, 768) and asset["candidate_id"] == "cand-1"


def test_missing_run_asset_and_project_messages(client: TestClient, seeded: dict) -> None:
    assert_error(client.get(f"{BASE}/runs/missing"), 404, "Run not found")
    assert_error(client.get(f"{BASE}/runs/missing/jobs"), 404, "Run not found")
    assert_error(client.get(f"{BASE}/assets/missing"), 404, "Asset not found")
    assert_error(client.get("/api/projects/nope/runs"), 404, "Project not found")
    assert_error(client.get("/api/projects/nope/assets"), 404, "Project not found")
    assert_error(client.get("/api/projects/nope/runs/run-1"), 404, "Run not found")
    assert_error(client.get("/api/projects/nope/runs/run-1/jobs"), 404, "Run not found")
    assert_error(client.get("/api/projects/nope/assets/asset-1"), 404, "Asset not found")


def test_rows_of_another_project_are_not_found(client: TestClient, seeded: dict) -> None:
    client.post("/api/projects", json={"name": "Other", "slug": "other"})
    assert_error(client.get("/api/projects/other/runs/run-1"), 404, "Run not found")
    assert_error(client.get("/api/projects/other/assets/asset-1"), 404, "Asset not found")
    assert client.get("/api/projects/other/runs").json() == {"ok": True, "count": 0, "runs": []}
    assert client.get("/api/projects/other/assets").json() == {"ok": True, "count": 0, "assets": []}


def test_legacy_columns_are_coalesced_and_nulls_defaulted(client: TestClient, project: dict) -> None:
    pid = project["id"]
    append(
        client,
        ev.run_recorded(
            ev.RunRecord(id="legacy", project_id=pid, mode="run", model="  dalle ", meta_json={"a": 1})
        ),
        ev.run_recorded(ev.RunRecord(id="blank", project_id=pid, run_mode="  ", mode="dry")),
        ev.job_recorded(ev.JobRecord(id="j", project_id=pid, run_id="legacy", selected_candidate=3)),
        asset_recorded(
            AssetRecord(id="x", project_id=pid, asset_kind="candidate_output", meta_json={"m": True})
        ),
    )
    legacy = client.get(f"{BASE}/runs/legacy").json()
    run = legacy["run"]
    assert (
        run["run_mode"] == "run"
        and run["model_name"] == "dalle"
        and run["settings_snapshot_json"] == {"a": 1}
    )
    assert run["status"] == run["stage"] == run["started_at"] == run["image_quality"] == ""
    assert run["created_at"].endswith("Z") and len(run["created_at"]) == 20  # the event's time
    assert legacy["jobs"][0]["selected_candidate_index"] == 3
    assert client.get(f"{BASE}/runs/blank").json()["run"]["run_mode"] == "dry"
    assert client.get(f"{BASE}/runs/blank").json()["run"]["settings_snapshot_json"] == {}
    asset = client.get(f"{BASE}/assets/x").json()["asset"]
    assert asset["kind"] == asset["asset_kind"] == "candidate_output"
    assert asset["width"] is None and asset["height"] is None
    assert asset["metadata_json"] == {"m": True} and asset["storage_uri"] == "" and asset["run_id"] == ""


def test_lists_are_newest_first_with_log_order_breaking_ties(client: TestClient, project: dict) -> None:
    pid = project["id"]
    append(
        client,
        ev.run_recorded(ev.RunRecord(id="r-old", project_id=pid, created_at="2026-01-01T00:00:00Z")),
        ev.run_recorded(ev.RunRecord(id="r-z", project_id=pid, created_at="2026-01-02T00:00:00Z")),
        ev.run_recorded(ev.RunRecord(id="r-a", project_id=pid, created_at="2026-01-02T00:00:00Z")),
        *(
            asset_recorded(AssetRecord(id=f"as-{i}", project_id=pid, created_at="2026-01-05T00:00:00Z"))
            for i in range(3)
        ),
    )
    assert [r["id"] for r in client.get(f"{BASE}/runs").json()["runs"]] == ["r-a", "r-z", "r-old"]
    assert [a["id"] for a in client.get(f"{BASE}/assets").json()["assets"]] == ["as-2", "as-1", "as-0"]


@pytest.mark.parametrize(
    ("query", "count"), [("", 4), ("?limit=2", 2), ("?limit=0", 1), ("?limit=-5", 1), ("?limit=99999", 4)]
)
def test_limit_is_clamped_never_rejected(client: TestClient, project: dict, query: str, count: int) -> None:
    pid = project["id"]
    append(
        client,
        *(ev.run_recorded(ev.RunRecord(id=f"r{i}", project_id=pid)) for i in range(4)),
        *(asset_recorded(AssetRecord(id=f"a{i}", project_id=pid)) for i in range(4)),
    )
    assert client.get(f"{BASE}/runs{query}").json()["count"] == count
    assert client.get(f"{BASE}/assets{query}").json()["count"] == count


def test_default_limits_are_200_runs_and_500_assets(client: TestClient, project: dict) -> None:
    pid = project["id"]
    append(client, *(ev.run_recorded(ev.RunRecord(id=f"r{i:04}", project_id=pid)) for i in range(1001)))
    append(client, *(asset_recorded(AssetRecord(id=f"a{i:04}", project_id=pid)) for i in range(2001)))
    assert client.get(f"{BASE}/runs").json()["count"] == 200
    assert client.get(f"{BASE}/runs?limit=5000").json()["count"] == 1000
    assert client.get(f"{BASE}/assets").json()["count"] == 500
    assert client.get(f"{BASE}/assets?limit=5000").json()["count"] == 2000


def test_non_numeric_limit_is_400(client: TestClient, project: dict) -> None:
    response = client.get(f"{BASE}/runs?limit=abc")
    assert_error(response, 400, "Query parameter 'limit' must be an integer")


LISTS_WITH_LIMIT = ("runs", "assets", "quality-reports", "cost-events", "exports")


@pytest.mark.parametrize("value", ["abc", "1.5", "1e3", "1_0", "\u0663", "0x10", "--1"])
def test_a_limit_the_reference_cannot_parse_is_400_before_the_project_lookup(
    client: TestClient, project: dict, value: str
) -> None:
    """The query string is parsed before the handler runs (contract §8.1 step 3, before the lookup
    at step 7), as an i64: only ASCII digits with an optional sign (Python's int() also takes "1_0"
    and non-ASCII digits)."""
    for path in LISTS_WITH_LIMIT:
        for slug in ("demo", "nope"):
            response = client.get(f"/api/projects/{slug}/{path}", params={"limit": value})
            assert_error(response, 400, "Query parameter 'limit' must be an integer")


def test_a_signed_limit_is_a_number(client: TestClient, project: dict) -> None:
    for path in LISTS_WITH_LIMIT:
        assert client.get(f"{BASE}/{path}", params={"limit": "+2"}).status_code == 200
        assert client.get(f"{BASE}/{path}", params={"limit": "-2"}).status_code == 200


def test_lifecycle_events_and_re_recording(client: TestClient, project: dict) -> None:
    pid = project["id"]
    append(
        client,
        ev.run_recorded(
            ev.RunRecord(id="r", project_id=pid, status="queued", created_at="2026-01-01T00:00:00Z")
        ),
    )
    append(
        client, ev.run_started(ev.RunStarted(run_id="r", project_id=pid, started_at="2026-01-01T00:00:05Z"))
    )
    run = client.get(f"{BASE}/runs/r").json()["run"]
    assert run["status"] == "running" and run["started_at"] == "2026-01-01T00:00:05Z"
    append(client, ev.run_finished(ev.RunFinished(run_id="r", project_id=pid, status="ok")))
    run = client.get(f"{BASE}/runs/r").json()["run"]
    assert run["status"] == "ok" and run["finished_at"] != "" and run["created_at"] == "2026-01-01T00:00:00Z"
    append(client, asset_recorded(AssetRecord(id="a", project_id=pid, rel_path="one.png")))
    append(client, asset_recorded(AssetRecord(id="a", project_id=pid, rel_path="two.png")))
    listed = client.get(f"{BASE}/assets").json()
    assert listed["count"] == 1 and listed["assets"][0]["rel_path"] == "two.png"


def test_project_detail_counts_runs_jobs_and_assets(client: TestClient, seeded: dict) -> None:
    assert client.get(BASE).json()["counts"] == {"runs": 1, "jobs": 2, "assets": 1}
