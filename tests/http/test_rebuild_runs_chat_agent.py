"""Rebuilding the read models of runs/assets/analytics/exports, asset links, chat and agent instructions
from the log reproduces them exactly (rows and API answers)."""

from __future__ import annotations

from litestar.testing import TestClient

from kroma.domain import runs as ev
from kroma.domain.assets import AssetRecord, asset_recorded
from tests.http.log_seed import append, rows, services_of

TABLES = (
    "runs",
    "run_jobs",
    "run_candidates",
    "assets",
    "quality_reports",
    "cost_events",
    "project_exports",
    "asset_links",
    "chat_sessions",
    "chat_messages",
    "agent_instructions",
    "agent_instruction_events",
)
READS = (
    "/api/projects/demo/runs",
    "/api/projects/demo/runs/r1",
    "/api/projects/demo/runs/r1/jobs",
    "/api/projects/demo/assets",
    "/api/projects/demo/asset-links",
    "/api/projects/demo/quality-reports",
    "/api/projects/demo/cost-events",
    "/api/projects/demo/exports",
    "/api/projects/demo/chat/sessions",
    "/api/projects/demo/agent/instructions",
    "/api/projects/demo",
    "/api/projects/other/chat/sessions",
)


def _dump(client: TestClient) -> dict[str, list[dict]]:
    return {t: rows(client, f"SELECT * FROM {t} ORDER BY id") for t in TABLES}


def _workload(client: TestClient) -> list[str]:
    """A mixed workload over two projects; returns extra read URLs that depend on generated ids."""
    pid = client.post("/api/projects", json={"name": "Demo", "slug": "demo"}).json()["project"]["id"]
    other = client.post("/api/projects", json={"name": "Other", "slug": "other"}).json()["project"]["id"]
    append(
        client,
        ev.run_recorded(ev.RunRecord(id="r1", project_id=pid, mode="dry", meta_json={"k": [1, 2]})),
        ev.job_recorded(ev.JobRecord(id="j1", project_id=pid, run_id="r1", selected_candidate=0)),
        ev.candidate_recorded(ev.CandidateRecord(id="c1", project_id=pid, run_id="r1", job_id="j1")),
        *(asset_recorded(AssetRecord(id=f"a{i}", project_id=pid, width=i)) for i in range(4)),
        asset_recorded(AssetRecord(id="o1", project_id=other)),
        ev.quality_report_recorded(ev.QualityReportRecord(id="q1", project_id=pid, grade="A")),
        ev.cost_recorded(ev.CostRecord(id="k1", project_id=pid, units=2, total_cost_usd=1.0)),
        ev.export_recorded(ev.ExportRecord(id="e1", project_id=pid, manifest_json={"f": 1})),
    )
    append(client, ev.run_started(ev.RunStarted(run_id="r1", project_id=pid)))
    append(client, ev.run_finished(ev.RunFinished(run_id="r1", project_id=pid, status="ok")))
    append(client, asset_recorded(AssetRecord(id="a0", project_id=pid, rel_path="again.png")))

    links = "/api/projects/demo/asset-links"
    keep = client.post(links, json={"parent_asset_id": "a0", "child_asset_id": "a1"}).json()["asset_link"]
    gone = client.post(links, json={"parent_asset_id": "a0", "child_asset_id": "a2"}).json()["asset_link"]
    client.put(f"{links}/{keep['id']}", json={"child_asset_id": "a3", "link_type": "mask_for"})
    client.delete(f"{links}/{gone['id']}")
    assert client.post(links, json={"parent_asset_id": "a0", "child_asset_id": "o1"}).status_code == 400

    extra = []
    for slug in ("demo", "other"):
        session = client.post(f"/api/projects/{slug}/chat/sessions", json={"title": slug}).json()["session"]
        for i in range(3):
            client.post(
                f"/api/projects/{slug}/chat/sessions/{session['id']}/messages",
                json={"role": "user", "content": f"m{i}"},
            )
        extra.append(f"/api/projects/{slug}/chat/sessions/{session['id']}/messages")

    base = "/api/projects/demo/agent/instructions"
    ids = [
        client.post(base, json={"instruction_text": f"t{i}"}).json()["instruction"]["id"] for i in range(3)
    ]
    client.post(f"{base}/{ids[0]}/confirm", json={"message": "ok"})
    client.post(f"{base}/{ids[0]}/confirm", json={})
    client.post(f"{base}/{ids[1]}/cancel", json={})
    client.post(f"{base}/{ids[1]}/confirm", json={})  # 400, nothing appended
    extra += [f"{base}/{i}/events" for i in ids]
    return extra


def test_rebuild_reproduces_every_table_and_answer(client: TestClient) -> None:
    extra = _workload(client)
    before = _dump(client)
    answers = {url: client.get(url).json() for url in (*READS, *extra)}
    assert all(before[t] for t in TABLES), [t for t in TABLES if not before[t]]

    services = services_of(client)
    client.blocking_portal.call(services.runner.rebuild)

    assert _dump(client) == before
    assert {url: client.get(url).json() for url in answers} == answers


def test_rebuilding_only_these_projections_leaves_others_alone(client: TestClient) -> None:
    _workload(client)
    before = _dump(client)
    projects = rows(client, "SELECT * FROM projects ORDER BY id")
    services = services_of(client)
    client.blocking_portal.call(
        services.runner.rebuild, ["runs", "chat", "agent_instructions", "asset_links"]
    )
    assert _dump(client) == before
    assert rows(client, "SELECT * FROM projects ORDER BY id") == projects
